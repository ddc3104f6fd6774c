"""The advisor's answers on traffic whose right answer can be worked out by hand.

The test replica (``builders.REPLICA``) costs $2 an hour and a full replica-minute of work is 60,000 output
tokens; the utilization cap is 60 %, so a replica takes at most 0.6 of a minute's full load. At $2 per 1M
tokens a replica-minute of load costs $0.12 per token, so a replica running at its cap does $0.072 of
per-token work a minute for $0.0333: it pays when it is busy more than 46 % of the minutes at its cap.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from tests.advisor.builders import DAY, REPLICA, T0, prices, traffic, workload
from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.decide import CurrentSetup, confidence, evaluate, settle
from tokenyard.advisor.settings import WorkloadNeeds
from tokenyard.advisor.workloads import build_workload
from tokenyard.config import parse_config
from tokenyard.errors import ConfigError

REPLICA_USD_PER_DAY = 48.0
USD_PER_LOAD_MINUTE = 0.12  # per-token cost of one replica-minute of load at $2 per 1M


def now_after(days: float) -> float:
    return T0 + days * 86400


def test_constant_heavy_load_goes_dedicated_with_enough_replicas_for_the_load_at_the_cap() -> None:
    # A steady 3.0 replica-minutes of load every minute: ceil(3.0 / 0.6) = 5 replicas, $10/h, against
    # $0.36 a minute ($21.6/h) per token. Four replicas would leave 0.6 of load ($0.072/min) to per-token
    # prices for $2/h less: 4 × $2 + $4.32 = $12.32/h > $10/h, so five, all always on.
    advice = evaluate(workload(), traffic(8, lambda i: 3.0), now=now_after(8))
    assert advice.architecture == "dedicated"
    assert advice.best.cost.replicas == 5
    assert advice.best.cost.total_usd == pytest.approx(5 * REPLICA_USD_PER_DAY * 8)
    assert advice.best.cost.per_token_usd == 0
    serverless = next(c for c in advice.candidates if c.architecture == "serverless")
    assert serverless.cost.total_usd == pytest.approx(3.0 * USD_PER_LOAD_MINUTE * 8 * DAY)
    assert advice.curve is not None
    assert advice.curve.optimum_n == 5
    assert advice.breakeven_utilization == pytest.approx((2 / 60) / USD_PER_LOAD_MINUTE)
    assert any("pays off above 28%" in reason for reason in advice.reasons)


def business_hours(load: float) -> Callable[[int], float]:
    def at(i: int) -> float:
        day, hour = (i // DAY) % 7, (i % DAY) // 60
        return load if day < 5 and 9 <= hour < 17 else 0.0

    return at


def test_light_business_hours_traffic_stays_serverless() -> None:
    # 0.05 replica-minutes of load for 40 hours a week: $0.006 a minute per token, $14.40 a week, against
    # $336 a week for the one replica it would need.
    advice = evaluate(workload(), traffic(14, business_hours(0.05)), now=now_after(14))
    assert advice.architecture == "serverless"
    assert advice.best.cost.total_usd == pytest.approx(0.05 * USD_PER_LOAD_MINUTE * 2 * 5 * 8 * 60)
    assert advice.curve is not None
    assert advice.curve.optimum_n == 0
    assert advice.curve.breakeven_n is None
    assert any("does not clear it" in reason for reason in advice.reasons)


def base_and_spikes(i: int) -> float:
    return 6.0 if i % 60 < 5 else 1.1  # a base of 1.1 and five minutes of 6.0 at the top of every hour


def test_base_load_with_spikes_goes_hybrid_with_replicas_for_the_base() -> None:
    # Replica 1 is always at its cap (0.6 of 1.1); replica 2 carries 0.5 most of the time and 0.6 in
    # spikes: (0.5 × 1320 + 0.6 × 120) × $0.12 = $87.84 a day of work for $48, so it pays; a third only
    # works in spikes: 0.6 × 120 × $0.12 = $8.64 a day for $48, so it does not. With two replicas the
    # spikes overflow by 4.8 for 120 minutes a day: $69.12. Hybrid: $96 + $69.12 = $165.12 a day.
    # Per token: (1.1 × 1320 + 6 × 120) × $0.12 = $260.64; for peak: ceil(6 / 0.6) = 10 replicas, $480;
    # autoscaled: the 8 extra replicas run 5 + 10 (lead) + 15 (scale-in delay) minutes per spike: $288.
    advice = evaluate(workload(), traffic(7, base_and_spikes), now=now_after(7))
    assert advice.architecture == "hybrid"
    assert advice.best.cost.replicas == 2
    assert advice.best.cost.total_usd == pytest.approx(165.12 * 7)
    costs = {c.architecture: c.cost.total_usd for c in advice.candidates}
    assert costs["serverless"] == pytest.approx(260.64 * 7)
    assert costs["dedicated"] == pytest.approx(480 * 7)
    assert costs["dedicated_autoscaled"] == pytest.approx(288 * 7, rel=0.01)
    assert advice.curve is not None
    assert [n for n, _ in advice.curve.points] == list(range(11))
    assert advice.curve.optimum_n == 2


def test_mostly_async_traffic_goes_to_batch() -> None:
    # 80 % of a light load could wait: it goes at the batch price (half), the rest stays per token.
    advice = evaluate(workload(batch=1.0), traffic(7, lambda i: 0.1, deferrable_share=0.8), now=now_after(7))
    assert advice.architecture == "batch"
    assert advice.deferrable_share == pytest.approx(0.8)
    per_token_usd = 0.1 * USD_PER_LOAD_MINUTE * 7 * DAY
    assert advice.best.cost.total_usd == pytest.approx(0.2 * per_token_usd + 0.8 * per_token_usd / 2)
    assert advice.best.cost.deferred_usd == pytest.approx(0.4 * per_token_usd)
    assert advice.reasons[0].startswith("async: 80% of tokens could wait → the batch API")


def test_async_work_fills_idle_dedicated_capacity_before_the_batch_api() -> None:
    # Real-time load 1.0 needs two replicas (cap 1.2): the 0.2 spare every minute takes the deferrable
    # 0.1 for nothing, so nothing goes to the batch API.
    advice = evaluate(
        workload(batch=1.0), traffic(7, lambda i: 1.1, deferrable_share=1 / 11), now=now_after(7)
    )
    assert advice.architecture == "dedicated"
    assert advice.best.cost.deferred_usd == pytest.approx(0)
    assert advice.best.cost.deferred_on_idle == pytest.approx(1.0)


def test_an_off_catalog_model_at_low_volume_goes_dedicated_serverless() -> None:
    needs = WorkloadNeeds(off_catalog=True)
    advice = evaluate(
        workload(serverless=0.1, dedicated_serverless=2.5, needs=needs),
        traffic(7, lambda i: 0.05),
        now=now_after(7),
    )
    assert advice.architecture == "dedicated_serverless"
    assert all(c.architecture != "serverless" for c in advice.candidates)
    assert advice.best.cost.total_usd == pytest.approx(0.05 * 60_000 * 2.5 / 1e6 * 7 * DAY)
    assert "needs an off-catalog model: shared serverless is ruled out" in advice.reasons


@pytest.mark.parametrize(
    ("days", "expected"), [(0.5, "low"), (6.9, "low"), (7, "medium"), (13.9, "medium"), (14, "high")]
)
def test_confidence_follows_how_many_weekly_cycles_were_seen(days: float, expected: str) -> None:
    assert confidence(days) == expected


def test_too_little_history_gives_low_confidence_and_says_so() -> None:
    advice = evaluate(workload(), traffic(2, lambda i: 3.0), now=now_after(2))
    assert advice.confidence == "low"
    assert advice.reasons[-1] == "only 2.0 days of history: observe a full week before acting"


def test_a_change_is_not_recommended_before_a_weekly_cycle_was_seen() -> None:
    current = CurrentSetup(None, 0, prices(2.0), "serverless")
    advice = evaluate(workload(current=current), traffic(3, lambda i: 3.0), now=now_after(3))
    settle(advice, {"key": advice.best.key, "streak": 9}, min_pct=10, min_usd=50, required=3)
    assert advice.material
    assert not advice.change_recommended


def test_replicas_are_not_billed_before_the_first_request() -> None:
    late = traffic(8, lambda i: 3.0 if i >= DAY else 0.0)
    late.first_seen = float(T0 + 86400)
    advice = evaluate(workload(), late, now=now_after(8))
    assert advice.window_minutes == 7 * DAY
    assert advice.best.cost.total_usd == pytest.approx(5 * REPLICA_USD_PER_DAY * 7)


def test_the_saving_is_against_the_current_setup_and_a_change_needs_to_hold() -> None:
    current = CurrentSetup(None, 0, prices(2.0), "serverless")
    advice = evaluate(workload(current=current), traffic(8, lambda i: 3.0), now=now_after(8))
    assert advice.current is not None
    assert advice.current.cost.total_usd == pytest.approx(3.0 * USD_PER_LOAD_MINUTE * 8 * DAY)
    assert advice.saving_pct == pytest.approx(100 * (1 - 10 / 21.6))
    state = None
    for run in range(1, 4):
        state = settle(advice, state, min_pct=10, min_usd=50, required=3)
        assert advice.material
        assert advice.stable_evaluations == run
        assert advice.change_recommended == (run == 3)


def test_a_recommendation_that_flips_between_evaluations_is_never_acted_on() -> None:
    current = CurrentSetup(None, 0, prices(2.0), "serverless")
    heavy = evaluate(workload(current=current), traffic(8, lambda i: 3.0), now=now_after(8))
    heavier = evaluate(workload(current=current), traffic(8, lambda i: 3.7), now=now_after(8))
    state = None
    for advice in [heavy, heavier] * 3:  # five replicas, then seven, then five ...
        state = settle(advice, state, min_pct=10, min_usd=50, required=2)
        assert advice.material
        assert not advice.change_recommended


def test_a_small_saving_is_not_material() -> None:
    current = CurrentSetup(REPLICA, 5, prices(2.0), "serverless")  # already on five replicas
    advice = evaluate(workload(current=current), traffic(8, lambda i: 3.0), now=now_after(8))
    settle(advice, None, min_pct=10, min_usd=50, required=1)
    assert advice.saving_usd_per_month == pytest.approx(0, abs=1e-6)
    assert not advice.material
    assert not advice.change_recommended


def test_dedicated_serverless_is_a_candidate_wherever_it_has_a_price() -> None:
    # Shared serverless is allowed, but a dedicated-serverless contract at $1 per 1M is half its price:
    # 0.05 replica-minutes of business-hours load is $0.003 a minute there against $0.006.
    advice = evaluate(
        workload(serverless=2.0, dedicated_serverless=1.0),
        traffic(14, business_hours(0.05)),
        now=now_after(14),
    )
    by_kind = {c.architecture: c.cost.total_usd for c in advice.candidates}
    assert by_kind["serverless"] == pytest.approx(0.05 * USD_PER_LOAD_MINUTE * 2 * 5 * 8 * 60)
    assert by_kind["dedicated_serverless"] == pytest.approx(by_kind["serverless"] / 2)
    assert advice.architecture == "dedicated_serverless"
    assert "dedicated serverless costs 50% less than serverless" in advice.reasons


def test_teams_without_an_autoscaler_can_switch_the_autoscaled_candidate_off() -> None:
    config = parse_config(
        """
backends:
  api: {kind: serverless, base_url: "http://127.0.0.1:9/v1", prices: {input_per_1m: 2, output_per_1m: 2}}
models:
  m: {deployments: [api]}
advisor:
  autoscaling: {enabled: false}
  workloads:
    m: {catalog_model: llama-3.1-8b-instruct}
"""
    )
    assert config.advisor.autoscaling.enabled is False
    built = build_workload("m", "m", config, load_catalog(), today=date(2026, 11, 29))
    advice = evaluate(built, traffic(8, lambda i: 3.0), now=now_after(8))
    architectures = {c.architecture for c in advice.candidates}
    assert "dedicated" in architectures
    assert "dedicated_autoscaled" not in architectures
    assert "autoscaled dedicated was not priced: advisor.autoscaling.enabled is false" in advice.reasons
    on = evaluate(workload(), traffic(8, lambda i: 3.0), now=now_after(8))
    assert "dedicated_autoscaled" in {c.architecture for c in on.candidates}  # on by default


def test_the_autoscaling_switch_is_validated_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"advisor\.autoscaling\.enabled: must be true or false"):
        parse_config("advisor:\n  autoscaling: {enabled: sometimes}\n")
