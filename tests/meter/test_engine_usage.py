"""What an engine did per minute, from its stored readings: counter differences between minutes, restarts,
replicas whose clocks disagree, gaps, gauges. Pure: buckets are built by hand, merged as the stores merge
them (``merge_engine_fields``)."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from tests.support.clocks import T0
from tests.support.usage_records import scrape
from tokenyard.meter.engine_usage import EngineUsage, engine_minutes, engine_periods
from tokenyard.meter.model import EngineKey, merge_engine_fields


def buckets(*scrapes: tuple[float, dict[str, int]], backend: str = "ded") -> dict[EngineKey, dict[str, int]]:
    """Scrapes at (seconds after T0, fields), merged into their minutes as a store would."""
    out: dict[EngineKey, dict[str, int]] = {}
    for at_s, fields in scrapes:
        merge_engine_fields(out.setdefault(EngineKey(T0 + int(at_s) // 60 * 60, backend), {}), fields)
    return out


def generated(*readings: tuple[float, float]) -> list[EngineUsage]:
    """engine_minutes of generation-token readings (seconds after T0, running total)."""
    rows = buckets(*((at_s, scrape(generation_tokens_total=total)) for at_s, total in readings))
    return engine_minutes(rows.items())


def counts(minutes: list[EngineUsage], counter: str = "generation_tokens") -> list[int | None]:
    return [usage.counts.get(counter) for usage in minutes]


def test_the_first_minute_counts_its_own_rise_and_each_next_one_the_rise_since() -> None:
    minutes = generated((5, 1_000), (35, 1_300), (65, 1_450), (95, 1_500), (125, 2_000))
    assert [u.period for u in minutes] == [T0, T0 + 60, T0 + 120]
    assert counts(minutes) == [300, 200, 500]
    assert [u.covered for u in minutes] == [{T0}, {T0 + 60}, {T0 + 120}]
    assert [u.tokens for u in minutes] == [300, 200, 500]


def test_a_reading_every_few_minutes_covers_the_minutes_since() -> None:
    minutes = generated((10, 100), (190, 700))
    assert counts(minutes) == [0, 600]
    assert minutes[1].covered == {T0 + 60, T0 + 120, T0 + 180}


def test_a_drop_to_near_zero_is_a_restart_and_counts_from_zero() -> None:
    minutes = generated((10, 50_000), (70, 50_400), (130, 30), (150, 90), (190, 200))
    assert counts(minutes) == [0, 400, 90, 110]
    assert [u.restarts for u in minutes] == [0, 0, 1, 0]


def test_a_restart_inside_a_minute_read_before_it_is_counted_a_minute_late() -> None:
    # 40,100 then a restart then 60 in one minute: its highest is 40,100 (the rise of 100 counts); the next
    # minute's 150 is all work since the restart.
    minutes = generated((10, 40_000), (70, 40_100), (110, 60), (130, 150))
    assert counts(minutes) == [0, 100, 150]
    assert [u.restarts for u in minutes] == [0, 0, 1]


def test_a_small_dip_is_a_clock_ahead_not_a_restart() -> None:
    # A replica whose clock runs ahead put 9,990 in the next minute; the others had read 10,000 already.
    minutes = generated((50, 10_000), (61, 9_990), (130, 10_300))
    assert counts(minutes) == [0, 0, 300]
    assert [u.restarts for u in minutes] == [0, 0, 0]


def test_after_a_gap_longer_than_max_gap_only_the_rise_within_a_minute_is_known() -> None:
    minutes = generated((10, 1_000), (965, 9_000), (1_010, 9_100))
    assert counts(minutes) == [0, 100]
    assert minutes[1].covered == {T0 + 960}


def test_each_counter_and_busy_time_is_taken_on_its_own_and_gauges_give_means_and_peaks() -> None:
    rows = buckets(
        (0, scrape(prompt_tokens_total=500, busy_seconds_total=10.0, running=2, kv_cache_usage=0.5)),
        (30, scrape(prompt_tokens_total=800, busy_seconds_total=40.5, running=4, kv_cache_usage=0.7)),
        (60, scrape(prompt_tokens_total=900, busy_seconds_total=70.0, waiting=3)),
    )
    first, second = engine_minutes(rows.items())
    assert (first.counts, second.counts) == (
        {"prompt_tokens": 300, "busy_ms": 30_500},
        {"prompt_tokens": 100, "busy_ms": 29_500},
    )
    assert (first.tokens, first.busy_s) == (300, 30.5)
    assert (first.mean("running"), first.peak("running")) == (3.0, 4.0)
    assert first.mean("kv_cache_usage") == 0.6
    assert (first.mean("waiting"), first.peak("waiting")) == (None, None)
    assert (second.mean("waiting"), second.mean("running")) == (3.0, None)
    assert (first.scrapes, second.scrapes) == (2, 1)


def test_the_prefix_cache_hit_ratio_is_cached_over_prompt_tokens_where_both_are_counted() -> None:
    rows = buckets(
        (0, scrape(prompt_tokens_total=1_000, cached_tokens_total=100)),
        (30, scrape(prompt_tokens_total=1_800, cached_tokens_total=700)),
        (60, scrape(generation_tokens_total=5)),
    )
    first, second = engine_minutes(rows.items())
    assert first.prefix_cache_hit_ratio == 0.75
    assert first.to_json()["prefix_cache_hit_ratio"] == 0.75
    assert second.prefix_cache_hit_ratio is None


def test_an_engine_without_token_counters_has_no_tokens() -> None:
    [usage] = engine_minutes(buckets((0, scrape(running=1, busy_seconds_total=3))).items())
    assert (usage.tokens, usage.busy_s) == (None, 0.0)


def test_backends_are_taken_apart_and_periods_add_up() -> None:
    rows = buckets(*((s, scrape(generation_tokens_total=10 * s, running=s % 7)) for s in range(0, 7_200, 30)))
    other = buckets(
        (0, scrape(generation_tokens_total=5)), (3_700, scrape(generation_tokens_total=6)), backend="b"
    )
    minutes = engine_minutes([*rows.items(), *other.items()])
    hours = engine_periods(minutes, 3600)
    assert [(u.period, u.backend) for u in hours] == [
        (T0, "b"),
        (T0, "ded"),
        (T0 + 3600, "b"),
        (T0 + 3600, "ded"),
    ]
    ded_first, ded_second = hours[1], hours[3]
    assert (ded_first.tokens, ded_second.tokens) == (35_700, 36_000)  # 3,570 s then 3,600 s at 10 a second
    assert len(ded_first.covered) == 60
    assert (ded_first.peak("running"), ded_first.scrapes) == (6.0, 120)
    [total] = engine_periods([u for u in minutes if u.backend == "ded"], 0)
    assert total.tokens == 10 * 7_170  # from the first reading (0) to the last


_increments = st.lists(st.integers(0, 200), min_size=20, max_size=150)


@given(
    increments=_increments,
    replicas=st.integers(1, 3),
    restart_at=st.none() | st.floats(0.35, 0.7),
    seed=st.integers(),
)
def test_any_readings_by_any_replicas_add_up_to_the_work_between_the_readings(
    increments: list[int], replicas: int, restart_at: float | None, seed: int
) -> None:
    """An engine read every ~10 s by each replica (which read some readings, and repeat each other's),
    restarted at most once after its first minute: the minutes add up to the work between the readings."""
    rng = random.Random(seed)
    total, timeline = 1_000_000, []
    restart = None if restart_at is None else int(restart_at * len(increments))
    for i, step in enumerate(increments):
        total = 0 if i == restart else total + step
        timeline.append((i * 10 + rng.random() * 9, total))
    read = {timeline[0], timeline[-1]} | ({timeline[restart]} if restart is not None else set())
    for _ in range(replicas):
        read |= {reading for reading in timeline if rng.random() < 0.7}
    in_order = sorted(read)
    observable = sum(b if b < a else b - a for (_, a), (_, b) in itertools.pairwise(in_order))
    written = [(at_s, scrape(generation_tokens_total=value)) for at_s, value in read for _ in range(replicas)]
    rng.shuffle(written)
    minutes = engine_minutes(buckets(*written).items())
    if restart is not None and int(timeline[restart][0]) // 60 == int(timeline[-1][0]) // 60:
        return  # a restart in the last minute, after a reading of it: seen a minute late, in no minute here
    assert sum(usage.tokens or 0 for usage in minutes) == observable
    assert sum(u.restarts for u in minutes) == (restart is not None)
