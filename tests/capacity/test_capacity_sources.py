"""Where capacity per replica comes from before (and after) anything is measured: the chain, best first."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.config import backend
from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.workloads import catalog_capacity
from tokenyard.capacity.desired import CapacityEstimate
from tokenyard.config import TokenyardConfig
from tokenyard.edge.capacity import capacity_sources
from tokenyard.live import LiveConfig

MODEL = "llama-3.1-8b-instruct"  # the built-in catalog's 1×H100-80GB figures for it


def config(*, gpus: int = 1, model: str = MODEL, cap: float = 0.6) -> TokenyardConfig:
    ded = backend(
        "dedicated", "http://127.0.0.1:9/v1", max_concurrency=16, sla={"min_stream_tokens_per_s": 30}
    )
    ded["gpus_per_replica"] = gpus
    return TokenyardConfig.model_validate(
        {
            "backends": {"ded": ded, "api": backend("serverless", "http://127.0.0.1:9/v1")},
            "models": {model: {"deployments": ["ded", "api"]}},
            "advisor": {"utilization_cap": cap},
        }
    )


def test_the_catalog_figure_is_taken_at_the_utilization_cap_and_scaled_to_the_gpus() -> None:
    [figure] = load_catalog().model(MODEL).dedicated[:1]  # type: ignore[union-attr]
    [(name, got)] = catalog_capacity(config(gpus=2), load_catalog()).items()
    assert name == "ded"
    assert got.output_tokens_per_s == pytest.approx(figure.output_tokens_per_s * 2 * 0.6)
    assert got.input_tokens_per_s == pytest.approx(figure.input_tokens_per_s * 2 * 0.6)
    assert got.source == "catalog, scaled from 1×H100-80GB figure for 2×H100-80GB × utilization cap 0.6"
    assert catalog_capacity(config(model="our-finetune"), load_catalog()) == {}


def chain(cfg: TokenyardConfig, **options: Any) -> Any:
    backends = {name: SimpleNamespace(config=section) for name, section in cfg.backends.items()}
    return capacity_sources(LiveConfig(cfg, async_track_runs=False), backends, **options)  # type: ignore[arg-type]


def test_measured_first_then_the_learned_limit_then_the_catalog_then_the_configured_cap() -> None:
    measured = CapacityEstimate(999.0, "measured envelope")
    assert chain(config(), measured=lambda name: measured, learned_limit=lambda name: 20)("ded") is measured
    learned = chain(config(), measured=lambda name: None, learned_limit=lambda name: 20)("ded")
    assert learned == CapacityEstimate(600.0, "learned limit 20 × SLA 30 tok/s per stream")
    assert chain(config())("ded").source.endswith("× utilization cap 0.6")
    fallback = chain(config(model="our-finetune"))("ded")
    assert fallback == CapacityEstimate(480.0, "max_concurrency (configured) 16 × SLA 30 tok/s per stream")
