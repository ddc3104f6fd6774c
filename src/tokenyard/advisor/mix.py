"""The cheapest mix of GPU types for a demand by request shape (Mélange's formulation), solved exactly.

Given GPU types (each a replica's $/h and its requests/s per shape at the SLO) and a demand (requests/s per
shape), find how many replicas of each type to run and which shapes each type takes, minimising $/h (Griggs
et al., 2024, "Mélange: Cost Efficient LLM Serving by Exploiting GPU Heterogeneity"):

- every shape's demand is cut into ``slices`` equal slices (1: whole shapes), each served by one type;
- a type's load — the sum over its slices of requests/s ÷ the type's requests/s for that shape — fits in its
  whole replicas;
- minimise ``Σ replicas[type] × usd_per_h[type]``.

Mélange writes one binary per slice and type; slices of one shape are interchangeable, so here the variable
is how many of a shape's slices each type takes (an integer 0..slices): the same optimum, without the
symmetry that makes the binary model slow. Solved with HiGHS (``highspy``: a maintained MIP solver, in
process, measured against PuLP's CBC in ``bench/mix.py``) to a zero gap; replicas are then recomputed
from the assignment (``ceil`` of each type's load), so a solver tolerance never shows as a fractional
replica. With one type there is nothing to choose: ``ceil(Σ demand / capacity)``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenyard.meter.shapes import SHAPE_COUNT, SHAPES, shape_label

if TYPE_CHECKING:
    import highspy

DEFAULT_SLICES = 8  # Mélange's: a shape's demand in 8 slices, so types can share a shape
# A load this far over a whole number of replicas is that number: a millionth of a replica's capacity is
# noise to a plan. The solver works to ``_SOLVER_TOLERANCE``, a thousand times stricter, because its
# tolerance applies to rows it has scaled: on a shape with a tiny demand (a request a month) it accepted a
# load 4e-9 over a replica's, which a recount as strict as the solver then bought a whole replica for.
_EPS = 1e-6
_SOLVER_TOLERANCE = 1e-9
SOLVE_TIME_LIMIT_S = 5.0  # far above what these models take (bench/mix.py); a guard, not a budget


@dataclass(frozen=True, slots=True)
class GpuType:
    """One way to run a replica of the model: its name (``1×H100-80GB``), $/h and capacity per shape."""

    name: str
    usd_per_h: float  # per replica
    requests_per_s: tuple[float, ...]  # per shape, > 0 (a ShapeTable's cells)


@dataclass(frozen=True, slots=True)
class Mix:
    """A solution: replicas per type, and which share of each shape's requests each type takes."""

    replicas: dict[str, int]  # type name → whole replicas (types with none are left out)
    assignment: tuple[dict[str, float], ...]  # per shape: type name → share of its requests (sums to 1)
    usd_per_h: float
    load: dict[str, float]  # type name → replicas' worth of work assigned (≤ its replicas)

    def type_of(self, shape: int) -> str | None:
        """The type that takes most of shape ``shape``'s requests (None: the shape has no demand)."""
        shares = self.assignment[shape]
        return max(shares, key=lambda name: (shares[name], name)) if shares else None

    @property
    def replica_count(self) -> int:
        """Replicas of every type."""
        return sum(self.replicas.values())

    def describe(self) -> str:
        """How a person names it: ``3 × 1×A10G + 1 × 1×A100-80GB``."""
        return " + ".join(f"{n} × {name}" for name, n in self.replicas.items()) or "no replicas"

    def to_json(self) -> dict[str, Any]:
        """The mix for the advice API: replicas, $/h, and which shapes each type takes."""
        return {
            "replicas": dict(self.replicas),
            "usd_per_h": round(self.usd_per_h, 6),
            "load": {name: round(load, 4) for name, load in self.load.items()},
            "shapes": {
                shape_label(SHAPES[k]): {name: round(share, 4) for name, share in shares.items()}
                for k, shares in enumerate(self.assignment)
                if shares and k < SHAPE_COUNT
            },
        }


def _mix(types: Sequence[GpuType], demand: Sequence[float], taken: Sequence[Sequence[float]]) -> Mix:
    """The mix where type ``g`` takes share ``taken[shape][g]`` of each shape's demand."""
    load = [0.0] * len(types)
    assignment: list[dict[str, float]] = []
    for k, rate in enumerate(demand):
        shares = {}
        for g, gpu in enumerate(types):
            share = taken[k][g]
            if rate > 0 and share > 0:
                shares[gpu.name] = share
                load[g] += rate * share / gpu.requests_per_s[k]
        assignment.append(shares)
    replicas = {gpu.name: replicas_for(load[g]) for g, gpu in enumerate(types) if load[g] > 0}
    usd = sum(gpu.usd_per_h * replicas.get(gpu.name, 0) for gpu in types)
    loads = {gpu.name: load[g] for g, gpu in enumerate(types) if load[g] > 0}
    return Mix(replicas, tuple(assignment), usd, loads)


def replicas_for(load: float) -> int:
    """The replicas a type needs for ``load`` (in replicas' worth of capacity): none for none, at least one
    for any, and a load within ``_EPS`` over a whole number is that number."""
    return max(1, math.ceil(load - _EPS)) if load > 0 else 0


def single(gpu: GpuType, demand_per_s: Sequence[float]) -> Mix:
    """Everything on one type: ``ceil(Σ demand / capacity)`` replicas (none for no demand)."""
    return _mix([gpu], demand_per_s, [[1.0]] * len(demand_per_s))


def best_single(types: Sequence[GpuType], demand_per_s: Sequence[float]) -> Mix:
    """The cheapest single-type answer (ties: the first type)."""
    if not types:
        raise ValueError("no GPU type to run the model on")
    return min((single(gpu, demand_per_s) for gpu in types), key=lambda mix: mix.usd_per_h)


def solve(types: Sequence[GpuType], demand_per_s: Sequence[float], *, slices: int = DEFAULT_SLICES) -> Mix:
    """The cheapest mix for ``demand_per_s`` (requests/s per shape), exactly (a HiGHS MIP).

    Never costs more than ``best_single`` (every single-type answer is a feasible assignment, and the best
    of them is kept should the solver stop short); with no demand, no replicas.
    """
    if slices < 1:
        raise ValueError("slices must be at least 1")
    fallback = best_single(types, demand_per_s)
    shapes = [k for k, rate in enumerate(demand_per_s) if rate > 0]
    if (
        len(types) == 1
        or not shapes
        or fallback.usd_per_h <= _lower_bound(types, demand_per_s, shapes) + 1e-9
    ):
        return fallback  # nothing to choose, or no mix can be cheaper: no need to ask the solver
    counts = _solve_counts(types, demand_per_s, shapes, slices)
    if counts is None:
        return fallback
    taken = [[0.0] * len(types) for _ in demand_per_s]
    for k, row in zip(shapes, counts, strict=True):
        taken[k] = [c / slices for c in row]
    found = _mix(types, demand_per_s, taken)
    return found if found.usd_per_h <= fallback.usd_per_h + 1e-9 else fallback


def _lower_bound(types: Sequence[GpuType], demand: Sequence[float], shapes: Sequence[int]) -> float:
    """What any mix costs at least: every request on the type that serves it most cheaply, in fractional
    replicas — and at least one replica of the cheapest type."""
    cheapest = sum(demand[k] * min(gpu.usd_per_h / gpu.requests_per_s[k] for gpu in types) for k in shapes)
    return max(cheapest, min(gpu.usd_per_h for gpu in types))


def _solve_counts(
    types: Sequence[GpuType], demand: Sequence[float], shapes: Sequence[int], slices: int
) -> list[list[int]] | None:
    """Per shape with demand, how many of its slices each type takes (None: no solution found in time).

    Columns: ``y[shape, type]`` (integer, 0..slices) then ``n[type]`` (integer replicas). Rows: each shape's
    slices all served (``Σ_type y = slices``); each type's load within its replicas
    (``Σ_shape y × slice rate / capacity - n ≤ 0``); and a type that takes any slice has a replica
    (``Σ_shape y - shapes × slices × n ≤ 0``), as ``replicas_for`` counts it, however small the slice's
    load.
    """
    import numpy as np

    highs = _highs()
    inf = highspy_inf()
    n_types, n_y = len(types), len(shapes) * len(types)
    n_cols = n_y + n_types
    lower = np.zeros(n_cols)
    upper = np.concatenate([np.full(n_y, float(slices)), np.full(n_types, inf)])
    cost = np.concatenate([np.zeros(n_y), np.array([gpu.usd_per_h for gpu in types])])
    highs.addVars(n_cols, lower, upper)
    columns = np.arange(n_cols, dtype=np.int32)
    highs.changeColsCost(n_cols, columns, cost)
    integer = _integer_type()
    highs.changeColsIntegrality(n_cols, columns, np.array([integer] * n_cols))
    for s in range(len(shapes)):
        row = np.arange(s * n_types, (s + 1) * n_types, dtype=np.int32)
        highs.addRow(float(slices), float(slices), n_types, row, np.ones(n_types))
    for g, gpu in enumerate(types):
        index = [s * n_types + g for s in range(len(shapes))] + [n_y + g]
        values = [demand[k] / slices / gpu.requests_per_s[k] for k in shapes] + [-1.0]
        highs.addRow(-inf, 0.0, len(index), np.array(index, dtype=np.int32), np.array(values))
        # Any slice at all on this type: a replica (one row a type, Σ y ≤ all its slices × n).
        ones = [1.0] * len(shapes) + [-float(slices * len(shapes))]
        highs.addRow(-inf, 0.0, len(index), np.array(index, dtype=np.int32), np.array(ones))
    highs.run()
    solution = highs.getSolution()
    if not solution.value_valid:
        return None
    values = solution.col_value
    return [[round(values[s * n_types + g]) for g in range(n_types)] for s in range(len(shapes))]


def _highs() -> highspy.Highs:
    """A silent HiGHS instance for one model."""
    import highspy

    _banner_shown()
    highs = highspy.Highs()  # type: ignore[no-untyped-call]
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("mip_rel_gap", 0.0)
    # Its default tolerances (1e-6) accept a load of 1.000001 in one replica; the replicas are recounted
    # from the assignment with ``_EPS``, so the solver must be stricter, or its optimum is not one.
    highs.setOptionValue("mip_feasibility_tolerance", _SOLVER_TOLERANCE)
    highs.setOptionValue("primal_feasibility_tolerance", _SOLVER_TOLERANCE)
    highs.setOptionValue("time_limit", SOLVE_TIME_LIMIT_S)
    highs.setOptionValue("threads", 1)
    return highs


def highspy_inf() -> float:
    """HiGHS's infinity."""
    import highspy

    return float(highspy.kHighsInf)


def _integer_type() -> Any:
    import highspy

    return highspy.HighsVarType.kInteger


@functools.cache
def _banner_shown() -> None:
    """HiGHS prints a banner to the process's standard output (its C++ side, file descriptor 1) when the
    first instance is made, whatever the options: make that first one with descriptor 1 on /dev/null, so
    ``tokenyard advise --json`` stays JSON."""
    import highspy

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
