"""The pure decisions behind routing: backend choice and the circuit breaker (a handed-in clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokenyard.proxy.breaker import BreakerState, CircuitBreaker
from tokenyard.proxy.routing import Choice, DeploymentView, NoChoice, choose_deployment


def view(
    name: str,
    in_flight: int = 0,
    cap: int | None = None,
    *,
    limited: bool = False,
    cooling: float = 0.0,
    failed: bool = False,
) -> DeploymentView:
    return DeploymentView(name, in_flight, cap, limited, cooling, failed)


def test_the_first_deployment_with_room_is_primary() -> None:
    assert choose_deployment([view("ded", 3, 4), view("sls")]) == Choice(0, "primary", "")


def test_a_full_dedicated_spills_over() -> None:
    choice = choose_deployment([view("ded", 4, 4), view("dsl", 9, 10), view("sls")])
    assert choice == Choice(1, "spillover", "ded at capacity (4/4)")


def test_a_rate_limited_backend_spills_over_too() -> None:
    assert choose_deployment([view("a", limited=True), view("b")]) == Choice(1, "spillover", "a rate-limited")


def test_a_cooling_backend_falls_back() -> None:
    assert choose_deployment([view("a", cooling=3.0), view("b")]) == Choice(1, "fallback", "a cooling down")


def test_a_failure_this_request_saw_is_the_reason_that_wins() -> None:
    choice = choose_deployment([view("a", failed=True), view("b", 2, 2), view("c")])
    assert choice == Choice(2, "failover", "a failed; b at capacity (2/2)")


def test_all_full_is_a_429_and_all_cooling_a_503_with_the_shortest_wait() -> None:
    full = choose_deployment([view("a", 1, 1), view("b", cooling=5.0)])
    assert isinstance(full, NoChoice)
    assert not full.cooling
    cooling = choose_deployment([view("a", cooling=7.5), view("b", cooling=2.5)])
    assert cooling == NoChoice(cooling=True, retry_after_s=2.5, detail="a cooling down; b cooling down")


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(1, 5)), st.booleans(), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_the_choice_is_always_the_first_deployment_with_room(
    rows: list[tuple[int, int | None, bool, bool]],
) -> None:
    views = [
        view(f"d{i}", n, cap, limited=limited, cooling=1.0 if cool else 0.0)
        for i, (n, cap, limited, cool) in enumerate(rows)
    ]
    has_room = [
        not v.rate_limited
        and v.cooling_for_s == 0
        and (v.max_concurrency is None or v.in_flight < v.max_concurrency)
        for v in views
    ]
    choice = choose_deployment(views)
    if any(has_room):
        assert isinstance(choice, Choice)
        assert choice.position == has_room.index(True)
        assert (choice.reason == "primary") == (choice.position == 0)
    else:
        assert isinstance(choice, NoChoice)


def breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown_s=10.0, max_cooldown_s=60.0)


def fail(b: CircuitBreaker, now: float, retry_after_s: float | None = None) -> bool:
    return b.on_failure(now, b.on_dispatch(now), retry_after_s)


def test_the_circuit_opens_after_consecutive_failures_only() -> None:
    b = breaker()
    fail(b, 0.0)
    fail(b, 1.0)
    b.on_success(b.on_dispatch(1.5))
    fail(b, 2.0)
    fail(b, 3.0)
    assert b.state(3.0) is BreakerState.CLOSED
    assert fail(b, 4.0)
    assert b.state(4.0) is BreakerState.OPEN
    assert b.cooling_for_s(9.0) == 5.0


def test_after_the_cool_down_one_probe_goes_through_and_its_success_closes() -> None:
    b = breaker()
    for t in range(3):
        fail(b, float(t))
    assert not b.available(11.9)
    assert b.available(12.0)
    probe = b.on_dispatch(12.0)
    assert probe.probe
    assert not b.available(12.1)  # one probe at a time
    assert b.on_success(probe)
    assert b.state(12.2) is BreakerState.CLOSED


def test_a_failed_probe_doubles_the_cool_down_up_to_the_cap() -> None:
    b = breaker()
    for t in range(3):
        fail(b, float(t))
    now = 12.0
    cooldowns = []
    for _ in range(4):
        assert fail(b, now)
        cooldowns.append(b.cooling_for_s(now))
        now += cooldowns[-1]
    assert cooldowns == [20.0, 40.0, 60.0, 60.0]


def test_retry_after_opens_at_once_for_exactly_that_long() -> None:
    b = breaker()
    assert fail(b, 100.0, retry_after_s=7.0)
    assert b.cooling_for_s(100.0) == 7.0
    assert b.available(107.0)


def test_only_the_probe_being_abandoned_lets_another_probe() -> None:
    b = breaker()
    bystander = b.on_dispatch(0.0)  # sent while closed
    for t in range(3):
        fail(b, float(t))
    probe = b.on_dispatch(20.0)
    b.on_abandoned(bystander)
    assert not b.available(20.0)
    b.on_abandoned(probe)
    assert b.available(20.0)


def test_verdicts_of_requests_sent_before_the_circuit_opened_do_not_count() -> None:
    b = breaker()
    slow = b.on_dispatch(0.0)
    for t in range(3):
        fail(b, float(t))
    assert not b.on_success(slow)  # a slow old success does not close the fresh circuit
    assert b.state(5.0) is BreakerState.OPEN
    assert not b.on_failure(6.0, slow)  # nor does an old failure extend it
    assert b.cooling_for_s(6.0) == 6.0
    probe = b.on_dispatch(12.0)
    assert not b.on_success(b.on_dispatch(12.0))  # not the probe (it is refused routing anyway)
    assert b.on_success(probe)
