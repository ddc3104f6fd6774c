"""Metered engine truth: engine snapshots through ``capacity.truth.meter_engine`` into the meter, flushed to
each real store (Redis, a Redis Cluster, SQLite), read back as what the engine did; and the dedicated
summary's engine-versus-tokenyard figures, worked by hand. Clocks are fake; nothing sleeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.clocks import T0, FakeClock
from tests.support.config import dedicated_config
from tests.support.redis_servers import RedisServer
from tests.support.stores import Stores
from tokenyard.capacity.engine import EngineSnapshot
from tokenyard.capacity.truth import engine_metering, engine_reading, meter_engine
from tokenyard.config import MeterConfig
from tokenyard.meter.engine_usage import ENGINE_MAX_GAP_S, EngineUsage, engine_window
from tokenyard.meter.meter import Meter
from tokenyard.meter.model import AggKey, EngineKey, EngineReading, GpuKey, merge_engine_fields
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.meter.store import MeterStore
from tokenyard.telemetry import report

WINDOW = (T0 - 3600, T0 + 3600)


def snapshot(profile: str = "vllm", **figures: float) -> EngineSnapshot:
    """What the scraper would hand over: the figures given, the rest not exposed."""
    return EngineSnapshot(profile=profile, scraped_at=0.0, signals=frozenset(figures), **figures)


def meter_on(store: MeterStore, clock: FakeClock) -> Meter:
    return Meter(MeterConfig(store="sqlite:///unused"), {}, store, wall=clock)


async def engine_usage(store: MeterStore, start: int = WINDOW[0], end: int = WINDOW[1]) -> list[EngineUsage]:
    return engine_window(await store.engine(start - ENGINE_MAX_GAP_S, end), start, end)


def tokens_by_minute(minutes: list[EngineUsage]) -> dict[int, int | None]:
    return {usage.period - T0: usage.tokens for usage in minutes}


async def test_snapshots_metered_and_flushed_read_back_as_the_tokens_the_engine_processed(
    stores: Stores, clock: FakeClock
) -> None:
    store = stores.open()
    meter = meter_on(store, clock)
    readings = [(5, 1_000, 200), (35, 1_300, 260), (65, 1_450, 300), (125, 2_000, 420), (185, 2_100, 450)]
    for at_s, prompt, generated in readings:
        meter_engine(
            meter, "ded", snapshot(prompt_tokens_total=prompt, generation_tokens_total=generated), T0 + at_s
        )
    assert await meter.flush()
    minutes = await engine_usage(store)
    # The first minute: its own rise (300 + 60); then each minute's rise past the one before.
    assert tokens_by_minute(minutes) == {0: 360, 60: 190, 120: 670, 180: 130}
    assert sum(u.tokens or 0 for u in minutes) == (2_100 + 450) - (1_000 + 200)


async def test_an_engine_restart_counts_from_zero_and_busy_time_and_gauges_are_kept(
    stores: Stores, clock: FakeClock
) -> None:
    store = stores.open()
    meter = meter_on(store, clock)
    on_snapshot = engine_metering(meter, clock)  # the scraper's callback
    for at_s, generated, busy_s, waiting, kv in [
        (0, 90_000, 5_000.0, 0, 0.2),
        (30, 90_600, 5_030.0, 2, 0.9),
        (60, 120, 1.5, 0, 0.1),  # restarted
        (90, 400, 30.0, 1, 0.3),
    ]:
        clock.elapsed_s = at_s
        on_snapshot(
            "ded",
            snapshot(
                "sglang",
                generation_tokens_total=generated,
                busy_seconds_total=busy_s,
                waiting=waiting,
                kv_cache_usage=kv,
            ),
        )
    assert await meter.flush()
    first, second = await engine_usage(store)
    assert (first.tokens, first.busy_s, first.restarts) == (600, 30.0, 0)
    assert (second.tokens, second.busy_s, second.restarts) == (400, 30.0, 1)
    assert (first.mean("waiting"), first.peak("waiting"), first.peak("kv_cache_usage")) == (1.0, 2.0, 0.9)
    assert second.mean("kv_cache_usage") == pytest.approx(0.2)
    assert (first.scrapes, second.scrapes) == (2, 2)


async def test_two_replicas_metering_the_same_engine_count_its_tokens_once(
    stores: Stores, clock: FakeClock
) -> None:
    store = stores.open()
    replica_a, replica_b = meter_on(store, clock), meter_on(stores.open(), clock)
    # Both scrape the same engine, at their own moments; some scrapes land in the same minute.
    for meter, times in ((replica_a, (2, 32, 62, 92)), (replica_b, (17, 47, 77, 107))):
        for at_s in times:
            meter_engine(
                meter, "ded", snapshot(generation_tokens_total=10_000 + 10 * at_s, running=3), T0 + at_s
            )
    meter_engine(
        replica_b, "ded", snapshot(generation_tokens_total=10_920, running=3), T0 + 92
    )  # the same again
    assert await replica_a.flush()
    assert await replica_b.flush()
    minutes = await engine_usage(store)
    assert tokens_by_minute(minutes) == {0: 470 - 20, 60: 1_070 - 470}
    assert sum(u.scrapes for u in minutes) == 9  # every scrape counts: the gauges' means stay means
    assert {u.mean("running") for u in minutes} == {3.0}


async def test_readings_taken_while_the_store_is_down_are_written_once_it_is_back(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    wall = FakeClock(T0)
    store = RedisMeterStore(
        redis_server.url, prefix="eng", retention_s=86_400, records_max=100, socket_timeout_s=0.5, clock=wall
    )
    meter = Meter(MeterConfig(store=redis_server.url), {}, store, wall=wall)
    try:
        redis_server.stop()
        for minute in range(5):
            meter_engine(
                meter, "ded", snapshot(generation_tokens_total=1_000 + 100 * minute), T0 + 60 * minute
            )
            assert not await meter.flush()
        redis_server.start()
        assert await meter.flush()  # the batch held since the first failure, as it was
        assert await meter.flush()  # what came after
        assert tokens_by_minute(await engine_usage(store)) == {0: 0, 60: 100, 120: 100, 180: 100, 240: 100}
    finally:
        await store.aclose()
        redis_server.stop()


async def test_a_meter_without_a_store_keeps_nothing(clock: FakeClock) -> None:
    meter = Meter(MeterConfig(store="off"), {}, None, wall=clock)
    meter_engine(meter, "ded", snapshot(generation_tokens_total=5), T0)
    assert await meter.flush()


def test_vllm_prefix_cache_hits_are_its_cached_tokens_and_sglang_says_its_own() -> None:
    vllm = snapshot(prefix_cache_hits_total=40, prefix_cache_queries_total=100, prompt_tokens_total=100)
    sglang = snapshot("sglang", cached_tokens_total=7, prefix_cache_hits_total=40)
    assert engine_reading(vllm) == EngineReading(prompt_tokens_total=100, cached_tokens_total=40)
    assert engine_reading(sglang).cached_tokens_total == 7
    assert engine_reading(snapshot("tgi", running=2)) == EngineReading(running=2)


# -- the dedicated summary, worked by hand ---------------------------------------------------------------

GPUS_PER_REPLICA, REPLICAS = 2, 3
MINUTE_GPU_MS = 60_000 * GPUS_PER_REPLICA * REPLICAS  # a fully provisioned minute
MINUTE_COST_PUSD = 600_000_000_000  # $0.60 a minute


def window(
    tokenyard_tokens: dict[int, int], engine_readings: list[tuple[int, dict[str, float]]], minutes: int = 5
) -> tuple[list[Any], list[Any], list[EngineUsage]]:
    """Aggregates, GPU rows and engine minutes of a window of ``minutes`` minutes from T0: tokenyard's
    tokens per minute offset, the engine's readings (seconds after T0, figures)."""
    aggregates = [
        (
            AggKey(T0 + m, "acme", "llama", "ded", "dedicated", "realtime"),
            {"prompt_tokens": n, "latency_ms": 6_000},
        )
        for m, n in tokenyard_tokens.items()
    ]
    gpu = [
        (GpuKey(T0 + 60 * i, "ded"), {"gpu_ms": MINUTE_GPU_MS, "cost_pusd": MINUTE_COST_PUSD})
        for i in range(minutes)
    ]
    buckets: dict[EngineKey, dict[str, int]] = {}
    for at_s, figures in engine_readings:
        merge_engine_fields(
            buckets.setdefault(EngineKey(T0 + at_s // 60 * 60, "ded"), {}), EngineReading(**figures).fields()
        )
    engine = engine_window(buckets.items(), T0, T0 + 60 * minutes)
    return aggregates, gpu, engine


def summary(
    tokenyard_tokens: dict[int, int], engine_readings: list[tuple[int, dict[str, float]]]
) -> dict[str, Any]:
    backends = {
        "ded": dedicated_config(gpus_per_replica=GPUS_PER_REPLICA, replicas=REPLICAS, max_concurrency=4)
    }
    aggregates, gpu, engine = window(tokenyard_tokens, engine_readings)
    [ded] = report.dedicated_summaries(aggregates, gpu, backends, engine)
    return ded.to_json()


def test_without_engine_figures_the_summary_is_tokenyards_own() -> None:
    got = summary({0: 1_000, 60: 2_000}, [])
    assert (got["source"], got["utilization_source"], got["tokens_source"]) == (
        "tokenyard",
        "tokenyard",
        "tokenyard",
    )
    # Slot-time: 12 s busy over 4 slots x 3 replicas x 5 minutes = 3,600 slot-s.
    assert got["utilization"] == pytest.approx(12 / 3_600)
    assert got["effective_usd_per_1m_tokens"] == pytest.approx(3.0 / 3_000 * 1e6)
    assert (got["engine"], got["engine_tokens"], got["unseen_tokens"]) == (None, None, None)


def test_engine_tokens_and_busy_time_win_over_the_minutes_they_cover() -> None:
    # The engine is read from T0 + 60 s: minutes 60..240 are its (4 of the 5). It processed 9,000 tokens
    # there and was busy 360 s; tokenyard metered 6,500 of those tokens (and 1,000 at minute 0, uncovered).
    readings = [
        (60, {"prompt_tokens_total": 50_000, "generation_tokens_total": 10_000, "busy_seconds_total": 100.0}),
        (
            119,
            {"prompt_tokens_total": 52_000, "generation_tokens_total": 11_000, "busy_seconds_total": 190.0},
        ),
        (
            180,
            {"prompt_tokens_total": 53_000, "generation_tokens_total": 12_000, "busy_seconds_total": 280.0},
        ),
        (
            299,
            {"prompt_tokens_total": 55_000, "generation_tokens_total": 14_000, "busy_seconds_total": 460.0},
        ),
    ]
    got = summary({0: 1_000, 60: 2_500, 120: 1_000, 240: 3_000}, readings)
    assert (got["source"], got["utilization_source"], got["tokens_source"]) == ("engine", "engine", "engine")
    assert (got["engine_tokens"], got["tokens"], got["unseen_tokens"]) == (9_000, 7_500, 9_000 - 6_500)
    engine = got["engine"]
    assert (engine["minutes"], engine["tokenyard_tokens"], engine["busy_s"]) == (4, 6_500, 360.0)
    # Busy 360 s over 4 minutes x 3 replicas = 720 replica-s: half busy. Idle cost: half of the $3.00.
    assert got["utilization"] == pytest.approx(0.5)
    assert got["idle_cost_usd"] == pytest.approx(1.5)
    assert got["slot_utilization"] == pytest.approx(24 / 3_600)  # tokenyard's own view, still shown
    # $/1M tokens: the 4 covered minutes' GPU cost ($2.40) over the engine's 9,000 tokens.
    assert got["effective_usd_per_1m_tokens"] == pytest.approx(2.40 / 9_000 * 1e6)


def test_an_engine_with_tokens_but_no_busy_time_keeps_tokenyards_utilization() -> None:
    readings = [(0, {"generation_tokens_total": 100}), (250, {"generation_tokens_total": 4_100})]
    got = summary({120: 3_000}, readings)
    assert (got["source"], got["utilization_source"], got["tokens_source"]) == (
        "engine",
        "tokenyard",
        "engine",
    )
    assert got["utilization"] == got["slot_utilization"]
    assert got["unseen_tokens"] == 1_000


def test_engine_rows_put_the_engines_tokens_beside_tokenyards_per_period() -> None:
    readings = [
        (at_s, {"generation_tokens_total": 1_000 + 10 * at_s, "waiting": at_s % 3})
        for at_s in range(0, 300, 20)
    ]
    aggregates, _, engine = window({0: 100, 60: 150, 180: 50}, readings)
    rows = report.engine_rows(engine, aggregates, "minute")
    assert [
        (r["period_start"] - T0, r["tokens"], r["tokenyard_tokens"], r["unseen_tokens"]) for r in rows
    ] == [
        (0, 400, 100, 300),
        (60, 600, 150, 450),
        (120, 600, 0, 600),
        (180, 600, 50, 550),
        (240, 600, 0, 600),
    ]
    [total] = report.engine_rows(engine, aggregates, "total")
    assert (total["tokens"], total["tokenyard_tokens"], total["waiting_max"], total["scrapes"]) == (
        2_800,
        300,
        2.0,
        15,
    )
    with pytest.raises(ValueError, match="granularity"):
        report.engine_rows(engine, aggregates, "fortnight")
