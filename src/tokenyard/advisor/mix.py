"""The cheapest mix of GPU types for a demand by request shape (Mélange's formulation), solved exactly.

Given GPU types (each a replica's $/h and its ``ShapeTable``) and a demand (requests/s per shape), find how
many replicas of each type to run and which shapes each type takes, minimising $/h (Griggs et al., 2024,
"Mélange: Cost Efficient LLM Serving by Exploiting GPU Heterogeneity"):

- every shape's demand is cut into ``slices`` equal slices (1: whole shapes), each assigned to one type
  (binary ``x[slice, type]``);
- a type's load — the sum over its slices of requests/s ÷ the type's requests/s for that shape — fits in its
  whole replicas (integer ``n[type]``);
- minimise ``Σ n[type] × usd_per_h[type]``.

Solved with HiGHS (``highspy``: a maintained MIP solver, in process; ``bench/mix.py`` measured it against
PuLP's CBC). With one type it is ``ceil(Σ demand / capacity)``, no solver needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SLICES = 8  # Mélange's: a shape's demand in 8 slices, so types can share a shape


@dataclass(frozen=True, slots=True)
class GpuType:
    """One way to run a replica of the model: its name (``1×H100-80GB``), $/h and capacity per shape."""

    name: str
    usd_per_h: float  # per replica
    requests_per_s: tuple[float, ...]  # per shape index, > 0 (a ShapeTable's cells)


@dataclass(frozen=True, slots=True)
class Mix:
    """A solution: replicas per type, and which share of each shape's requests each type takes."""

    replicas: dict[str, int]  # type name → whole replicas (types with 0 are left out)
    assignment: tuple[dict[str, float], ...]  # per shape index: type name → share of its requests (sums to 1)
    usd_per_h: float
    load: dict[str, float]  # type name → replicas' worth of work assigned (≤ replicas)

    def type_of(self, shape: int) -> str | None:
        """The type that takes most of shape ``shape``'s requests (None: no demand and no type)."""
        raise NotImplementedError

    def describe(self) -> str:
        """How a person names it: ``3 × 1×A10G + 1 × 1×A100-80GB``."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The mix for the advice API."""
        raise NotImplementedError


def single(gpu: GpuType, demand_per_s: Sequence[float]) -> Mix:
    """Everything on one type: ``ceil(Σ demand / capacity)`` replicas (0 for no demand)."""
    raise NotImplementedError


def best_single(types: Sequence[GpuType], demand_per_s: Sequence[float]) -> Mix:
    """The cheapest single-type answer (ties: the first type)."""
    raise NotImplementedError


def solve(types: Sequence[GpuType], demand_per_s: Sequence[float], *, slices: int = DEFAULT_SLICES) -> Mix:
    """The cheapest mix for ``demand_per_s`` (requests/s per shape index), exactly (HiGHS MIP).

    Never costs more than ``best_single`` (the single-type answers are feasible; the solver is warm-started
    from the best of them); with no demand, no replicas.
    """
    raise NotImplementedError
