"""The meter's pure parts and its flush logic, with a handed-in clock (no sleeping)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.support.clocks import FakeClock
from tests.support.config import dedicated_config
from tests.support.polling import eventually
from tokenyard.config import BackendConfig, MeterConfig, Prices
from tokenyard.meter.meter import Meter
from tokenyard.meter.model import AggKey, GpuKey, UsageRecord
from tokenyard.meter.pricing import TokenPrices, token_prices, usd_per_1m_to_pusd
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.meter.usage import StreamTap, usage_of_body
from tokenyard.telemetry.report import dedicated_summaries, parse_when, summarize


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None},
    *({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}], "usage": None} for i in range(5)),
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": None},
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 5,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    },
]


@given(st.lists(st.integers(1, 60), min_size=1, max_size=40), st.booleans())
def test_the_tap_finds_usage_however_the_stream_is_cut(cuts: list[int], strip: bool) -> None:
    stream = sse(*CHUNKS)
    tap, out, at = StreamTap(strip_usage=strip), b"", 0
    for size in cuts * 20:
        out += tap.feed(stream[at : at + size])
        at += size
        if at >= len(stream):
            break
    out += tap.feed(stream[at:]) + tap.rest()
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.cached_tokens, tap.usage.completion_tokens) == (7, 3, 5)
    assert tap.content_chunks == 5
    assert out == (sse(*CHUNKS[:-1]) if strip else stream)


def test_the_tap_keeps_a_client_requested_usage_chunk_and_crlf_streams() -> None:
    stream = sse(*CHUNKS).replace(b"\n\n", b"\r\n\r\n")
    tap = StreamTap(strip_usage=True)
    out = tap.feed(stream[:50]) + tap.feed(stream[50:]) + tap.rest()
    assert tap.usage is not None
    assert b'"usage":{' not in out
    assert out.endswith(b"data: [DONE]\r\n\r\n")


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1}


_WITH_CHOICE = {"choices": [{"delta": {"content": "x"}}]}

# (event, what a tap stripping usage sends instead (None: the event as it is, b"": nothing), prompt tokens
# it reports): decoys mention usage without carrying one.
EVENTS: list[tuple[bytes, bytes | None, int | None]] = [
    (b"data: " + orjson.dumps({"choices": [], "usage": _usage(11)}), b"", 11),
    (
        b"data: " + orjson.dumps({**_WITH_CHOICE, "usage": _usage(12)}),
        b"data: " + orjson.dumps(_WITH_CHOICE),
        12,
    ),
    (b'data: {"choices": [], "usage": {"prompt_tokens": 13, "completion_tokens": 1}}', b"", 13),
    (b'data: {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 15}}', b"", 15),
    (b"data: " + orjson.dumps({"choices": [{"delta": {"content": 'say "usage":{ here'}}]}), None, None),
    (b': a comment with "usage":{', None, None),
    (b'data: {"choices": [{"delta": {"content": "x"}}], "usage": null}', None, None),
    (b"event: other\ndata: " + orjson.dumps({"usage": _usage(14)}), None, None),
    (b"data: [DONE]", None, None),
]


@given(
    st.lists(
        st.tuples(st.sampled_from(EVENTS), st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\n\n"])), max_size=12
    ),
    st.lists(st.integers(1, 80), min_size=1, max_size=10),
    st.booleans(),
)
def test_the_tap_strips_exactly_the_usage_whatever_else_the_stream_holds(
    events: list[tuple[tuple[bytes, bytes | None, int | None], bytes]], cuts: list[int], strip: bool
) -> None:
    stream = b"".join(event + separator for (event, _, _), separator in events)
    expected = b"".join(
        event + separator if not strip or instead is None else instead + separator if instead else b""
        for (event, instead, _), separator in events
    )
    reported = [tokens for (_, _, tokens), _ in events if tokens is not None]
    tap, out, at = StreamTap(strip_usage=strip), b"", 0
    for size in cuts * 10:
        out += tap.feed(stream[at : at + size])
        at += size
    out += tap.feed(stream[at:]) + tap.rest()
    assert out == expected
    assert (tap.usage.prompt_tokens if tap.usage else None) == (reported[-1] if reported else None)


def test_usage_of_a_whole_answer() -> None:
    body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    usage = usage_of_body(body)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (4, 9, 0)
    assert usage_of_body(b'{"choices": []}') is None
    assert usage_of_body(b'not json, but mentions "usage"') is None


def test_prices_are_exact_integers() -> None:
    assert usd_per_1m_to_pusd(0.15) == 150_000
    assert usd_per_1m_to_pusd(0.075) == 75_000
    assert usd_per_1m_to_pusd(2.5) == 2_500_000
    prices = TokenPrices(150_000, 75_000, 600_000)
    assert prices.cost_pusd(prompt_tokens=1000, cached_tokens=400, completion_tokens=10) == (
        600 * 150_000 + 400 * 75_000 + 10 * 600_000
    )
    serverless = BackendConfig(kind="serverless", base_url="http://x/v1", prices=Prices(input_per_1m=1.0))
    assert token_prices(serverless).cached_input_pusd == 1_000_000  # cached defaults to the input price
    dedicated = dedicated_config(
        prices=Prices(input_per_1m=9.0), gpus_per_replica=1, replicas=1, gpu_hour_price=2.0, max_concurrency=4
    )
    assert token_prices(dedicated) == TokenPrices(0, 0, 0)  # it bills GPU time instead


def record(
    ts: float, tenant: str, backend: str, kind: str, tokens: int, cost: int = 0, **kw: object
) -> UsageRecord:
    return UsageRecord(
        ts,
        "req",
        tenant,
        "m",
        backend,
        kind,
        "realtime",
        "primary",
        200,
        tokens,
        0,
        tokens,
        cost_pusd=cost,
        latency_ms=100,
        **kw,
    )  # type: ignore[arg-type]


def test_gpu_cost_is_attributed_by_token_share_and_idle_periods_stay_idle() -> None:
    aggs = [
        (
            AggKey(0, "a", "m", "ded", "dedicated", "realtime"),
            {"requests": 1, "prompt_tokens": 30, "completion_tokens": 30},
        ),
        (
            AggKey(60, "b", "m", "ded", "dedicated", "realtime"),
            {"requests": 1, "prompt_tokens": 10, "completion_tokens": 10},
        ),
        (AggKey(0, "b", "m", "sls", "serverless", "realtime"), {"requests": 2, "cost_pusd": 5 * 10**12}),
    ]
    gpu = [
        (GpuKey(0, "ded"), {"wall_ms": 60_000, "gpu_ms": 120_000, "cost_pusd": 8 * 10**12}),
        (GpuKey(60, "ded"), {"wall_ms": 60_000, "gpu_ms": 120_000, "cost_pusd": 8 * 10**12}),
        (GpuKey(3600, "ded"), {"wall_ms": 60_000, "gpu_ms": 120_000, "cost_pusd": 8 * 10**12}),
    ]
    by_tenant = {
        r.group: r for r in summarize(aggs, gpu, group_by=["tenant"], granularity="hour") if r.period == 0
    }
    assert by_tenant[("a",)].gpu_cost_usd == 12.0  # 60 of the 80 tokens in hour 0
    assert by_tenant[("b",)].gpu_cost_usd == 4.0
    assert by_tenant[("b",)].token_cost_pusd == 5 * 10**12
    idle = [r for r in summarize(aggs, gpu, group_by=["tenant"], granularity="hour") if r.period == 3600]
    assert [(r.group, r.gpu_cost_usd) for r in idle] == [(("(idle)",), 8.0)]
    total = summarize(aggs, gpu, group_by=[], granularity="total")
    assert sum(r.gpu_cost_usd for r in total) == 24.0


def test_dedicated_summary_derives_utilization_and_cost_per_token() -> None:
    backends = {
        "ded": dedicated_config(gpus_per_replica=2, replicas=1, gpu_hour_price=2.0, max_concurrency=4)
    }
    aggs = [
        (
            AggKey(0, "a", "m", "ded", "dedicated", "realtime"),
            {"latency_ms": 3_600_000, "prompt_tokens": 500_000, "completion_tokens": 500_000},
        )
    ]
    gpu = [(GpuKey(0, "ded"), {"wall_ms": 3_600_000, "gpu_ms": 7_200_000, "cost_pusd": 4 * 10**12})]
    [summary] = dedicated_summaries(aggs, gpu, backends)
    assert summary.utilization == 0.25  # one slot-hour busy of 4 slots × 1 hour
    as_json = summary.to_json()
    assert as_json["effective_usd_per_1m_tokens"] == 4.0
    assert as_json["idle_cost_usd"] == 3.0


def test_times_parse_as_ages_unix_seconds_or_iso() -> None:
    now = 1_000_000.0
    assert parse_when("24h", now) == now - 86400
    assert parse_when("90m", now) == now - 5400
    assert parse_when("1700000000", now) == 1_700_000_000
    assert parse_when("2026-01-01T00:00:00Z", now) == 1_767_225_600


async def test_gpu_accrual_follows_replica_changes_exactly(tmp_path: Path) -> None:
    wall = FakeClock(1_800_000_000.0)  # minute-aligned
    ded = dedicated_config(gpus_per_replica=4, replicas=2, gpu_hour_price=3.6, max_concurrency=8)
    store = SqliteMeterStore(tmp_path / "m.sqlite3", retention_s=86400, records_max=1000)
    meter = Meter(MeterConfig(store="sqlite:///unused"), {"ded": ded}, store, wall=wall)
    assert await meter.flush()  # sets the watermark
    wall.advance(30)
    assert await meter.flush()  # 30 s × 8 GPUs
    meter.set_replicas("ded", 1)
    wall.advance(45)
    assert await meter.flush()  # 45 s × 4 GPUs, across the minute boundary
    rows = dict(await store.gpu(1_799_999_940, 1_800_000_180))
    await meter.close(1.0)
    first, second = rows[GpuKey(1_800_000_000, "ded")], rows[GpuKey(1_800_000_060, "ded")]
    assert (first["wall_ms"], first["gpu_ms"]) == (60_000, 30_000 * 8 + 30_000 * 4)
    assert (second["wall_ms"], second["gpu_ms"]) == (15_000, 15_000 * 4)
    # $3.60 per GPU-hour = $0.001 per GPU-second = 1e9 pico-USD.
    assert first["cost_pusd"] + second["cost_pusd"] == (240 + 180) * 10**9


async def test_records_aggregate_and_flush_exactly_once(tmp_path: Path) -> None:
    wall = FakeClock(1_800_000_000.0)
    store = SqliteMeterStore(tmp_path / "m.sqlite3", retention_s=86400, records_max=1000)
    meter = Meter(MeterConfig(store="sqlite:///unused"), {}, store, wall=wall)
    rng = random.Random(3)
    expected = 0
    for i in range(200):
        tokens = rng.randint(0, 50)
        expected += tokens
        meter.record(record(wall() + i % 90, "a", "sls", "serverless", tokens, cost=tokens * 7))
        if i % 37 == 0:
            assert await meter.flush()
    await meter.close(1.0)
    store = SqliteMeterStore(tmp_path / "m.sqlite3", retention_s=86400, records_max=1000)
    rows = await store.aggregates(1_799_999_940, 1_800_000_300)
    records = await store.records(0, 2e9)
    await store.aclose()
    assert sum(f["requests"] for _, f in rows) == 200 == len(records)
    assert sum(f["prompt_tokens"] for _, f in rows) == expected
    assert sum(f["cost_pusd"] for _, f in rows) == expected * 7
    assert {k.minute for k, _ in rows} == {1_800_000_000, 1_800_000_060}


def test_the_default_store_is_embedded_and_flushes_at_least_every_second(monkeypatch: object) -> None:
    config = MeterConfig()
    assert config.store.startswith("sqlite:///")
    assert config.store.endswith("/tokenyard/meter.sqlite3")
    assert config.flush_interval_s <= 1.0
    assert not MeterConfig(store="off").enabled


async def test_with_metering_off_the_gpu_time_view_still_advances() -> None:
    wall = FakeClock(1_800_000_000.0)
    ded = dedicated_config(gpus_per_replica=2, replicas=1, gpu_hour_price=2.0, max_concurrency=8)
    meter = Meter(MeterConfig(store="off"), {"ded": ded}, None, wall=wall)
    wall.advance(60)
    assert await meter.flush()
    assert meter.dedicated["ded"].local_gpu_ms == 120_000


async def test_a_busy_meter_flushes_before_its_interval(tmp_path: Path) -> None:
    store = SqliteMeterStore(tmp_path / "m.sqlite3", retention_s=86400, records_max=1000)
    config = MeterConfig(store="sqlite:///unused", flush_interval_s=60, flush_records=5)
    meter = Meter(config, {}, store, wall=time.time)
    flusher = asyncio.create_task(meter.run())
    try:
        for _ in range(5):
            meter.record(record(time.time(), "a", "sls", "serverless", 3))

        async def flushed() -> None:
            assert len(await store.records(0, 2e9)) == 5

        await eventually(flushed, timeout_s=30)  # well before the 60 s interval, however slow the machine
    finally:
        flusher.cancel()
        await meter.close(1.0)
