"""Routing with engine saturation, a pure decision: a saturated deployment is passed over like a full one,
but serves when nothing else can (its engine queues the request, where the alternative is a 429)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokenyard.proxy.routing import Choice, DeploymentView, NoChoice, choose_deployment


def view(
    name: str,
    in_flight: int = 0,
    cap: int | None = None,
    *,
    saturated: str | None = None,
    cooling: float = 0.0,
) -> DeploymentView:
    return DeploymentView(name, in_flight, cap, False, cooling, saturated=saturated)


def test_a_saturated_engine_spills_over_with_its_reason() -> None:
    choice = choose_deployment([view("vllm-a", 1, 16, saturated="queue 3"), view("api")])
    assert choice == Choice(1, "spillover", "vllm-a saturated (queue 3)")


def test_the_count_speaks_first_when_both_say_full() -> None:
    choice = choose_deployment([view("a", 4, 4, saturated="queue 3"), view("b")])
    assert choice == Choice(1, "spillover", "a at capacity (4/4)")


def test_with_nowhere_else_to_go_the_saturated_one_serves() -> None:
    only = choose_deployment([view("a", 1, 4, saturated="KV cache 95%")])
    assert only == Choice(0, "primary", "a saturated (KV cache 95%)")
    others_out = choose_deployment(
        [
            view("a", 4, 4),
            view("b", saturated="queue 1"),
            view("c", saturated="queue 9"),
            view("d", cooling=2.0),
        ]
    )
    assert others_out == Choice(
        1, "spillover", "a at capacity (4/4); b saturated (queue 1); c saturated (queue 9); d cooling down"
    )


def test_saturation_is_not_a_reason_when_the_count_is_full_everywhere() -> None:
    assert isinstance(choose_deployment([view("a", 2, 2, saturated="queue 1")]), NoChoice)


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(1, 5)), st.booleans(), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_unsaturated_room_first_then_saturated_room_then_none(
    rows: list[tuple[int, int | None, bool, bool]],
) -> None:
    views = [
        view(f"d{i}", n, cap, saturated="queue 1" if sat else None, cooling=1.0 if cool else 0.0)
        for i, (n, cap, sat, cool) in enumerate(rows)
    ]
    room = [
        v.cooling_for_s == 0 and (v.max_concurrency is None or v.in_flight < v.max_concurrency) for v in views
    ]
    clear = [r and v.saturated is None for r, v in zip(room, views, strict=True)]
    choice = choose_deployment(views)
    if any(clear):
        assert isinstance(choice, Choice)
        assert choice.position == clear.index(True)
    elif any(room):
        assert isinstance(choice, Choice)
        assert choice.position == room.index(True)
        assert views[choice.position].saturated is not None
    else:
        assert isinstance(choice, NoChoice)
