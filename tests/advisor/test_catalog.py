"""The price and capacity catalog, config overrides, and the workloads built from a config."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tests.support.proxy import run_cli
from tokenyard.advisor.catalog import builtin_catalog_tree, load_catalog
from tokenyard.advisor.workloads import build_workload
from tokenyard.config import load_config, parse_config

TODAY = date(2026, 11, 29)
REPO = Path(__file__).parent.parent.parent


def test_the_built_in_catalog_is_valid_and_every_figure_is_dated_and_sourced() -> None:
    catalog = load_catalog()
    assert {"H100-80GB", "H200", "B200"} <= set(catalog.gpus)
    figures = [*catalog.gpus.values()]
    for entry in catalog.models.values():
        figures += [
            p for p in (entry.serverless, entry.batch, entry.dedicated_serverless) if p
        ] + entry.dedicated
    assert len(figures) > 20
    for figure in figures:
        assert figure.as_of <= TODAY
        assert figure.source.strip()


def test_the_repository_ships_the_same_catalog_in_config() -> None:
    assert (REPO / "config" / "catalog.yaml").read_text() == (
        REPO / "src" / "tokenyard" / "advisor" / "catalog.yaml"
    ).read_text()


def test_models_are_found_by_name_or_alias_in_any_case() -> None:
    catalog = load_catalog()
    assert catalog.model("meta-llama/Llama-3.1-8B-Instruct") is catalog.model("llama-3.1-8b-instruct")
    assert catalog.model("LLAMA-3.1-8B-INSTRUCT") is not None
    assert catalog.model("no-such-model") is None


def test_config_overrides_merge_entry_by_entry() -> None:
    catalog = load_catalog(
        {
            "gpus": {"H100-80GB": {"gpu_hour_usd": 1.85, "as_of": "2026-11-01", "source": "our contract"}},
            "models": {"llama-3.1-8b-instruct": {"batch": None}},
        }
    )
    assert catalog.gpus["H100-80GB"].gpu_hour_usd == 1.85
    assert catalog.gpus["H200"].gpu_hour_usd == builtin_catalog_tree()["gpus"]["H200"]["gpu_hour_usd"]
    entry = catalog.model("llama-3.1-8b-instruct")
    assert entry is not None
    assert entry.batch is None
    assert entry.serverless is not None


def test_a_bad_override_is_named_by_its_path_by_check_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        """
backends:
  s: {kind: serverless, base_url: "http://127.0.0.1:9/v1"}
models:
  m: {deployments: [s]}
advisor:
  utilization_cap: 1.5
  catalog:
    gpus:
      H100-80GB: {gpu_hour_usd: -1, as_of: 2026-11-01, source: x}
    models:
      m:
        serverless: {input_per_1m: 1, output_per_1m: 1}
"""
    )
    result = run_cli("check-config", str(config))
    assert result.returncode == 1
    assert "advisor.utilization_cap: must be <= 1" in result.stderr
    # The catalog is checked with the rest once every section has the right shape (second pass).
    fixed = config.read_text().replace("utilization_cap: 1.5", "utilization_cap: 0.5")
    config.write_text(fixed)
    result = run_cli("check-config", str(config))
    assert result.returncode == 1
    assert "advisor.catalog.gpus.H100-80GB.gpu_hour_usd: must be > 0" in result.stderr
    assert "advisor.catalog.models.m.serverless.as_of: required" in result.stderr


def test_the_quick_start_workload_uses_its_own_prices_and_current_setup() -> None:
    config = load_config(None)
    workload = build_workload(
        "llama-3.1-8b-instruct", "llama-3.1-8b-instruct", config, load_catalog(), today=TODAY
    )
    assert workload.serverless is not None
    assert workload.serverless.source == "config: backends.sim-serverless.prices"
    assert workload.serverless.input_per_1m == 0.18
    assert workload.dedicated_serverless is not None
    assert workload.dedicated_serverless.input_per_1m == 0.20
    assert workload.current is not None
    assert workload.current.replicas == 1
    assert workload.current.option is not None
    assert workload.current.option.gpu_hour_usd == 2.50  # what the config pays, not the catalog's price
    assert workload.current.per_token_kind == "dedicated_serverless"  # the next deployment in line
    assert workload.batch is not None
    assert workload.batch.source == "config: backends.sim-batch.prices"  # the batch backend it uses
    assert {o.label for o in workload.options} == {"1×H100-80GB", "1×H200"}


def test_a_configured_replica_of_another_size_scales_the_catalog_capacity() -> None:
    config = parse_config(
        """
backends:
  vllm:
    kind: dedicated
    base_url: http://127.0.0.1:9/v1
    gpu_type: H100-80GB
    gpus_per_replica: 4
    replicas: 3
    gpu_hour_price: 2.0
    max_concurrency: 64
models:
  llama-3.3-70b-instruct: {deployments: [vllm]}
"""
    )
    name = "llama-3.3-70b-instruct"
    workload = build_workload(name, name, config, load_catalog(), today=TODAY)
    assert workload.current is not None
    option = workload.current.option
    assert option is not None
    assert option.capacity_source == "catalog, scaled from 2×H100-80GB"
    catalog_option = load_catalog().model(name).dedicated[0]  # type: ignore[union-attr]
    assert option.output_tokens_per_s == pytest.approx(2 * catalog_option.output_tokens_per_s)
    assert workload.current.per_token is None  # nothing to spill over to: dedicated only
    assert workload.serverless is not None  # the catalog's, for the counterfactual
