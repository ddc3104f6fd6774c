"""GPU mixes, purchases and the plan, end to end through a real store (SQLite and Redis): the advice names
the mix beside the best single type, prices spot with its risk in words, and the worker's evaluation
writes the plan the router follows — for a model deployed on two GPU types, not for one on a single type."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from tests.support.clocks import T0
from tests.support.stores import PROXY_STORES, opened_meter_store
from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.evaluation import evaluate_store
from tokenyard.capacity import gpu_plan
from tokenyard.config import TokenyardConfig, load_config, parse_config
from tokenyard.meter.model import AGG_FIELDS, AggKey, FlushBatch
from tokenyard.meter.shapes import SHAPE_COUNT, shape_index
from tokenyard.meter.store import MeterStore

MIXED = "llama-3.1-8b-instruct"  # deployed on H100 and H200 (the catalog has capacities for both)
SINGLE = "llama-3.3-70b-instruct"  # deployed on 2×H100 only
CONFIG = parse_config(
    f"""
backends:
  h100:
    kind: dedicated
    base_url: http://127.0.0.1:9/v1
    gpu_type: H100-80GB
    gpus_per_replica: 1
    replicas: 1
    gpu_hour_price: 3.99
    max_concurrency: 64
  h200:
    kind: dedicated
    base_url: http://127.0.0.1:9/v1
    gpu_type: H200
    gpus_per_replica: 1
    replicas: 1
    gpu_hour_price: 4.50
    max_concurrency: 64
  big:
    kind: dedicated
    base_url: http://127.0.0.1:9/v1
    gpu_type: H100-80GB
    gpus_per_replica: 2
    replicas: 1
    gpu_hour_price: 3.99
    max_concurrency: 64
  api:
    kind: serverless
    base_url: http://127.0.0.1:9/v1
    prices: {{input_per_1m: 0.18, output_per_1m: 0.18}}
models:
  {MIXED}: {{deployments: [h100, h200, api], routing: plan}}
  {SINGLE}: {{deployments: [big, api]}}
"""
)
SHORT, LONG = shape_index(100, 100), shape_index(9000, 300)


@pytest_asyncio.fixture(params=PROXY_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MeterStore]:
    async with opened_meter_store(request.param, tmp_path) as opened:
        yield opened


def bucket(requests: int, prompt: int, completion: int) -> dict[str, int]:
    """A minute's aggregate of ``requests`` alike requests, with its shape fields as the meter writes them."""
    k = shape_index(prompt, completion)
    return dict.fromkeys(AGG_FIELDS, 0) | {
        "requests": requests,
        "prompt_tokens": requests * prompt,
        "completion_tokens": requests * completion,
        f"s{k}_requests": requests,
        f"s{k}_prompt": requests * prompt,
        f"s{k}_completion": requests * completion,
    }


async def meter_a_day(store: MeterStore) -> None:
    """A day: every minute 3,000 short chat requests and 300 long-context ones, on both models."""
    aggregates = {}
    for minute in range(0, 1440, 5):  # every fifth minute: a day's shape without 1,440 buckets to write
        ts = T0 - 86400 + minute * 60
        for model, backend in ((MIXED, "h100"), (SINGLE, "big")):
            short = AggKey(ts, "acme", model, backend, "dedicated", "realtime")
            aggregates[short] = bucket(3000, 100, 100)
            long = AggKey(ts, "beta", model, backend, "dedicated", "realtime")
            aggregates[long] = bucket(300, 9000, 300)
    await store.write(FlushBatch(uuid.uuid4().hex, aggregates, [], []))


async def test_the_advice_shows_the_mix_beside_the_best_single_type(store: MeterStore) -> None:
    await meter_a_day(store)
    result = await evaluate_store(store, CONFIG, load_catalog({}), now=T0, keep_state=True)
    document = result.document("r")
    mixed = next(w for w in document["workloads"] if w["model"] == MIXED)
    mixes = [c for c in mixed["candidates"] if c["architecture"] in ("mix", "mix_per_period")]
    assert {c["architecture"] for c in mixes} == {"mix", "mix_per_period"}
    for c in mixes:
        single = c["mix"]["best_single"]
        # A mix is never dearer than the best single type sized the same way (replicas at the same $/h).
        assert c["mix"]["usd_per_h"] <= single["usd_per_h"] + 1e-9
        assert sum(c["mix"]["replicas"].values()) >= 1
        assert set(c["mix"]["shapes"]) >= {"in0-127/out64-255", "in8192+/out256-1023"}
    assert any("less than the best single type sized the same way" in r for r in mixed["reasons"])
    # The 70B model is deployed on one GPU type, but the catalog knows two for it: the advice still
    # weighs a mix of them (what to order next), while the router has nothing to choose (see the plan).
    single_type = next(w for w in document["workloads"] if w["model"] == SINGLE)
    assert [c for c in single_type["candidates"] if c["architecture"] == "mix"]


async def test_spot_and_committed_are_priced_with_their_risk(store: MeterStore) -> None:
    await meter_a_day(store)
    result = await evaluate_store(store, CONFIG, load_catalog({}), now=T0, keep_state=False)
    mixed = next(w for w in result.document("r")["workloads"] if w["model"] == MIXED)
    bought = {c["purchase"]["kind"]: c for c in mixed["candidates"] if c["purchase"]}
    assert set(bought) == {"spot", "committed"}  # the catalog's H100 terms (H200 has none public)
    spot = bought["spot"]
    assert "interruptions a day per replica" in spot["purchase"]["risk"]
    assert "zone-wide reclaim" in spot["purchase"]["risk"]
    assert spot["purchase"]["replicas_bought"] >= spot["replicas"] - 1e-9
    assert "whether" not in bought["committed"]["purchase"]["risk"]
    assert "busy or not" in bought["committed"]["purchase"]["risk"]


async def test_the_plan_is_written_for_a_model_on_two_gpu_types(store: MeterStore) -> None:
    await meter_a_day(store)
    await evaluate_store(store, CONFIG, load_catalog({}), now=T0, keep_state=True)
    raw = await store.get_document(gpu_plan.DOCUMENT)
    assert raw is not None
    plans = gpu_plan.read_plans(orjson.loads(raw))
    assert set(plans) == {MIXED}  # the 70B model runs on one GPU type: nothing to plan
    plan = plans[MIXED]
    assert set(plan.replicas) <= {"H100-80GB", "H200"}
    assert plan.gpu_of_shape[SHORT] in ("H100-80GB", "H200")
    assert plan.gpu_of_shape[LONG] in ("H100-80GB", "H200")
    assert len(plan.gpu_of_shape) == SHAPE_COUNT
    # Not written by an evaluation that keeps no state (``tokenyard advise``): the store is the worker's.
    await store.put_document(gpu_plan.DOCUMENT, b"{}")
    await evaluate_store(store, CONFIG, load_catalog({}), now=T0, keep_state=False)
    assert await store.get_document(gpu_plan.DOCUMENT) == b"{}"


async def test_an_imported_profile_is_the_capacity_of_its_gpu_type(store: MeterStore) -> None:
    await meter_a_day(store)
    profile = Path(__file__).parent / "profiles" / "vllm_goodput.json"
    tree = CONFIG.model_dump()
    tree["advisor"]["profiles"] = [{"model": MIXED, "gpu_type": "H200", "path": str(profile)}]
    config = TokenyardConfig.model_validate(tree)
    result = await evaluate_store(store, config, load_catalog({}), now=T0, keep_state=False)
    (advice,) = [a for a in result.advices if a.model == MIXED]
    # The vLLM run (goodput 8.5 requests/s at its lengths) fills one shape; the others stay the catalog's.
    reasons = " | ".join(advice.reasons)
    assert "1×H200 capacity at the SLO by request shape: per shape: 1 imported, 19 catalog × cap" in reasons


def test_a_profile_named_by_a_relative_path_is_found_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config_file = tmp_path / "conf" / "tokenyard.yaml"
    config_file.write_text(
        "backends:\n  api: {kind: serverless, base_url: 'http://127.0.0.1:9/v1'}\n"
        "models:\n  m: {deployments: [api]}\n"
        "advisor:\n  profiles:\n    - {model: m, gpu_type: H200, path: bench/h200.json}\n"
        "    - {model: m, gpu_type: H100-80GB, path: /srv/h100.json}\n"
    )
    profiles = load_config(config_file).advisor.profiles
    assert [p.path for p in profiles] == [str(tmp_path / "conf" / "bench" / "h200.json"), "/srv/h100.json"]


async def test_with_a_workload_per_tenant_the_plan_covers_every_tenant(store: MeterStore) -> None:
    # The short requests are acme's and the long ones beta's: one router serves both, so the plan's mix is
    # solved over both tenants' traffic and assigns both shapes.
    await meter_a_day(store)
    tree = CONFIG.model_dump()
    tree["advisor"]["per_tenant"] = True
    config = TokenyardConfig.model_validate(tree)
    await evaluate_store(store, config, load_catalog({}), now=T0, keep_state=True)
    raw = await store.get_document(gpu_plan.DOCUMENT)
    assert raw is not None
    plan = gpu_plan.read_plans(orjson.loads(raw))[MIXED]
    assert plan.gpu_of_shape[SHORT] is not None
    assert plan.gpu_of_shape[LONG] is not None
