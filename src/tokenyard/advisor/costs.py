"""The cost model (pure, no I/O): what one workload's traffic would have cost on each architecture.

All candidates replay the same minutes:

- **per token** (serverless, dedicated serverless): tokens × prices;
- **dedicated, sized for peak**: enough always-on replicas for the busiest minute at the utilization cap;
- **dedicated, autoscaled**: replicas per minute from demand ÷ usable capacity, started ahead by the scale-out
  lead time, kept through the scale-in delay, billed in blocks;
- **hybrid**: N always-on replicas for the base, the overflow per token; N found by search, with the curve.

Only the minutes that had traffic are stored (``traffic.py``), and every per-minute list here is aligned
with a series' ``index``: the work follows the busy minutes, never the window's length or the peak's size.

A replica's work in a minute is its *load*: the fraction of one replica-minute at full capacity the tokens
take (prefill and decode share the GPU, so input and output loads add; a prompt-cache hit costs
``cached_input_work`` of an uncached token), or, for a capacity measured under the real prompts (the
measured envelope: ``prompts_included``), its completion tokens alone. A replica is usable up to
``utilization_cap`` (the SLA's headroom). Work that could wait (the deferrable share) fills idle dedicated
capacity up to the same cap for free, the rest goes to the batch price — or to the real-time per-token
price when there is no batch API.
Idle filling is counted over the whole window, which assumes deadlines (24 h by default) long enough to
move work into the idle hours.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, compress, repeat
from operator import truediv

from tokenyard.advisor.catalog import TokenPrices
from tokenyard.advisor.settings import DAYS_PER_MONTH, Autoscaling
from tokenyard.advisor.shapes import ShapeTable
from tokenyard.advisor.traffic import TokenSeries, Totals

MINUTES_PER_MONTH = DAYS_PER_MONTH * 24 * 60


@dataclass(frozen=True, slots=True)
class DedicatedOption:
    """One way to run the model on dedicated GPUs: a replica's shape, price and capacity."""

    gpu_type: str
    gpus_per_replica: int
    gpu_hour_usd: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    cached_input_work: float = 0.1
    capacity_source: str = "catalog"
    # The share of its capacity a replica may be run at; None: the advisor's utilization_cap. A capacity
    # measured at the SLA (the envelope) already has the SLA's headroom in it: 1.0.
    utilization_cap: float | None = None
    # True: ``output_tokens_per_s`` was measured under the real mix of prompts (the envelope), so it already
    # pays for their prefill: a minute's load is its completion tokens alone, and ``input_tokens_per_s``
    # is not used. False: the catalog's two-figure model, prompts adding load of their own.
    prompts_included: bool = False
    # Capacity at the SLO per request shape (``shapes.py``): when set, a minute's load is its requests per
    # shape times the table's weights, and the SLO is in every cell (``utilization_cap`` 1.0).
    table: ShapeTable | None = None

    def cap(self, default: float) -> float:
        """The utilization this replica may be run at: its own, or ``default`` (the advisor's)."""
        return default if self.utilization_cap is None else self.utilization_cap

    @property
    def label(self) -> str:
        """How a person names it: ``4×H100-80GB``."""
        return f"{self.gpus_per_replica}×{self.gpu_type}"

    @property
    def replica_usd_per_min(self) -> float:
        """What one replica costs per minute, busy or idle."""
        return self.gpus_per_replica * self.gpu_hour_usd / 60

    def load_of_shapes(self, totals: Sequence[tuple[float, float, float]]) -> float:
        """Replica-minutes the requests of these per-shape totals take (a table's option; else their tokens
        on the two-figure model)."""
        if self.table is not None:
            return math.fsum(n * w for (n, _, _), w in zip(totals, self.table.weights(), strict=True))
        prompt = math.fsum(p for _, p, _ in totals)
        completion = math.fsum(c for _, _, c in totals)
        return self.load_of(prompt, 0.0, completion) / 60

    def load_of(self, prompt: float, cached: float, completion: float) -> float:
        """Replica-seconds at full capacity these tokens take."""
        if self.prompts_included:
            return completion / self.output_tokens_per_s
        per_input = 1 / self.input_tokens_per_s
        return (
            (prompt - cached) + cached * self.cached_input_work
        ) * per_input + completion / self.output_tokens_per_s

    def load(self, series: TokenSeries) -> list[float]:
        """Per stored minute: the fraction of one replica-minute at full capacity that the tokens take (with
        a table: that its requests take, shape by shape)."""
        if self.table is not None:
            return series.shapes.weighted(series.index, self.table.weights())
        if self.prompts_included:
            per_minute = 1 / (self.output_tokens_per_s * 60)
            return [o * per_minute for o in series.completion]
        per_input = 1 / (self.input_tokens_per_s * 60)
        per_cached = self.cached_input_work * per_input
        per_output = 1 / (self.output_tokens_per_s * 60)
        return [
            (p - c) * per_input + c * per_cached + o * per_output
            for p, c, o in zip(series.prompt, series.cached, series.completion, strict=True)
        ]


def per_token_costs(prices: TokenPrices, series: TokenSeries) -> list[float]:
    """Per stored minute: the series' tokens at these per-token prices, USD."""
    cached_price = prices.input_per_1m if prices.cached_input_per_1m is None else prices.cached_input_per_1m
    per_input, per_cached, per_output = (
        prices.input_per_1m / 1e6,
        cached_price / 1e6,
        prices.output_per_1m / 1e6,
    )
    return [
        (p - c) * per_input + c * per_cached + o * per_output
        for p, c, o in zip(series.prompt, series.cached, series.completion, strict=True)
    ]


def total_cost(prices: TokenPrices, totals: Totals) -> float:
    """Tokens at these per-token prices, USD (prices are linear: totals suffice)."""
    return prices.cost_usd(totals.prompt, totals.cached, totals.completion)


@dataclass(frozen=True, slots=True)
class Deferred:
    """The work that could wait: its load on a replica and its price off idle time."""

    load: float  # replica-minutes at full capacity
    cost_usd: float  # at the batch price (or the real-time per-token price without a batch API)

    def cost_with_idle(self, idle_load: float) -> tuple[float, float]:
        """(USD, share run on idle dedicated capacity) when ``idle_load`` replica-minutes are free."""
        if self.load <= 0:
            return 0.0, 0.0
        on_idle = min(1.0, max(0.0, idle_load) / self.load)
        return self.cost_usd * (1 - on_idle), on_idle


@dataclass(frozen=True, slots=True)
class Cost:
    """One candidate's cost over the window, and what it is made of."""

    total_usd: float
    dedicated_usd: float = 0.0  # replicas, busy or idle
    per_token_usd: float = 0.0  # real-time tokens at per-token prices (all, or the overflow)
    deferred_usd: float = 0.0  # deferrable work at the batch price
    deferred_on_idle: float = 0.0  # share of the deferrable work run on idle dedicated capacity
    replicas: float = 0.0  # always-on N, peak R, or the autoscaled average
    utilization: float | None = None  # real-time load over provisioned capacity (dedicated only)


class LoadProfile:
    """One workload's real-time load on one replica shape, sorted, to price any N always-on replicas fast.

    For N replicas with usable capacity T = N × cap per minute, the minutes busier than T overflow by
    ``1 - T/load`` of their tokens, so the overflow cost is ``Σ cost - T × Σ cost/load`` over those minutes:
    prefix sums over the minutes sorted by load make each N a binary search. ``load`` holds the busy
    minutes (any order); ``minutes`` is the whole window's length, quiet minutes included.
    """

    __slots__ = (
        "_cost_over",
        "_cost_per_load",
        "_load_above",
        "_sorted",
        "cap",
        "minutes",
        "peak",
        "total_load",
    )

    def __init__(
        self, load: Sequence[float], overflow_cost: Sequence[float] | None, cap: float, *, minutes: int
    ) -> None:
        self.cap = cap
        self.minutes = minutes
        # Busy minutes, busiest first (sorting indices by a key is much faster than sorting pairs).
        # (compress keeps the indices of non-zero loads; loads are never negative.)
        order = sorted(compress(range(len(load)), load), key=load.__getitem__, reverse=True)
        busiest = list(map(load.__getitem__, order))
        costs = (
            list(map(overflow_cost.__getitem__, order)) if overflow_cost is not None else [0.0] * len(order)
        )
        self._sorted = busiest[::-1]  # ascending, for bisect
        self.total_load = math.fsum(busiest)
        self.peak = busiest[0] if busiest else 0.0
        # Suffix sums: index k covers the k busiest minutes.
        self._load_above = [0.0, *accumulate(busiest)]
        self._cost_over = [0.0, *accumulate(costs)]
        self._cost_per_load = [0.0, *accumulate(map(truediv, costs, busiest))]

    def peak_replicas(self) -> int:
        """Replicas needed for the busiest minute at the utilization cap."""
        return math.ceil(self.peak / self.cap - 1e-9) if self.peak > 0 else 0

    def with_replicas(self, n: int) -> tuple[float, float]:
        """(overflow USD, idle replica-minutes up to the cap) with ``n`` always-on replicas."""
        threshold = n * self.cap
        k = len(self._sorted) - bisect_right(self._sorted, threshold)
        overflow_usd = self._cost_over[k] - threshold * self._cost_per_load[k]
        served = self.total_load - (self._load_above[k] - threshold * k)
        return max(0.0, overflow_usd), threshold * self.minutes - served

    def bends(self) -> list[float]:
        """Replica counts (fractional) where the overflow and the idle capacity change slope: a busy minute's
        load over the cap. Between two of them both are straight lines in N."""
        return [load / self.cap for load in set(self._sorted)]


class Minutes:
    """One series' per-minute loads, per-token costs and load profiles, each computed once per evaluation.

    They are the per-minute passes over weeks of minutes that the evaluation's time goes into; the
    candidates and the current setup ask for the same ones.
    """

    __slots__ = ("_loads", "_profiles", "minutes", "series")

    def __init__(self, series: TokenSeries, minutes: int) -> None:
        self.series = series
        self.minutes = minutes  # the window's length: the busy minutes are ``series.index``
        self._loads: dict[DedicatedOption, list[float]] = {}
        self._profiles: dict[tuple[DedicatedOption, TokenPrices | None, float], LoadProfile] = {}

    def load(self, option: DedicatedOption) -> list[float]:
        """The series' load on ``option``, minute by minute."""
        key = replace(option, gpu_hour_usd=0.0)  # the price does not change the load: bought otherwise, same
        if key not in self._loads:
            self._loads[key] = option.load(self.series)
        return self._loads[key]

    def profile(self, option: DedicatedOption, overflow: TokenPrices | None, cap: float) -> LoadProfile:
        """The sorted load profile on ``option`` with overflow at ``overflow`` prices."""
        key = (replace(option, gpu_hour_usd=0.0), overflow, cap)
        if key not in self._profiles:
            overflow_usd = per_token_costs(overflow, self.series) if overflow else None
            self._profiles[key] = LoadProfile(self.load(option), overflow_usd, cap, minutes=self.minutes)
        return self._profiles[key]


def always_on(option: DedicatedOption, profile: LoadProfile, n: int, deferred: Deferred) -> Cost:
    """``n`` always-on replicas; what exceeds them goes at the profile's per-token prices.

    A profile without per-token prices (a dedicated-only setup) prices the excess at 0: it queued.
    """
    overflow_usd, idle = profile.with_replicas(n)
    dedicated_usd = n * option.replica_usd_per_min * profile.minutes
    deferred_usd, on_idle = deferred.cost_with_idle(idle)
    capacity = n * profile.minutes
    return Cost(
        total_usd=dedicated_usd + overflow_usd + deferred_usd,
        dedicated_usd=dedicated_usd,
        per_token_usd=overflow_usd,
        deferred_usd=deferred_usd,
        deferred_on_idle=on_idle,
        replicas=n,
        # Busy share of the replicas' full capacity: what they served, the cap's headroom included.
        utilization=(n * profile.cap * profile.minutes - idle) / capacity if capacity else None,
    )


def autoscaled(
    option: DedicatedOption,
    load: Sequence[float],
    cap: float,
    scaling: Autoscaling,
    deferred: Deferred,
    *,
    index: Sequence[int],
    minutes: int,
) -> Cost:
    """Replicas that follow demand: started ``scale_out_lead_min`` early, kept ``scale_in_delay_min`` late.

    ``load`` is per busy minute, at the window indices ``index``; the window is ``minutes`` long. Quiet
    minutes far from any busy one run ``min_replicas``, so only the spans around busy minutes are replayed.
    """
    floor = scaling.min_replicas
    # Replicas each busy minute needs: ceil(x / cap), a hair under so that 1.2 / 0.6 is 2, not 3, and at
    # least the floor; written with map to stay in C.
    needed = list(map(math.ceil, map(float.__sub__, map((1 / cap).__mul__, load), repeat(1e-9))))
    if floor:
        needed = list(map(max, needed, repeat(floor)))
    provisioned_extra, billed_extra = _extra_replica_minutes(
        index,
        needed,
        floor,
        minutes,
        behind=scaling.scale_in_delay_min,
        ahead=scaling.scale_out_lead_min,
        block=scaling.billing_granularity_min,
    )
    provisioned = floor * minutes + provisioned_extra
    billed = floor * minutes + billed_extra
    total_load = math.fsum(load)
    # Every minute has at least its load's worth of replicas, so the idle capacity is a difference of sums.
    idle = max(0.0, cap * provisioned - total_load)
    dedicated_usd = billed * option.replica_usd_per_min
    deferred_usd, on_idle = deferred.cost_with_idle(idle)
    return Cost(
        total_usd=dedicated_usd + deferred_usd,
        dedicated_usd=dedicated_usd,
        deferred_usd=deferred_usd,
        deferred_on_idle=on_idle,
        replicas=billed / minutes if minutes else 0.0,
        utilization=total_load / billed if billed else None,
    )


def _extra_replica_minutes(
    index: Sequence[int],
    needed: Sequence[int],
    floor: int,
    minutes: int,
    *,
    behind: int,
    ahead: int,
    block: int,
) -> tuple[int, int]:
    """(replica-minutes provisioned above the floor, replica-minutes billed above it) over the window.

    ``needed`` is the replicas each busy minute needs, at least ``floor``. A busy minute i keeps them from
    ``i - ahead`` to ``i + behind``; the window's billing blocks start at its first minute. Busy minutes
    whose reach shares a block form one span, replayed minute by minute; the blocks between spans bill
    only the floor, so they add nothing here.
    """

    def first_block(i: int) -> int:  # where minute i's reach starts, down to its billing block
        return max(0, i - ahead) // block * block

    def past_block(i: int) -> int:  # where it ends, up to its billing block (or the window's end)
        return min(minutes, -(-(i + behind + 1) // block) * block)

    busy = len(index)
    if not busy:
        return 0, 0
    # Two busy minutes closer than the reach are always in one span: only wider gaps can split one, and
    # finding them stays in C (30 busy days are 43,200 minutes of one span).
    splits = []
    if index[-1] - index[0] + 1 != busy:  # not one unbroken run of busy minutes
        gaps = map(int.__sub__, index[1:], index)
        wide = compress(range(1, busy), map(int.__lt__, repeat(ahead + behind), gaps))
        splits = [k for k in wide if first_block(index[k]) >= past_block(index[k - 1])]
    provisioned = billed = 0
    for k, end in zip([0, *splits], [*splits, busy], strict=True):
        lo, hi = first_block(index[k]), past_block(index[end - 1])
        if end - k == hi - lo:  # every minute of the span is busy (the usual case): no gaps to fill
            values = list(needed[k:end])
        else:
            at = dict(zip(index[k:end], needed[k:end], strict=True))
            values = list(map(at.get, range(lo, hi), repeat(floor)))
        kept = _window_max(values, behind=behind, ahead=ahead)
        in_span = sum(kept)
        at_floor = floor * (hi - lo)
        provisioned += in_span - at_floor
        billed += (in_span if block == 1 else sum(_billed_blocks(kept, block))) - at_floor
    return provisioned, billed


def _billed_blocks(provisioned: Sequence[int], block: int) -> list[int]:
    """Replica-minutes billed when a replica's time is billed in whole blocks of ``block`` minutes."""
    return [
        max(provisioned[i : i + block]) * len(provisioned[i : i + block])
        for i in range(0, len(provisioned), block)
    ]


def _window_max(values: Sequence[int], *, behind: int, ahead: int) -> list[int]:
    """For each i, the largest of ``values[i - behind : i + ahead + 1]`` (values >= 0).

    By doubling: after the pass with shift k each entry is the maximum of the 2k values from it on, so a
    window of any width is the maximum of two overlapping power-of-two windows. Every pass is one
    ``map(max, ...)``, which keeps the per-minute work in C (30 days × 20 models is 864,000 minutes).
    """
    n = len(values)
    width = behind + ahead + 1
    if width == 1 or n == 0 or max(values) == min(values):
        return list(values)  # a steady count stays steady
    padded = [0] * behind + list(values) + [0] * ahead
    span = 1
    while span * 2 <= width:
        padded = [*map(max, padded, padded[span:]), *padded[len(padded) - span :]]
        span *= 2
    # padded[i] is now the maximum of the `span` values from i on; cover the window with two such spans.
    return list(map(max, padded[:n], padded[width - span : width - span + n]))


DENSE_CURVE_MAX_N = 1000  # up to this many replicas every N is priced; beyond, only where the curve bends


@dataclass(frozen=True, slots=True)
class CostCurve:
    """Cost over the window against the number of always-on replicas (hybrid), for one replica shape."""

    option: DedicatedOption
    # (N, USD) from N = 0 to enough for the peak: every N, or (``every_n`` false) the N where the curve
    # bends, with straight lines between them.
    points: tuple[tuple[int, float], ...]
    optimum_n: int
    breakeven_n: float | None  # the most replicas that still cost no more than none at all
    every_n: bool = True


def curve_replicas(profile: LoadProfile, deferred: Deferred, *, most: int) -> list[int]:
    """The replica counts to price for the hybrid curve from 0 to ``most``: every one, while there are few.

    Beyond ``DENSE_CURVE_MAX_N`` (a peak of thousands of replicas) walking every N would take as long as
    the peak is large. The cost is a straight line in N between the bends of the overflow and idle
    capacity (``LoadProfile.bends``) and the point where the idle capacity takes all the deferrable work,
    so the whole numbers either side of each bend are enough: the cheapest N is one of them, and every
    other N is on the straight line between its neighbours.
    """
    if most <= DENSE_CURVE_MAX_N:
        return list(range(most + 1))
    ns = {0, most}
    for bend in profile.bends():
        ns.update((min(most, math.floor(bend)), min(most, math.ceil(bend))))
    if deferred.load > 0:  # the first N whose idle capacity takes all the deferrable work
        lo, hi = 0, most
        while lo < hi:
            mid = (lo + hi) // 2
            if profile.with_replicas(mid)[1] >= deferred.load:
                hi = mid
            else:
                lo = mid + 1
        ns.update((max(0, lo - 1), lo))
    return sorted(ns)


def hybrid_curve(
    option: DedicatedOption, profile: LoadProfile, deferred: Deferred, *, most: int
) -> tuple[CostCurve, Cost]:
    """N from 0 to ``most`` always-on replicas with per-token overflow: the curve, the cheapest N's cost."""
    ns = curve_replicas(profile, deferred, most=most)
    costs = [always_on(option, profile, n, deferred) for n in ns]
    points = tuple((n, cost.total_usd) for n, cost in zip(ns, costs, strict=True))
    best = min(range(len(costs)), key=lambda k: (costs[k].total_usd, ns[k]))
    curve = CostCurve(option, points, ns[best], _breakeven(points), every_n=len(ns) == most + 1)
    return curve, costs[best]


def _breakeven(points: Sequence[tuple[int, float]]) -> float | None:
    """Where the curve last crosses the cost of N = 0 going up (interpolated); None if only N = 0 pays.

    The curve need not be convex (whole replicas, idle capacity filled with deferrable work), so this is
    the last point at or under N = 0's cost, moved towards the next one by linear interpolation (exact
    for a curve priced only where it bends: it is straight in between).
    """
    base = points[0][1]
    i = max(i for i, (_, cost) in enumerate(points) if cost <= base)
    if i + 1 < len(points):
        (n0, c0), (n1, c1) = points[i], points[i + 1]
        crossing = n0 + (base - c0) / (c1 - c0) * (n1 - n0)
    else:
        crossing = float(points[i][0])
    return crossing if crossing > 0 else None


def breakeven_utilization(
    option: DedicatedOption, per_token_cost_usd: float, total_load: float
) -> float | None:
    """The average utilization at which a replica costs what the same tokens cost per token.

    ``per_token_cost_usd / total_load`` is what per-token pricing charges for one replica-minute of work
    at full capacity; a replica pays off when it is busy at least this share of its minutes.
    """
    if total_load <= 0 or per_token_cost_usd <= 0:
        return None
    return option.replica_usd_per_min / (per_token_cost_usd / total_load)
