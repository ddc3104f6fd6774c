"""The advisor's capacity for a dedicated backend with a measured envelope is the envelope's: hand-worked,
through a real store (SQLite and Redis) holding both the metered traffic and the ``capacity:envelope``
document, as the advisor's worker reads them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import pytest_asyncio

from tests.support.clocks import T0
from tests.support.stores import PROXY_STORES, opened_meter_store
from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.costs import DedicatedOption
from tokenyard.advisor.evaluation import evaluate_store
from tokenyard.capacity import envelope
from tokenyard.capacity.desired import decide, demand_by_backend
from tokenyard.capacity.envelope_keeper import EnvelopeKeeper
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import EnvelopeSettings
from tokenyard.config import parse_config
from tokenyard.edge.capacity import envelope_source
from tokenyard.meter.model import AGG_FIELDS, AggKey, FlushBatch
from tokenyard.meter.shapes import SHAPE_COUNT, shape_index
from tokenyard.meter.store import MeterStore

MODEL = "llama-3.1-8b-instruct"  # the catalog's 1×H100-80GB: 24,461 output tok/s, run at 60 % at most
CONFIG = parse_config(
    f"""
backends:
  ded:
    kind: dedicated
    base_url: http://127.0.0.1:9/v1
    gpu_type: H100-80GB
    gpus_per_replica: 1
    replicas: 1
    gpu_hour_price: 2.0
    max_concurrency: 64
    sla: {{min_stream_tokens_per_s: 30}}
  api:
    kind: serverless
    base_url: http://127.0.0.1:9/v1
    prices: {{input_per_1m: 0.2, output_per_1m: 0.2}}
models:
  {MODEL}: {{deployments: [ded, api]}}
"""
)


@pytest_asyncio.fixture(params=PROXY_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MeterStore]:
    async with opened_meter_store(request.param, tmp_path) as opened:
        yield opened


async def meter_one_busy_minute(store: MeterStore, prompt_tokens: int = 0) -> None:
    """72,000 completion tokens in one minute on ``ded``: 1,200 tok/s (and ``prompt_tokens``)."""
    fields = dict.fromkeys(AGG_FIELDS, 0) | {
        "requests": 600,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 72_000,
    }
    key = AggKey(T0, "acme", MODEL, "ded", "dedicated", "realtime")
    await store.write(FlushBatch(uuid.uuid4().hex, {key: fields}, [], []))


def measured_cells() -> envelope.Cells:
    """The simulator's engine: 600 tok/s shared among the streams. Levels 5, 10 and 20 meet 30 tok/s per
    stream (120, 60, 30), level 25 breaches (24): capacity 20 × 30 = 600 tok/s per replica."""
    recorder = envelope.Recorder(CONFIG.backends["ded"].sla)
    for concurrency, count in {5: 50, 10: 50, 20: 50, 25: 20}.items():
        rate = 600 / concurrency
        for _ in range(count):
            recorder.observe(LatencySample(0.1, 0.1 + 60 / rate, 300, 61, True, concurrency), 1)
    return recorder.take()


async def advise(store: MeterStore) -> tuple[str, DedicatedOption, list[str]]:
    """(the sized-for-peak candidate's label, the replica shape it was priced on, the reasons)."""
    result = await evaluate_store(store, CONFIG, load_catalog({}), now=T0 + 3600, keep_state=False)
    (advice,) = result.advices
    assert advice.curve is not None
    peak = next(c for c in advice.candidates if c.architecture == "dedicated")
    option = advice.curve.option
    assert result.document("r")["workloads"][0]["cost_curve"]["capacity_source"] == option.capacity_source
    return peak.label, option, advice.reasons


async def test_the_measured_envelope_is_the_replica_capacity(store: MeterStore) -> None:
    await meter_one_busy_minute(store)
    document = envelope.merge_document(None, {"ded": measured_cells()}, now_wall=T0)
    await store.put_document(envelope.DOCUMENT, orjson.dumps(document))

    label, option, reasons = await advise(store)

    # The samples (300 prompt, 61 completion tokens) are all of one shape, with enough data of their own:
    # that shape's cell is measured, 600 tok/s ÷ 61 tokens a request. The metered minute is of another
    # shape (120 completion tokens a request, no prompt): the envelope over all shapes gives it 600 ÷ 120
    # = 5 requests/s per replica. The SLA is in the measurement: no utilization cap on top. 10 requests/s
    # at 5 per replica: 2 replicas (at the catalog's 24,461 tok/s and a 60 % cap it would have been 1).
    assert option.table is not None
    measured, traffic_shape = shape_index(300, 61), shape_index(0, 120)
    assert option.table.sources[measured] == "measured"
    # (no request of that shape was metered: its representative 32 completion tokens stand in)
    assert option.table.requests_per_s[measured] == pytest.approx(600 / 32)
    assert option.table.sources[traffic_shape] == "measured (all shapes)"
    assert option.table.requests_per_s[traffic_shape] == pytest.approx(5)
    assert option.capacity_source.startswith(
        "measured envelope, per shape: 1 measured, 19 measured (all shapes)"
    )
    assert option.utilization_cap == 1.0
    assert label == "dedicated 2 × 1×H100-80GB"
    assert any(
        r.startswith("1×H100-80GB capacity at the SLO by request shape: per shape: 1 measured")
        for r in reasons
    )


async def test_without_enough_envelope_data_the_catalog_stays(store: MeterStore) -> None:
    await meter_one_busy_minute(store)
    cells = {key: sums for key, sums in measured_cells().items() if key[1] != 25}  # no knee reached
    document = envelope.merge_document(None, {"ded": cells}, now_wall=T0)
    await store.put_document(envelope.DOCUMENT, orjson.dumps(document))

    label, option, reasons = await advise(store)

    assert (option.output_tokens_per_s, option.capacity_source, option.utilization_cap) == (
        24461,
        "catalog",
        None,
    )
    assert label == "dedicated 1 × 1×H100-80GB"
    assert not any("measured envelope" in reason for reason in reasons)


async def test_prompts_add_no_load_to_a_capacity_measured_under_them(store: MeterStore) -> None:
    # A prompt-heavy minute: 5 prompt tokens per completion token (360,000 and 72,000: 6,000 and 1,200
    # tok/s). The envelope's 600 output tok/s per replica were measured under the real prompts, so their
    # prefill is already paid for: 1,200 / 600 = 2 replicas, in the advice and in the desired replicas
    # alike. (The catalog's prefill figure scaled by 600/24,461, 988 tok/s, on top: 6,000 / 988 + 2 = 8.07,
    # so 9 replicas in the advice against 2 desired.)
    await meter_one_busy_minute(store, prompt_tokens=360_000)
    document = envelope.merge_document(None, {"ded": measured_cells()}, now_wall=T0)
    await store.put_document(envelope.DOCUMENT, orjson.dumps(document))

    label, option, _ = await advise(store)

    # The minute's requests are all of one shape (600 prompt, 120 completion tokens), priced by the
    # envelope over all shapes: 600 tok/s ÷ 120 = 5 requests/s per replica, the prompts' prefill inside
    # the measurement. 600 requests take 2 replica-minutes: the prompts add nothing.
    assert option.table is not None
    totals = [(0.0, 0.0, 0.0)] * SHAPE_COUNT
    totals[shape_index(600, 120)] = (600, 360_000, 72_000)
    assert option.load_of_shapes(totals) == pytest.approx(2)
    assert label == "dedicated 2 × 1×H100-80GB"

    keeper = EnvelopeKeeper(store, {}, EnvelopeSettings, replica="r1", wall=lambda: T0)
    assert await keeper.tick()  # reads the cluster's document
    backends = {name: SimpleNamespace(config=section) for name, section in CONFIG.backends.items()}
    estimate = envelope_source(keeper, backends)("ded")  # type: ignore[arg-type]
    assert estimate is not None
    assert (estimate.output_tokens_per_s, estimate.input_tokens_per_s) == (pytest.approx(600), None)
    demand = demand_by_backend(CONFIG, await store.aggregates(T0, T0 + 60))["ded"]
    desired = decide(
        "ded", recent=demand, week_ago=[], capacity=estimate, floor=None, bounds=(1, 100), provisioned=1
    )
    assert (desired.now, desired.next) == (2, 2)
