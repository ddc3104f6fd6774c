"""What the live advisor takes from the meter: measured dedicated capacity, and workloads per tenant."""

from __future__ import annotations

from datetime import date

import pytest

from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.evaluation import busy_minutes
from tokenyard.advisor.service import evaluate_all, grouping
from tokenyard.advisor.traffic import TrafficBuilder
from tokenyard.config import parse_config
from tokenyard.meter.model import AGG_FIELDS, AggKey, GpuKey

T0 = 1_795_132_800
MODEL = "llama-3.1-8b-instruct"
CONFIG = parse_config(
    f"""
backends:
  ded:
    kind: dedicated
    base_url: http://127.0.0.1:9/v1
    gpu_type: H100-80GB
    gpus_per_replica: 1
    replicas: 2
    gpu_hour_price: 2.0
    max_concurrency: 10
  api:
    kind: serverless
    base_url: http://127.0.0.1:9/v1
    prices: {{input_per_1m: 0.2, output_per_1m: 0.2}}
models:
  {MODEL}: {{deployments: [ded, api]}}
advisor:
  per_tenant: true
  workloads:
    {MODEL}: {{async_eligible_tenants: [reports]}}
"""
)


def row(minute: int, tenant: str, backend: str, **fields: int) -> tuple[AggKey, dict[str, int]]:
    kind = "dedicated" if backend == "ded" else "serverless"
    return AggKey(minute, tenant, MODEL, backend, kind, "realtime"), {f: fields.get(f, 0) for f in AGG_FIELDS}


def test_busy_minutes_come_from_served_tokens_busy_time_and_provisioned_gpu_time() -> None:
    # Two replicas × 10 slots for a whole minute; 600 slot-seconds busy: half the slots were in use.
    rows = [
        row(T0, "a", "ded", prompt_tokens=1000, completion_tokens=3000, latency_ms=400_000),
        row(T0, "b", "ded", prompt_tokens=500, cached_tokens=100, completion_tokens=1000, latency_ms=200_000),
        row(T0, "a", "api", prompt_tokens=99, completion_tokens=99, latency_ms=99),  # not dedicated
    ]
    gpu = [(GpuKey(T0, "ded"), {"wall_ms": 60_000, "gpu_ms": 120_000, "cost_pusd": 0})]
    [minute] = busy_minutes(CONFIG, rows, gpu)[MODEL]
    assert (minute.prompt, minute.cached, minute.completion) == (1500, 100, 4000)
    assert minute.replica_seconds == 120
    assert minute.slot_utilization == pytest.approx(0.5)


def test_measured_capacity_replaces_the_catalog_figure_for_the_current_replicas() -> None:
    # Every minute for an hour: slots 100 % busy while serving 4,000 output tokens a second on two
    # replicas, so at the 60 % cap one replica's full capacity is 2,000 / 0.6 tokens/s.
    rows, gpu = [], []
    for i in range(60):
        minute = T0 + 60 * i
        rows.append(row(minute, "a", "ded", completion_tokens=240_000, latency_ms=1_200_000))
        gpu.append((GpuKey(minute, "ded"), {"wall_ms": 60_000, "gpu_ms": 120_000, "cost_pusd": 0}))
    workload_of, eligible = grouping(CONFIG)
    builder = TrafficBuilder(T0, T0 + 3600, workload_of, eligible)
    for key, fields in rows:
        builder.add(
            key.minute, model=key.model, tenant=key.tenant, mode=key.mode, requests=1,
            prompt=0, cached=0, completion=fields["completion_tokens"],
        )  # fmt: skip
    measured = busy_minutes(CONFIG, rows, gpu)
    advices, _, _ = evaluate_all(
        builder.workloads, CONFIG, load_catalog(), now=T0 + 3600, today=date(2026, 11, 29), measured=measured
    )
    [advice] = advices
    # With the catalog's 24,461 tokens/s one replica would do; measured, it takes two at the cap.
    peak = next(c for c in advice.candidates if c.architecture == "dedicated" and c.gpu == "1×H100-80GB")
    assert peak.cost.replicas == 2
    assert advice.curve is not None
    assert advice.curve.option.capacity_source.startswith("measured: ")
    assert advice.curve.option.output_tokens_per_s == pytest.approx(2000 / 0.6)


def test_per_tenant_workloads_and_async_eligible_tenants() -> None:
    workload_of, eligible = grouping(CONFIG)
    assert workload_of(MODEL, "search") == f"{MODEL}/search"
    assert eligible(MODEL, "reports")
    assert not eligible(MODEL, "search")
    builder = TrafficBuilder(T0, T0 + 600, workload_of, eligible)
    for tenant in ("search", "reports"):
        builder.add(
            T0, model=MODEL, tenant=tenant, mode="realtime", requests=1, prompt=10, cached=0, completion=5
        )
    advices, _, _ = evaluate_all(
        builder.workloads, CONFIG, load_catalog(), now=T0 + 600, today=date(2026, 11, 29)
    )
    by_name = {a.workload: a for a in advices}
    assert set(by_name) == {f"{MODEL}/search", f"{MODEL}/reports"}
    assert by_name[f"{MODEL}/reports"].deferrable_share == 1.0
    assert by_name[f"{MODEL}/search"].deferrable_share == 0.0
    assert by_name[f"{MODEL}/search"].model == MODEL
