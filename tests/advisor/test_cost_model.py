"""The cost model's pieces, and properties that must hold for any traffic (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.advisor.builders import DAY, REPLICA, T0, traffic, workload
from tokenyard.advisor import costs
from tokenyard.advisor.costs import Deferred, LoadProfile
from tokenyard.advisor.decide import Advice, evaluate
from tokenyard.advisor.settings import Autoscaling
from tokenyard.advisor.traffic import TokenSeries, Traffic
from tokenyard.advisor.workloads import BusyMinute, calibrated

NOTHING_DEFERRED = Deferred(0.0, 0.0)


def test_load_adds_prefill_and_decode_and_discounts_prompt_cache_hits() -> None:
    series = TokenSeries()
    series.add(0, 1, prompt=60_000, cached=30_000, completion=6_000)
    # 30,000 uncached input at 10,000/s = 3 s, 30,000 cached at a tenth of that = 0.3 s, 6,000 output at
    # 1,000/s = 6 s: 9.3 replica-seconds of a 60-second minute.
    assert REPLICA.load(series) == [pytest.approx(9.3 / 60)]


def test_per_token_costs_price_cached_input_at_its_own_price() -> None:
    series = TokenSeries()
    series.add(1, 1, prompt=1_000_000, cached=400_000, completion=100_000)
    prices = costs.TokenPrices(
        input_per_1m=1.0, cached_input_per_1m=0.5, output_per_1m=4.0, as_of="2026-11-29", source="t"
    )
    assert costs.per_token_costs(prices, series) == [pytest.approx(0.6 + 0.2 + 0.4)]  # minute 1 only
    assert costs.total_cost(prices, series.totals()) == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("values", "behind", "ahead", "expected"),
    [
        ([0, 0, 3, 0, 0, 0], 0, 0, [0, 0, 3, 0, 0, 0]),
        ([0, 0, 3, 0, 0, 0], 0, 2, [3, 3, 3, 0, 0, 0]),  # started two minutes ahead
        ([0, 0, 3, 0, 0, 0], 1, 0, [0, 0, 3, 3, 0, 0]),  # kept a minute after
        ([1, 4, 2, 0, 5, 0], 1, 1, [4, 4, 4, 5, 5, 5]),
    ],
)
def test_autoscaled_replicas_start_ahead_and_stay_after(
    values: list[int], behind: int, ahead: int, expected: list[int]
) -> None:
    assert costs._window_max(values, behind=behind, ahead=ahead) == expected


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 50), min_size=1, max_size=200),
    behind=st.integers(0, 40),
    ahead=st.integers(0, 40),
)
def test_the_window_maximum_matches_the_obvious_definition(
    values: list[int], behind: int, ahead: int
) -> None:
    expected = [max(values[max(0, i - behind) : i + ahead + 1]) for i in range(len(values))]
    assert costs._window_max(values, behind=behind, ahead=ahead) == expected


def test_autoscaling_bills_whole_blocks_and_keeps_a_minimum() -> None:
    # Two hours, one busy minute (30), which needs ceil(1.0 / 0.6) = 2 replicas.
    scaling = Autoscaling(
        scale_out_lead_min=0, scale_in_delay_min=0, min_replicas=1, billing_granularity_min=60
    )
    cost = costs.autoscaled(REPLICA, [1.0], 0.6, scaling, NOTHING_DEFERRED, index=[30], minutes=120)
    # The first hour is billed at its largest count (2), the second at the minimum (1).
    assert cost.dedicated_usd == pytest.approx((2 + 1) * 2.0)
    assert cost.replicas == pytest.approx(1.5)


def test_n_always_on_replicas_price_overflow_and_idle_exactly() -> None:
    load = [0.3, 0.9, 1.5, 0.0]
    overflow_usd = [x * 0.12 for x in load]  # per-token cost in proportion to load
    profile = LoadProfile(load, overflow_usd, cap=0.6, minutes=len(load))
    assert profile.peak_replicas() == 3
    for n in range(4):
        threshold = n * 0.6
        expected_overflow = sum(max(0.0, x - threshold) * 0.12 for x in load)
        expected_idle = sum(max(0.0, threshold - x) for x in load)
        overflow, idle = profile.with_replicas(n)
        assert overflow == pytest.approx(expected_overflow)
        assert idle == pytest.approx(expected_idle)


def test_calibration_scales_capacity_to_what_was_measured_at_the_sla_cap() -> None:
    # The replica served 18,000 output tokens a minute with its slots full: at the 60 % cap that is its
    # usable capacity, so full capacity is 18,000 / 60 / 0.6 = 500 tokens/s, half the catalog's 1,000.
    busy = [BusyMinute(0, 0, 18_000, slot_utilization=1.0, replica_seconds=60)] * 12
    measured = calibrated(REPLICA, busy, 0.6)
    assert measured.output_tokens_per_s == pytest.approx(500)
    assert measured.input_tokens_per_s == pytest.approx(5_000)
    assert measured.capacity_source == "measured: 0.50 × catalog (12 busy minutes)"


def test_calibration_needs_enough_busy_minutes() -> None:
    few = [BusyMinute(0, 0, 18_000, 1.0, 60)] * 5 + [BusyMinute(0, 0, 100, 0.01, 60)] * 50
    assert calibrated(REPLICA, few, 0.6) is REPLICA


# -- properties ----------------------------------------------------------------------------------------

# A minute's load in replica-minutes: idle, or from a trickle to eight replicas' worth.
loads = st.lists(st.one_of(st.just(0.0), st.floats(0.001, 8)), min_size=1, max_size=120)
prices_per_1m = st.floats(0.05, 20)


def _traffic(values: list[float]) -> Traffic:
    return traffic(len(values) / DAY, lambda i: values[i])


@settings(max_examples=150, deadline=None)
@given(values=loads, price=prices_per_1m)
def test_the_hybrid_optimum_never_costs_more_than_all_serverless_or_dedicated_for_peak(
    values: list[float], price: float
) -> None:
    advice = evaluate(workload(serverless=price), _traffic(values), now=T0 + 86400)
    by_kind = {c.architecture: c.cost.total_usd for c in advice.candidates}
    assert advice.curve is not None
    optimum = dict(advice.curve.points)[advice.curve.optimum_n]
    assert optimum <= by_kind["serverless"] + 1e-9
    assert optimum <= by_kind["dedicated"] + 1e-9
    assert advice.best.cost.total_usd <= min(by_kind.values()) + 1e-9


@settings(max_examples=100, deadline=None)
@given(values=loads, price=prices_per_1m, factor=st.integers(2, 20))
def test_scaling_all_traffic_up_never_makes_serverless_relatively_cheaper(
    values: list[float], price: float, factor: int
) -> None:
    if not any(values):
        return
    small = evaluate(workload(serverless=price), _traffic(values), now=T0 + 86400)
    large = evaluate(workload(serverless=price), _traffic([x * factor for x in values]), now=T0 + 86400)

    def serverless_over_best(advice: Advice) -> float:
        serverless = next(c for c in advice.candidates if c.architecture == "serverless")
        return serverless.cost.total_usd / advice.best.cost.total_usd

    assert serverless_over_best(large) >= serverless_over_best(small) - 1e-9


@settings(max_examples=100, deadline=None)
@given(first=loads, second=loads, price=prices_per_1m, n=st.integers(0, 12))
def test_costs_are_additive_over_time(first: list[float], second: list[float], price: float, n: int) -> None:
    """Per-token cost, and the cost of a fixed number of always-on replicas, of two spans is their sum."""
    whole = workload(serverless=price)

    def costs_of(values: list[float]) -> tuple[float, float]:
        t = _traffic(values)
        prices = whole.serverless
        assert prices is not None
        load = REPLICA.load(t.realtime)
        profile = LoadProfile(load, costs.per_token_costs(prices, t.realtime), 0.6, minutes=t.minutes)
        fixed = costs.always_on(REPLICA, profile, n, NOTHING_DEFERRED)
        return costs.total_cost(prices, t.realtime.totals()), fixed.total_usd

    a, b, both = costs_of(first), costs_of(second), costs_of(first + second)
    assert both[0] == pytest.approx(a[0] + b[0], rel=1e-9, abs=1e-9)
    assert both[1] == pytest.approx(a[1] + b[1], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("costs_by_n", "expected"),
    [
        ([100, 120, 140], None),  # the first replica already costs more
        ([100, 80, 90, 150], 2 + 10 / 60),  # crosses between 2 and 3
        ([100, 120, 90, 130], 2.25),  # not convex: the last crossing counts
        ([100, 60, 70], 2.0),  # never crosses within the curve
    ],
)
def test_breakeven_is_the_last_crossing_of_the_cost_of_no_replicas(
    costs_by_n: list[float], expected: float | None
) -> None:
    points = list(enumerate(map(float, costs_by_n)))
    assert costs._breakeven(points) == (None if expected is None else pytest.approx(expected))


@settings(max_examples=60, deadline=None)
@given(values=loads)
def test_the_breakeven_is_where_the_curve_crosses_all_per_token(values: list[float]) -> None:
    advice = evaluate(workload(), _traffic(values), now=T0 + 86400)
    assert advice.curve is not None
    points, breakeven = advice.curve.points, advice.curve.breakeven_n
    if breakeven is None:
        assert all(cost > points[0][1] - 1e-9 for _, cost in points[1:]) or math.isclose(points[0][1], 0)
    else:
        assert 0 < breakeven <= points[-1][0]
        assert points[math.floor(breakeven)][1] <= points[0][1] + 1e-9
