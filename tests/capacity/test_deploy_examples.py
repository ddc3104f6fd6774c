"""The autoscaling examples in deploy/ are valid YAML and scale on the gauge tokenyard publishes (its
exposition is checked on a real proxy in ``test_capacity_replicas.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).parent.parent.parent / "deploy" / "autoscaling"
GAUGE = "tokenyard_desired_replicas"


def documents(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((EXAMPLES / name).read_text()))


def test_the_keda_scaled_object_asks_for_the_next_horizon_as_a_replica_count() -> None:
    [scaled] = documents("keda-scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"  # ceil(value / 1) replicas, whatever runs now
    assert trigger["metadata"]["threshold"] == "1"
    query = trigger["metadata"]["query"]
    assert query == f'max({GAUGE}{{backend="vllm-h100", horizon="next"}})'


def test_the_hpa_reads_the_gauge_as_an_external_metric() -> None:
    hpa, adapter = documents("hpa-external-metric.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    [metric] = hpa["spec"]["metrics"]
    assert metric["external"]["metric"] == {
        "name": GAUGE,
        "selector": {"matchLabels": {"backend": "vllm-h100", "horizon": "next"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    [rule] = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    assert rule["name"]["as"] == GAUGE
    assert GAUGE in rule["seriesQuery"]
