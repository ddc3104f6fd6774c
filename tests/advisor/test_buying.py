"""Committed and spot capacity, hand-worked: the expected shortfall of spot replicas, how many to buy, and
committed terms shorter and longer than the window."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.advisor.builders import DAY, T0, traffic, workload
from tokenyard.advisor import buying
from tokenyard.advisor.decide import evaluate

SPOT = buying.SpotPrice(0.5, interruptions_per_day=14.4, recovery_min=10, source="test")


def test_the_share_of_time_a_spot_replica_is_down() -> None:
    # 14.4 interruptions a day of 10 minutes each: 144 of 1,440 minutes, a tenth of the day.
    assert SPOT.down_share == pytest.approx(0.1)


def test_expected_shortfall_by_hand() -> None:
    # Two needed, two bought, each down a tenth of the time: one down (2 × 0.1 × 0.9 = 0.18) leaves one
    # short, both down (0.01) two short: 0.18 + 0.02.
    assert buying.expected_shortfall(2, 2, 0.1) == pytest.approx(0.20)
    # Three bought: two down (3 × 0.01 × 0.9 = 0.027) leaves one short, all three (0.001) two: 0.029.
    assert buying.expected_shortfall(2, 3, 0.1) == pytest.approx(0.029)
    assert buying.expected_shortfall(0, 3, 0.1) == 0


def test_one_more_spot_replica_while_it_saves_more_than_it_costs() -> None:
    # A spot replica-minute at 1, the on-demand fallback at 10. The third replica saves (0.20 - 0.029) × 10
    # = 1.71 a minute: bought. A fourth would save (0.029 - 0.0038) × 10 = 0.25 < 1: not.
    assert buying.spot_replicas(2, 0.1, 1.0, 10.0) == (3, pytest.approx(0.029))
    # Rarely down: none extra.
    assert buying.spot_replicas(4, 0.001, 1.0, 10.0)[0] == 4


def busy_first_week(i: int) -> float:
    """A replica's load: 2.0 every minute of the first week, 0.5 after."""
    return 2.0 if i < 7 * DAY else 0.5


def test_a_term_shorter_than_the_window_commits_week_by_week() -> None:
    # No per-token option: every block is sized for its busiest minute at the 60 % cap — 2.0 / 0.6 → 4
    # replicas in the first week, 0.5 / 0.6 → 1 in the three after. Committed at $1/GPU-hour, each block
    # paid for all of its 168 hours: (4 + 1 + 1 + 1) × 168 = $1,176 (on demand, sized for the window's
    # peak: 4 × $2 × 672 h = $5,376).
    term = buying.CommittedPrice(7, 1.0, "test")
    w = replace(workload(serverless=None), purchases={"H100": ((term,), None)})
    advice = evaluate(w, traffic(28, busy_first_week), now=T0 + 28 * 86400)
    committed = next(c for c in advice.candidates if c.purchase and c.purchase.kind == "committed")
    assert committed.cost.dedicated_usd == pytest.approx(1176)
    assert committed.label == "dedicated 4 × 1×H100 committed 7 d"
    assert committed.cost.replicas == pytest.approx(7 / 4)
    assert committed.purchase is not None
    assert committed.purchase.risk.startswith("committed: 4, 1, 1, 1 replica(s) paid for every hour")
    peak = next(c for c in advice.candidates if c.architecture == "dedicated" and c.purchase is None)
    assert peak.cost.dedicated_usd == pytest.approx(5376)


def test_a_term_longer_than_the_window_is_billed_for_the_window() -> None:
    # A 365-day term seen through 7 busy days: the window is a sample of it, 4 replicas × 168 h × $1.
    term = buying.CommittedPrice(365, 1.0, "test")
    w = replace(workload(serverless=None), purchases={"H100": ((term,), None)})
    advice = evaluate(w, traffic(7, busy_first_week), now=T0 + 7 * 86400)
    committed = next(c for c in advice.candidates if c.purchase and c.purchase.kind == "committed")
    assert committed.cost.dedicated_usd == pytest.approx(672)


def test_spot_is_over_provisioned_and_its_shortfall_priced_on_demand() -> None:
    # Sized at the spot price for the busiest minute: 4 replicas. Down a tenth of the time, with the
    # fallback at $2/h and spot at $0.5/h, buying stops when one more saves less than $0.5/h of shortfall.
    w = replace(workload(serverless=None), purchases={"H100": ((), SPOT)})
    advice = evaluate(w, traffic(7, busy_first_week), now=T0 + 7 * 86400)
    spot = next(c for c in advice.candidates if c.purchase and c.purchase.kind == "spot")
    bought, shortfall = buying.spot_replicas(4, 0.1, 0.5 / 60, 2.0 / 60)
    assert spot.cost.replicas == bought
    minutes = 7 * DAY
    expected = bought * 0.5 / 60 * minutes + shortfall * 2.0 / 60 * minutes
    assert spot.cost.dedicated_usd == pytest.approx(expected)
    assert spot.purchase is not None
    assert spot.purchase.fallback_usd == pytest.approx(shortfall * 2.0 / 60 * minutes)
    assert f"{bought} bought to keep 4 up" in spot.purchase.risk
