"""GPU mixes over a window (pure): the cheapest mix of types, replayed minute by minute with what tokenyard
adds around it — per-token overflow for the peaks, and a mix per period of the week.

Two candidates, each beside the best single type sized the same way:

- ``mix``: one always-on mix plus per-token overflow. Sized for the per-shape demand at several levels (each
  shape's busy-minute demand at quantiles ``SIZING_QUANTILES``), each sizing replayed on every busy minute:
  the requests a type cannot take in a minute (its load over its replicas, a share of what it was assigned)
  go per token at their shape's price; the cheapest sizing wins. Without a per-token option nothing may
  overflow: sized for the busiest minute of every shape.
- ``mix_per_period``: a mix per period of the week (``period_min`` long, from Monday 00:00 UTC), sized for
  that period's busiest minute of every shape, running only in periods that had traffic (an autoscaler
  with a floor of 0, changing at period boundaries).

Demand is per busy minute and shape (``ShapeCounts.columns``); a minute's work on a type is its requests
times the type's replica-minutes per request. Deferrable work is not placed here (the caller prices it at
the batch price).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenyard.advisor.costs import Cost
from tokenyard.advisor.mix import GpuType, Mix, best_single, solve
from tokenyard.advisor.traffic import MINUTE_S

SIZING_QUANTILES = (0.5, 0.75, 0.9, 0.99, 1.0)
WEEK_MIN = 7 * 24 * 60
_MONDAY_OFFSET_MIN = 3 * 24 * 60  # the unix epoch was a Thursday


@dataclass(frozen=True, slots=True)
class FleetResult:
    """One mix candidate: its cost over the window, the mix, and the best single type sized the same way."""

    architecture: str  # mix | mix_per_period
    label: str
    cost: Cost
    mix: Mix  # per period: the busiest period's mix
    single: Mix
    single_cost: Cost
    periods: int = 0  # mix_per_period: periods of the week with traffic


@dataclass(frozen=True, slots=True)
class Demand:
    """A workload's real-time requests per busy minute and shape, and what overflow costs per request."""

    index: Sequence[int]  # busy minutes (window indices, ascending)
    columns: Sequence[Sequence[float]]  # per shape: requests at each busy minute
    minutes: int  # the window's length
    start_minute: int  # unix seconds of the window's first minute
    overflow_usd_per_request: Sequence[float] | None  # per shape; None: no per-token option


def mix_candidates(
    types: Sequence[GpuType], demand: Demand, *, slices: int, period_min: int
) -> list[FleetResult]:
    """The ``mix`` and ``mix_per_period`` candidates (none with fewer than two types or no demand)."""
    if len(types) < 2 or not demand.index:
        return []
    return [
        always_on_mix(types, demand, slices=slices),
        per_period_mix(types, demand, slices=slices, period_min=period_min),
    ]


def always_on_mix(types: Sequence[GpuType], demand: Demand, *, slices: int) -> FleetResult:
    """One always-on mix plus per-token overflow, at the cheapest of the sizings tried."""
    import numpy as np

    quantiles = SIZING_QUANTILES if demand.overflow_usd_per_request is not None else (1.0,)
    matrix = np.asarray(demand.columns, dtype=float)  # shapes × busy minutes
    ordered = np.sort(matrix, axis=1)
    busy = matrix.shape[1]
    best: tuple[Cost, Mix, Cost, Mix] | None = None
    tried: dict[tuple[float, ...], tuple[Cost, Mix, Cost, Mix]] = {}
    for q in quantiles:
        rank = min(busy - 1, max(0, math.ceil(q * busy) - 1))  # nearest rank; 1.0: the busiest minute
        sizing = tuple(float(v) / MINUTE_S for v in ordered[:, rank])
        if sizing not in tried:
            mix = solve(types, sizing, slices=slices)
            single = best_single(types, sizing)
            tried[sizing] = (
                _replay(types, mix, demand, matrix),
                mix,
                _replay(types, single, demand, matrix),
                single,
            )
        if best is None or tried[sizing][0].total_usd < best[0].total_usd:
            best = tried[sizing]
    assert best is not None
    cost, mix, single_cost, single = best
    overflow = " + per-token overflow" if cost.per_token_usd > 0 else ""
    return FleetResult("mix", f"mix {mix.describe()}{overflow}", cost, mix, single, single_cost)


def _replay(types: Sequence[GpuType], mix: Mix, demand: Demand, matrix: Any) -> Cost:
    """``mix`` always on over the window; per busy minute, what a type cannot take goes per token."""
    import numpy as np

    overflow_usd = served = 0.0
    prices = demand.overflow_usd_per_request
    for gpu in types:
        replicas = mix.replicas.get(gpu.name, 0)
        shares = np.array([mix.assignment[k].get(gpu.name, 0.0) for k in range(len(demand.columns))])
        if not shares.any():
            continue
        work = (shares / (MINUTE_S * np.asarray(gpu.requests_per_s[: len(shares)]))) @ matrix
        over = work > replicas
        served += float(np.minimum(work, replicas).sum())
        if prices is not None and over.any():
            usd = (shares * np.asarray(prices)) @ matrix[:, over]
            overflow_usd += float((usd * (1 - replicas / work[over])).sum())
    provisioned = mix.replica_count * demand.minutes
    dedicated_usd = mix.usd_per_h * demand.minutes / 60
    return Cost(
        total_usd=dedicated_usd + overflow_usd,
        dedicated_usd=dedicated_usd,
        per_token_usd=overflow_usd,
        replicas=mix.replica_count,
        utilization=served / provisioned if provisioned else None,
    )


def per_period_mix(types: Sequence[GpuType], demand: Demand, *, slices: int, period_min: int) -> FleetResult:
    """A mix per period of the week, sized for its busiest minute of every shape, run where it had traffic."""
    import numpy as np

    week_periods = max(1, WEEK_MIN // period_min)
    first = demand.start_minute // MINUTE_S + _MONDAY_OFFSET_MIN
    absolute = (first + np.asarray(demand.index, dtype=np.int64)) // period_min  # each busy minute's period
    matrix = np.asarray(demand.columns, dtype=float)
    solved: dict[tuple[float, ...], tuple[Mix, Mix]] = {}
    mix_usd = single_usd = replica_min = single_replica_min = 0.0
    busiest: tuple[Mix, Mix] | None = None
    periods = absolute % week_periods
    for period in np.unique(periods):
        inside = periods == period
        # Every occurrence of this period of the week in the window that had traffic runs its mix.
        hours = len(np.unique(absolute[inside])) * period_min / 60
        sizing = tuple(float(v) / MINUTE_S for v in matrix[:, inside].max(axis=1))
        if sizing not in solved:
            solved[sizing] = (solve(types, sizing, slices=slices), best_single(types, sizing))
        mix, single = solved[sizing]
        mix_usd += mix.usd_per_h * hours
        single_usd += single.usd_per_h * hours
        replica_min += mix.replica_count * hours * 60
        single_replica_min += single.replica_count * hours * 60
        if busiest is None or mix.usd_per_h > busiest[0].usd_per_h:
            busiest = (mix, single)
    assert busiest is not None
    work = _work(types, busiest[0], demand)
    cost = Cost(
        mix_usd,
        dedicated_usd=mix_usd,
        replicas=replica_min / demand.minutes,
        # Approximate: the window's requests placed as the busiest period's mix places them.
        utilization=work / replica_min if replica_min else None,
    )
    single_cost = Cost(single_usd, dedicated_usd=single_usd, replicas=single_replica_min / demand.minutes)
    label = f"mix per {period_min // 60} h of the week, up to {busiest[0].describe()}"
    return FleetResult(
        "mix_per_period", label, cost, busiest[0], busiest[1], single_cost, len(np.unique(periods))
    )


def _work(types: Sequence[GpuType], mix: Mix, demand: Demand) -> float:
    """Replica-minutes the window's requests take on the types ``mix`` assigns them to."""
    total = 0.0
    for k, column in enumerate(demand.columns):
        requests = math.fsum(column)
        for gpu in types:
            share = mix.assignment[k].get(gpu.name, 0.0)
            total += requests * share / (MINUTE_S * gpu.requests_per_s[k])
    return total
