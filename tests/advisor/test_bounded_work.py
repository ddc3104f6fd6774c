"""A few lines of traffic cannot make the advisor's work unbounded: it follows busy minutes, not the span
or the peak.

Work is measured by what is stored and priced (minutes held, points on the curve), never by the clock.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.advisor.builders import DAY, REPLICA, T0, traffic, workload
from tokenyard.advisor import costs
from tokenyard.advisor.costs import Deferred, LoadProfile
from tokenyard.advisor.decide import evaluate
from tokenyard.advisor.settings import Autoscaling
from tokenyard.advisor.traffic import TokenSeries, Traffic, TrafficBuilder

DAY_S = 86400
REPLICA_USD_PER_DAY = 48.0


def test_two_requests_a_year_apart_store_two_minutes_and_price_the_whole_year() -> None:
    year = 366 * DAY_S
    builder = TrafficBuilder(T0, T0 + year, lambda model, tenant: model, lambda model, tenant: False)
    for ts in (T0 + 60, T0 + year - 60):
        builder.add(
            ts, model="m", tenant="", mode="realtime", requests=1, prompt=0, cached=0, completion=6000
        )
    year_of_traffic = builder.workloads["m"]
    assert len(year_of_traffic.realtime.prompt) == 2  # it was 527,040: every minute of the span
    assert len(REPLICA.load(year_of_traffic.realtime)) == 2
    advice = evaluate(workload(), year_of_traffic, now=T0 + year)
    assert advice.window_minutes == 366 * DAY
    by_kind = {c.architecture: c.cost for c in advice.candidates}
    assert by_kind["serverless"].total_usd == pytest.approx(2 * 6000 * 2 / 1e6)
    # One replica, always on, all year; autoscaled keeps its minimum of one replica all year too.
    assert by_kind["dedicated"].total_usd == pytest.approx(366 * REPLICA_USD_PER_DAY)
    assert by_kind["dedicated_autoscaled"].total_usd == pytest.approx(366 * REPLICA_USD_PER_DAY)


def test_a_huge_peak_prices_the_curve_where_it_bends_and_finds_the_same_optimum() -> None:
    # A steady 0.5 replica-minutes of load all day, and one minute of 10,000: walking every N up to the
    # peak would price 16,668 replica counts.
    huge = traffic(1, lambda i: 10_000.0 if i == 600 else 0.5)
    advice = evaluate(workload(), huge, now=T0 + DAY_S)
    assert advice.curve is not None
    assert len(advice.curve.points) <= 8
    assert advice.curve.every_n is False
    assert advice.curve.points[-1][0] == math.ceil(10_000 / 0.6 - 1e-9)
    # The same answer as pricing every N: one replica for the base, the burst per token.
    profile = LoadProfile(
        REPLICA.load(huge.realtime),
        [0.12 * x for x in REPLICA.load(huge.realtime)],
        0.6,
        minutes=huge.minutes,
    )
    nothing = Deferred(0.0, 0.0)
    every = [costs.always_on(REPLICA, profile, n, nothing).total_usd for n in range(16_668)]
    assert advice.curve.optimum_n == min(range(len(every)), key=every.__getitem__) == 1
    assert dict(advice.curve.points)[1] == pytest.approx(every[1])


def _every_n(profile: LoadProfile, deferred: Deferred, most: int) -> tuple[int, float, float | None]:
    """The curve priced at every N, as it was: (cheapest N, its cost, breakeven)."""
    points = [(n, costs.always_on(REPLICA, profile, n, deferred).total_usd) for n in range(most + 1)]
    best = min(points, key=lambda p: (p[1], p[0]))
    return best[0], best[1], costs._breakeven(points)


@settings(max_examples=60, deadline=None)
@given(
    loads=st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1500)), min_size=1, max_size=40),
    price_per_load=st.lists(st.floats(0.001, 0.5), min_size=40, max_size=40),
    deferred_load=st.floats(0, 20_000),
    deferred_usd=st.floats(0, 500),
)
def test_the_curve_priced_where_it_bends_is_exact(
    loads: list[float], price_per_load: list[float], deferred_load: float, deferred_usd: float
) -> None:
    busy = [x for x in loads if x > 0]
    if not busy:
        return
    overflow = [x * p for x, p in zip(busy, price_per_load, strict=False)]
    profile = LoadProfile(busy, overflow, 0.6, minutes=60)
    deferred = Deferred(deferred_load, deferred_usd)
    most = max(profile.peak_replicas(), costs.DENSE_CURVE_MAX_N + 1)
    curve, cheapest = costs.hybrid_curve(REPLICA, profile, deferred, most=most)
    _, usd, breakeven = _every_n(profile, deferred, most)
    assert cheapest.total_usd == pytest.approx(usd, rel=1e-9, abs=1e-9)
    assert costs.always_on(REPLICA, profile, curve.optimum_n, deferred).total_usd == pytest.approx(
        usd, rel=1e-9, abs=1e-9
    )
    if breakeven is None or curve.breakeven_n is None:
        assert breakeven == curve.breakeven_n
    else:
        assert curve.breakeven_n == pytest.approx(breakeven, rel=1e-6, abs=1e-6)


def _dense_autoscaled(load: list[float], cap: float, scaling: Autoscaling) -> tuple[int, int]:
    """(replica-minutes provisioned, billed) minute by minute over the whole window, as it was."""
    needed = [max(scaling.min_replicas, math.ceil(x / cap - 1e-9)) for x in load]
    behind, ahead = scaling.scale_in_delay_min, scaling.scale_out_lead_min
    provisioned = [max(needed[max(0, i - behind) : i + ahead + 1]) for i in range(len(load))]
    block = scaling.billing_granularity_min
    billed = sum(
        max(provisioned[i : i + block]) * len(provisioned[i : i + block]) for i in range(0, len(load), block)
    )
    return sum(provisioned), billed


@settings(max_examples=150, deadline=None)
@given(
    busy=st.dictionaries(st.integers(0, 299), st.floats(0.01, 5), max_size=12),
    lead=st.integers(0, 30),
    delay=st.integers(0, 30),
    floor=st.integers(0, 3),
    block=st.sampled_from([1, 7, 15, 60]),
)
def test_autoscaling_over_busy_minutes_only_matches_the_minute_by_minute_replay(
    busy: dict[int, float], lead: int, delay: int, floor: int, block: int
) -> None:
    minutes = 300
    scaling = Autoscaling(
        scale_out_lead_min=lead, scale_in_delay_min=delay, min_replicas=floor, billing_granularity_min=block
    )
    index = sorted(busy)
    cost = costs.autoscaled(
        REPLICA, [busy[i] for i in index], 0.6, scaling, Deferred(0.0, 0.0), index=index, minutes=minutes
    )
    dense = [busy.get(i, 0.0) for i in range(minutes)]
    _, billed = _dense_autoscaled(dense, 0.6, scaling)
    assert cost.dedicated_usd == pytest.approx(billed * REPLICA.replica_usd_per_min)


def test_the_heat_map_averages_each_hour_of_the_week_over_its_occurrences() -> None:
    # Eight days from a Sunday to the next Sunday, the same 100 tokens every minute: each hour of the week
    # is 6,000 tokens on average, Sunday included (it occurs twice; summed, it looked twice as busy).
    sunday = T0 + ((6 - datetime.fromtimestamp(T0, UTC).weekday()) % 7) * DAY_S
    week_and_a_day = Traffic.empty(sunday, 8 * DAY)
    for i in range(8 * DAY):
        week_and_a_day.realtime.add(i, 1, 100, 0, 0)
    by_hour = week_and_a_day.tokens_by_hour_of_week()
    assert by_hour == [6000.0] * 168


def test_a_series_keeps_its_busy_minutes_in_order_whatever_order_they_come_in() -> None:
    series = TokenSeries()
    for minute in (50, 10, 30, 10, 50, 70):
        series.add(minute, 1, 100, 10, 5)
    assert list(series.index) == [10, 30, 50, 70]
    assert list(series.requests) == [2, 1, 2, 1]
    assert list(series.prompt) == [200, 100, 200, 100]
    later = series.between(20, 60)
    assert list(later.index) == [10, 30]  # minutes 30 and 50, counted from minute 20
    assert series.plus(later).totals().requests == series.totals().requests + 3
