"""The GPU-mix solver: Mélange's published example, and what must hold of any mix."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenyard.advisor.mix import GpuType, Mix, best_single, replicas_for, single, solve
from tokenyard.meter.shapes import SHAPE_COUNT

# Mélange (Griggs et al., 2024) works a 2 × 2 grid of request sizes; here it sits on four of the shape
# buckets: (input 0, output 0), (0, 1), (1, 0), (1, 1) are shape indices 0, 1, 4, 5.
GRID = (0, 1, 4, 5)


def grid_type(name: str, usd_per_h: float, capacity: list[list[float]]) -> GpuType:
    cells = [1.0] * SHAPE_COUNT  # shapes without demand: any capacity
    for k, value in zip(GRID, [v for row in capacity for v in row], strict=True):
        cells[k] = value
    return GpuType(name, usd_per_h, tuple(cells))


def grid_demand(shares: list[list[float]], total_per_s: float) -> list[float]:
    demand = [0.0] * SHAPE_COUNT
    for k, share in zip(GRID, [v for row in shares for v in row], strict=True):
        demand[k] = share * total_per_s
    return demand


A10G = grid_type("A10G", 1.01, [[2, 1], [5, 2]])
A100 = grid_type("A100-80GB", 3.67, [[20, 20], [40, 20]])
DEMAND = grid_demand([[0.2, 0.1], [0.5, 0.2]], 30)  # 6, 3, 15 and 6 requests/s


def test_melange_single_types() -> None:
    # A10G: 6/2 + 3/1 + 15/5 + 6/2 = 12 replicas; A100: 0.3 + 0.15 + 0.375 + 0.3 = 1.125 → 2.
    assert single(A10G, DEMAND).replicas == {"A10G": 12}
    assert single(A10G, DEMAND).usd_per_h == pytest.approx(12.12)
    assert single(A100, DEMAND).usd_per_h == pytest.approx(7.34)
    assert best_single([A10G, A100], DEMAND).replicas == {"A100-80GB": 2}


def test_melange_whole_buckets() -> None:
    # One A100 holds three of the four buckets (≤ 0.975 of it); the fourth needs 3 A10G: $6.70/h.
    mix = solve([A10G, A100], DEMAND, slices=1)
    assert mix.replicas == {"A10G": 3, "A100-80GB": 1}
    assert mix.usd_per_h == pytest.approx(6.70)
    on_a10g = [k for k in GRID if mix.type_of(k) == "A10G"]
    assert len(on_a10g) == 1


@pytest.mark.parametrize("slices", [2, 4, 8])
def test_melange_split_buckets(slices: int) -> None:
    # The A100 is 0.125 short; a slice moved to the A10G costs it more than one replica's worth unless the
    # slice is exactly a third of bucket (1, 0): with halves, quarters or eighths, 2 × A10G + 1 × A100.
    mix = solve([A10G, A100], DEMAND, slices=slices)
    assert mix.replicas == {"A10G": 2, "A100-80GB": 1}
    assert mix.usd_per_h == pytest.approx(5.69)
    assert mix.load["A100-80GB"] <= 1 + 1e-9


def test_thirds_find_the_exact_fit() -> None:
    # With thirds, 5 requests/s of bucket (1, 0) is one slice: exactly one A10G, and the A100 exactly full.
    mix = solve([A10G, A100], DEMAND, slices=3)
    assert mix.replicas == {"A10G": 1, "A100-80GB": 1}
    assert mix.usd_per_h == pytest.approx(4.68)


def test_no_demand_no_replicas() -> None:
    mix = solve([A10G, A100], [0.0] * SHAPE_COUNT)
    assert mix.replicas == {}
    assert mix.usd_per_h == 0
    assert mix.type_of(0) is None


def test_json_names_the_shapes() -> None:
    body = solve([A10G, A100], DEMAND, slices=1).to_json()
    assert body["replicas"] == {"A10G": 3, "A100-80GB": 1}
    assert set(body["shapes"]) == {
        "in0-127/out0-63",
        "in0-127/out64-255",
        "in128-511/out0-63",
        "in128-511/out64-255",
    }


# --- properties, on small instances (three shapes with demand, up to three types) ---------------------

ACTIVE = (0, 5, 10)
capacity = st.floats(min_value=0.5, max_value=40, allow_nan=False)
price = st.floats(min_value=0.5, max_value=8, allow_nan=False)
rate = st.floats(min_value=0, max_value=30, allow_nan=False)


@st.composite
def gpu_types(draw: st.DrawFn, count: int) -> list[GpuType]:
    out = []
    for g in range(count):
        cells = [1.0] * SHAPE_COUNT
        for k in ACTIVE:
            cells[k] = draw(capacity)
        out.append(GpuType(f"gpu{g}", draw(price), tuple(cells)))
    return out


@st.composite
def demands(draw: st.DrawFn) -> list[float]:
    demand = [0.0] * SHAPE_COUNT
    for k in ACTIVE:
        demand[k] = draw(rate)
    return demand


def brute_force(types: list[GpuType], demand: list[float], slices: int) -> float:
    """Every way to hand each shape's slices to the types; replicas as ``replicas_for`` counts them."""
    active = [k for k in ACTIVE if demand[k] > 0]
    splits = list(itertools.product(range(slices + 1), repeat=len(types)))
    splits = [s for s in splits if sum(s) == slices]
    best = math.inf
    for choice in itertools.product(splits, repeat=len(active)):
        load = [0.0] * len(types)
        for k, split in zip(active, choice, strict=True):
            for g, n in enumerate(split):
                load[g] += demand[k] * n / slices / types[g].requests_per_s[k]
        best = min(best, sum(t.usd_per_h * replicas_for(x) for t, x in zip(types, load, strict=True)))
    return best if active else 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=3).flatmap(gpu_types), demands(), st.sampled_from([1, 2]))
def test_solver_equals_brute_force(types: list[GpuType], demand: list[float], slices: int) -> None:
    assert solve(types, demand, slices=slices).usd_per_h == pytest.approx(
        brute_force(types, demand, slices), abs=1e-6
    )


@settings(max_examples=60, deadline=None)
@given(gpu_types(3), demands(), st.sampled_from([1, 4, 8]))
def test_a_mix_never_costs_more_than_one_type(types: list[GpuType], demand: list[float], slices: int) -> None:
    mix = solve(types, demand, slices=slices)
    assert mix.usd_per_h <= best_single(types, demand).usd_per_h + 1e-9
    assert_serves(mix, types, demand)


@settings(max_examples=60, deadline=None)
@given(gpu_types(3), demands(), st.sampled_from([1, 4]))
def test_another_type_never_raises_the_optimum(
    types: list[GpuType], demand: list[float], slices: int
) -> None:
    assert (
        solve(types, demand, slices=slices).usd_per_h
        <= solve(types[:2], demand, slices=slices).usd_per_h + 1e-9
    )


def test_a_shape_with_a_tiny_demand_costs_no_more_than_it_needs() -> None:
    # Found by the property above: a third type that serves one shape of a request every 97 days best
    # raised the cheapest answer from 2 to 3 $/h, because the solver's tolerance and the recount's
    # disagreed about a slice that small.
    def rates(shape: int, rate: float) -> tuple[float, ...]:
        return tuple(rate if k == shape else 1.0 for k in range(SHAPE_COUNT))

    types = [
        GpuType("a", 1.0, rates(0, 2.0)),
        GpuType("b", 1.0, rates(5, 2.0)),
        GpuType("c", 1.0, rates(10, 30.0)),
    ]
    for first, second in ((1.0, 2.0), (2.0, 1.0)):
        demand = [0.0] * SHAPE_COUNT
        demand[0], demand[5], demand[10] = first, second, 2.0**-23
        assert solve(types[:2], demand, slices=4).usd_per_h == 2.0
        mix = solve(types, demand, slices=4)
        assert mix.usd_per_h == 2.0
        assert_serves(mix, types, demand)


def assert_serves(mix: Mix, types: list[GpuType], demand: list[float]) -> None:
    """Every request has a type, and no type is loaded past its replicas."""
    for k, rate_k in enumerate(demand):
        if rate_k > 0:
            assert sum(mix.assignment[k].values()) == pytest.approx(1)
    for gpu in types:
        assert mix.replicas.get(gpu.name, 0) >= replicas_for(mix.load.get(gpu.name, 0))
