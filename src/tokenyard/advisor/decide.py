"""The recommendation (pure): replay a workload against every allowed candidate and apply the decision tree.

The tree (../shared/DESIGN.md): work that can wait → batch; real-time volume that clears the measured
breakeven → dedicated or hybrid; a workload that needs an off-catalog model, a latency SLA or isolation →
dedicated serverless; otherwise serverless. "Clears the breakeven" is not a fixed threshold: it is the
replayed cost of the dedicated candidates against the per-token one, on the traffic that was metered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tokenyard.advisor import buying, costs, fleet, purchases
from tokenyard.advisor.catalog import TokenPrices
from tokenyard.advisor.costs import Cost, CostCurve, DedicatedOption, Deferred, LoadProfile, Minutes
from tokenyard.advisor.fleet import Demand, FleetResult
from tokenyard.advisor.mix import GpuType
from tokenyard.advisor.settings import Autoscaling, MixSettings, WorkloadNeeds
from tokenyard.advisor.shapes import CATALOG, MEASURED_ALL, ShapeMeans, build_table, catalog_cells
from tokenyard.advisor.traffic import DAY_S, MINUTE_S, Totals, Traffic
from tokenyard.meter.shapes import SHAPE_COUNT

LOW_CONFIDENCE_DAYS = 7.0  # less than one weekly cycle
HIGH_CONFIDENCE_DAYS = 14.0  # two weekly cycles
_SIMPLER_FIRST = (
    "serverless",
    "dedicated_serverless",
    "dedicated",
    "hybrid",
    "dedicated_autoscaled",
    "mix",
    "mix_per_period",
)


@dataclass(frozen=True, slots=True)
class CurrentSetup:
    """What serves the workload now, from the config: always-on replicas, then a per-token deployment."""

    option: DedicatedOption | None
    replicas: int
    per_token: TokenPrices | None
    per_token_kind: str | None  # serverless | dedicated_serverless

    def describe(self) -> str:
        """How a person names it."""
        parts = [f"{self.replicas} × {self.option.label}"] if self.option and self.replicas else []
        if self.per_token_kind:
            parts.append(self.per_token_kind.replace("_", " "))
        return " + ".join(parts) or "nothing configured"


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload and everything needed to price it: its needs, prices, replica shapes and current setup."""

    name: str
    model: str
    needs: WorkloadNeeds
    serverless: TokenPrices | None
    dedicated_serverless: TokenPrices | None
    batch: TokenPrices | None
    options: tuple[DedicatedOption, ...]
    current: CurrentSetup | None
    utilization_cap: float = 0.6
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    mix: MixSettings = field(default_factory=MixSettings)
    # Per GPU type: committed terms and a spot price where the catalog has public ones.
    purchases: dict[str, tuple[tuple[buying.CommittedPrice, ...], buying.SpotPrice | None]] = field(
        default_factory=dict
    )

    def per_token(self) -> tuple[str, TokenPrices] | None:
        """The per-token deployment for overflow: serverless where allowed, else dedicated-serverless."""
        if self.serverless is not None and self.needs.serverless_allowed:
            return "serverless", self.serverless
        if self.dedicated_serverless is not None:
            return "dedicated_serverless", self.dedicated_serverless
        return None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One architecture the traffic was replayed against."""

    # serverless | dedicated_serverless | dedicated | dedicated_autoscaled | hybrid | mix | mix_per_period
    architecture: str
    label: str
    cost: Cost
    gpu: str | None = None
    fleet: FleetResult | None = None  # a GPU mix: the mix, and the best single type beside it
    purchase: buying.Purchase | None = None  # committed or spot (None: on demand)

    @property
    def key(self) -> str:
        """What must stay the same between evaluations for a recommendation to count as stable."""
        if self.fleet is not None:  # a mix is the same when the same replicas of the same types run
            fixed_mix = self.architecture == "mix"
            return f"{self.architecture}:{self.fleet.mix.describe() if fixed_mix else ''}"
        fixed = self.architecture in ("dedicated", "hybrid")  # an autoscaled count moves with demand
        bought = f":{self.purchase.kind}" if self.purchase is not None else ""
        return f"{self.architecture}:{self.gpu or ''}:{round(self.cost.replicas) if fixed else ''}{bought}"

    def to_json(self, per_month: float) -> dict[str, Any]:
        """The candidate for the advice API."""
        c = self.cost
        return {
            "architecture": self.architecture,
            "label": self.label,
            "gpu": self.gpu,
            "cost_usd": round(c.total_usd, 6),
            "cost_usd_per_month": round(c.total_usd * per_month, 2),
            "dedicated_usd": round(c.dedicated_usd, 6),
            "per_token_usd": round(c.per_token_usd, 6),
            "batch_usd": round(c.deferred_usd, 6),
            "deferrable_on_idle_dedicated": round(c.deferred_on_idle, 4),
            "replicas": round(c.replicas, 3),
            "utilization": None if c.utilization is None else round(c.utilization, 4),
            "mix": None if self.fleet is None else _fleet_json(self.fleet, per_month),
            "purchase": None if self.purchase is None else self.purchase.to_json(),
        }


def _fleet_json(fleet: FleetResult, per_month: float) -> dict[str, Any]:
    """A mix candidate's mix, and the best single type sized the same way beside it."""
    single = fleet.single_cost
    return {
        **fleet.mix.to_json(),
        "periods": fleet.periods or None,
        "best_single": {
            **fleet.single.to_json(),
            "cost_usd_per_month": round(single.total_usd * per_month, 2),
            "utilization": None if single.utilization is None else round(single.utilization, 4),
        },
    }


@dataclass(slots=True)
class Advice:
    """The advisor's answer for one workload over one window."""

    workload: str
    model: str
    window_start: int
    window_minutes: int
    window_basis: str  # how the window was chosen, in words
    history_days: float
    confidence: str  # low | medium | high
    requests: float
    tokens: float
    deferrable_share: float  # of tokens: could have been (or were) async
    candidates: list[Candidate]  # cheapest first
    best: Candidate
    architecture: str  # the recommendation: batch, or the best real-time architecture
    current: Candidate | None
    curve: CostCurve | None
    breakeven_utilization: float | None
    reasons: list[str]
    material: bool = False  # the saving clears the configured thresholds
    change_recommended: bool = False  # ...and has held over enough evaluations (see ``settle``)
    stable_evaluations: int = 0
    traffic: Traffic | None = None  # what was replayed (for the pictures)

    @property
    def window_end(self) -> int:
        """Where the replayed window ends (unix seconds, exclusive)."""
        return self.window_start + MINUTE_S * self.window_minutes

    @property
    def per_month(self) -> float:
        """Factor from the window's cost to a month's."""
        return costs.MINUTES_PER_MONTH / self.window_minutes if self.window_minutes else 0.0

    @property
    def saving_usd_per_month(self) -> float | None:
        """What the best candidate saves against the current setup, per month."""
        if self.current is None:
            return None
        return (self.current.cost.total_usd - self.best.cost.total_usd) * self.per_month

    @property
    def saving_pct(self) -> float | None:
        """The same saving as a share of the current cost."""
        if self.current is None or self.current.cost.total_usd <= 0:
            return None
        return 100 * (1 - self.best.cost.total_usd / self.current.cost.total_usd)


ShapeTotals = Sequence[tuple[float, float, float]]  # per shape: requests, prompt, completion


def _total_load(option: DedicatedOption | None, totals: Totals, shapes: ShapeTotals) -> float:
    """The whole load of these tokens on ``option`` in replica-minutes (load is linear in tokens, and in
    requests per shape for an option with a table)."""
    if option is None:
        return 0.0
    if option.table is not None:
        return option.load_of_shapes(shapes)
    return option.load_of(totals.prompt, totals.cached, totals.completion) / 60


def _shape_sum(*parts: ShapeTotals) -> list[tuple[float, float, float]]:
    """Per-shape totals added shape by shape."""
    return [
        (sum(p[0] for p in row), sum(p[1] for p in row), sum(p[2] for p in row))
        for row in zip(*parts, strict=True)
    ]


def _deferred(
    workload: Workload, series: Totals, option: DedicatedOption | None, shapes: ShapeTotals = ()
) -> Deferred:
    """The deferrable work: priced at batch, else at the per-token real-time price; its load on ``option``."""
    prices = workload.batch
    if prices is None:
        fallback = workload.per_token()
        prices = fallback[1] if fallback else None
    cost_usd = costs.total_cost(prices, series) if prices else 0.0
    return Deferred(_total_load(option, series, shapes), cost_usd)


def _per_token_candidates(workload: Workload, rt: Totals, deferrable: Totals) -> list[Candidate]:
    """All real-time traffic per token: on shared serverless where allowed, on dedicated serverless where
    it has a price (a dedicated-serverless contract can be the cheaper of the two)."""
    batch_usd = _deferred(workload, deferrable, None).cost_usd
    out = []
    for kind, prices in (
        ("serverless", workload.serverless if workload.needs.serverless_allowed else None),
        ("dedicated_serverless", workload.dedicated_serverless),
    ):
        if prices is not None:
            rt_usd = costs.total_cost(prices, rt)
            cost = Cost(total_usd=rt_usd + batch_usd, per_token_usd=rt_usd, deferred_usd=batch_usd)
            out.append(Candidate(kind, kind.replace("_", " "), cost))
    return out


def _dedicated_candidates(
    workload: Workload, option: DedicatedOption, rt: Minutes, deferrable: Totals, shapes: ShapeTotals
) -> tuple[list[Candidate], CostCurve | None, LoadProfile]:
    """Sized for peak, autoscaled and (with a per-token overflow) hybrid, on one replica shape."""
    cap = option.cap(workload.utilization_cap)
    load = rt.load(option)
    per_token = workload.per_token()
    profile = rt.profile(option, per_token[1] if per_token else None, cap)
    deferred = _deferred(workload, deferrable, option, shapes)
    peak_n = max(1, profile.peak_replicas())
    gpu = option.label
    peak = costs.always_on(option, profile, peak_n, deferred)
    out = [Candidate("dedicated", f"dedicated {peak_n} × {gpu}", peak, gpu)]
    if workload.autoscaling.enabled:
        scaled = costs.autoscaled(
            option,
            load,
            cap,
            workload.autoscaling,
            deferred,
            index=rt.series.index,
            minutes=rt.minutes,
        )
        out.append(
            Candidate("dedicated_autoscaled", f"autoscaled ~{scaled.replicas:.1f} × {gpu}", scaled, gpu)
        )
    if per_token is None:
        out += _purchases(workload, option, rt, None, deferred, peak_n)
        return out, None, profile
    # Enough always-on replicas for the peak, or to take all the work on average (deferrable included).
    most = max(peak_n, int((profile.total_load + deferred.load) / (cap * max(1, profile.minutes))) + 1)
    curve, cheapest = costs.hybrid_curve(option, profile, deferred, most=most)
    n = curve.optimum_n
    if n > 0 and cheapest.per_token_usd > 0:
        out.append(
            Candidate("hybrid", f"hybrid {n} × {gpu} + {per_token[0].replace('_', ' ')}", cheapest, gpu)
        )
    out += _purchases(workload, option, rt, per_token, deferred, most)
    return out, curve, profile


def _purchases(
    workload: Workload,
    option: DedicatedOption,
    rt: Minutes,
    per_token: tuple[str, TokenPrices] | None,
    deferred: Deferred,
    most: int,
) -> list[Candidate]:
    """The always-on base bought committed or on spot where the catalog has public terms for the GPU."""
    committed, spot = workload.purchases.get(option.gpu_type, ((), None))
    base = purchases.Base(option, rt, per_token, deferred, most, workload.utilization_cap)
    return [
        Candidate(architecture, label, cost, option.label, purchase=purchase)
        for architecture, label, cost, purchase in purchases.priced(base, committed, spot)
    ]


def _current_candidate(workload: Workload, traffic: Traffic, realtime: Minutes) -> Candidate | None:
    """What the configured setup cost: everything that ran real-time on it, what ran async at batch."""
    current = workload.current
    if current is None:
        return None
    ran_async = traffic.ran_async.totals()
    deferred_usd = costs.total_cost(workload.batch, ran_async) if workload.batch else 0.0
    if current.option is None or current.replicas == 0:
        if current.per_token is None:
            return None
        ran_realtime = traffic.realtime.totals().plus(traffic.eligible.totals())
        rt_usd = costs.total_cost(current.per_token, ran_realtime)
        cost = Cost(rt_usd + deferred_usd, per_token_usd=rt_usd, deferred_usd=deferred_usd)
        return Candidate(current.per_token_kind or "serverless", "current: " + current.describe(), cost)
    both = traffic.must_wait_for()
    rt = realtime if both is realtime.series else Minutes(both, traffic.minutes)
    option = current.option
    profile = rt.profile(option, current.per_token, option.cap(workload.utilization_cap))
    deferred = Deferred(_total_load(option, ran_async, traffic.ran_async.shapes.totals()), deferred_usd)
    cost = costs.always_on(option, profile, current.replicas, deferred)
    architecture = "hybrid" if current.per_token else "dedicated"
    return Candidate(architecture, "current: " + current.describe(), cost, option.label)


def gpu_types(workload: Workload, means: ShapeMeans, cached_share: float) -> list[GpuType]:
    """Every replica shape of the workload as a GPU type with a table: its own (measured or imported), the
    measured envelope's capacity over all shapes, or the catalog's two figures at the cap."""
    out = []
    for option in workload.options:
        table = option.table
        if table is None and option.prompts_included:  # the envelope over all shapes: tokens/s per replica
            cells = {
                k: option.output_tokens_per_s / max(1.0, means.lengths(k)[1]) for k in range(SHAPE_COUNT)
            }
            table = build_table([(MEASURED_ALL, cells)])
        elif table is None:
            cap = option.cap(workload.utilization_cap)
            # The catalog's input figure is for uncached tokens: a prompt-cache hit costs a tenth as much.
            per_input = option.input_tokens_per_s / (1 - cached_share * (1 - option.cached_input_work))
            table = build_table([(CATALOG, catalog_cells(per_input, option.output_tokens_per_s, cap, means))])
        assert table is not None
        out.append(GpuType(option.label, option.replica_usd_per_min * 60, table.requests_per_s))
    return out


def _mix_candidates(
    workload: Workload, traffic: Traffic, deferrable: Totals, deferrable_shapes: ShapeTotals
) -> list[Candidate]:
    """GPU mixes where the workload can run on two or more GPU types (``fleet.py``); the work that could
    wait is priced at the batch price beside them (a mix does not fill its idle time with it)."""
    if not workload.mix.enabled or len(workload.options) < 2:
        return []
    rt = traffic.realtime
    totals = rt.totals()
    means = ShapeMeans.of(rt.shapes.totals())
    cached_share = totals.cached / totals.prompt if totals.prompt else 0.0
    per_token = workload.per_token()
    overflow = None
    if per_token is not None:
        prices = per_token[1]
        overflow = [
            prices.cost_usd(p, p * cached_share, c) for p, c in map(means.lengths, range(SHAPE_COUNT))
        ]
    demand = Demand(rt.index, rt.shapes.columns(rt.index), traffic.minutes, traffic.start_minute, overflow)
    results = fleet.mix_candidates(
        gpu_types(workload, means, cached_share),
        demand,
        slices=workload.mix.slices,
        period_min=workload.mix.period_min,
    )
    deferred_usd = _deferred(workload, deferrable, None, deferrable_shapes).cost_usd
    out = []
    for result in results:
        cost = replace(result.cost, total_usd=result.cost.total_usd + deferred_usd, deferred_usd=deferred_usd)
        out.append(Candidate(result.architecture, result.label, cost, None, result))
    return out


def confidence(history_days: float) -> str:
    """How much to trust a recommendation from this much history: a weekly cycle is the least to see."""
    if history_days < LOW_CONFIDENCE_DAYS:
        return "low"
    return "medium" if history_days < HIGH_CONFIDENCE_DAYS else "high"


def evaluate(workload: Workload, traffic: Traffic, *, now: float) -> Advice:
    """Replay ``traffic`` against every candidate the workload allows; recommend by the decision tree."""
    traffic = _from_first_day(traffic)
    rt, deferrable = traffic.realtime, traffic.deferrable()
    deferrable_shapes = _shape_sum(traffic.eligible.shapes.totals(), traffic.ran_async.shapes.totals())
    minutes = Minutes(rt, traffic.minutes)
    rt_totals = rt.totals()
    chosen_curve: CostCurve | None = None
    candidates = _per_token_candidates(workload, rt_totals, deferrable)
    preferred = workload.per_token()
    # The per-token deployment overflow goes to: what the breakeven and the reasons compare against.
    per_token = next((c for c in candidates if preferred and c.architecture == preferred[0]), None)
    best_dedicated: tuple[float, CostCurve | None, LoadProfile, DedicatedOption] | None = None
    for option in workload.options:
        found, curve, profile = _dedicated_candidates(
            workload, option, minutes, deferrable, deferrable_shapes
        )
        candidates += found
        cheapest = min(c.cost.total_usd for c in found)
        if best_dedicated is None or cheapest < best_dedicated[0]:
            best_dedicated = (cheapest, curve, profile, option)
    candidates += _mix_candidates(workload, traffic, deferrable, deferrable_shapes)
    if not candidates:
        raise ValueError(f"workload {workload.name!r}: no price for any candidate (add it to the catalog)")
    candidates.sort(key=lambda c: (round(c.cost.total_usd, 6), _SIMPLER_FIRST.index(c.architecture)))
    best = candidates[0]
    breakeven = None
    if best_dedicated is not None and per_token is not None:
        chosen_curve = best_dedicated[1]
        breakeven = costs.breakeven_utilization(
            best_dedicated[3], per_token.cost.per_token_usd, best_dedicated[2].total_load
        )
    tokens = rt_totals.tokens + deferrable.tokens
    deferrable_share = deferrable.tokens / tokens if tokens else 0.0
    goes_to_batch = (
        deferrable_share >= 0.5 and workload.batch is not None and best.cost.deferred_on_idle < 0.5
    )
    history = traffic.history_days(now)
    advice = Advice(
        workload=workload.name,
        model=workload.model,
        window_start=traffic.start_minute,
        window_minutes=traffic.minutes,
        window_basis=traffic.basis,
        history_days=history,
        confidence=confidence(history),
        requests=rt_totals.requests + deferrable.requests,
        tokens=tokens,
        deferrable_share=deferrable_share,
        candidates=candidates,
        best=best,
        architecture="batch" if goes_to_batch else best.architecture,
        current=_current_candidate(workload, traffic, minutes),
        curve=chosen_curve,
        breakeven_utilization=breakeven,
        reasons=[],
        traffic=traffic,
    )
    advice.reasons = _reasons(workload, advice, per_token)
    return advice


def _from_first_day(traffic: Traffic) -> Traffic:
    """The window from 00:00 UTC of the day of the first request: replicas are not billed for days before
    the workload existed, and the quiet hours of its first day count (cutting at the first request
    would drop them while every replica's cost stays, so per-token prices would look dearer)."""
    if traffic.first_seen is None:
        return traffic
    first_day = int(traffic.first_seen) // DAY_S * DAY_S
    skip = max(0, (first_day - traffic.start_minute) // MINUTE_S)
    if not skip:
        return traffic
    cut = traffic.sliced(skip, traffic.minutes)
    cut.basis = f"{traffic.basis}, from 00:00 UTC of the day of its first request".lstrip(", ")
    return cut


def settle(
    advice: Advice, previous: dict[str, Any] | None, *, min_pct: float, min_usd: float, required: int
) -> dict[str, Any]:
    """Mark the advice material and stable (or not) given the previous evaluation's state; the new state.

    A change is recommended only when the best candidate saves at least ``min_pct`` % and ``min_usd`` a month
    against the current setup, the same candidate was best in ``required`` evaluations in a row (one that
    flips between evaluations is noise, not advice), and at least a weekly cycle was observed.
    """
    key = advice.best.key
    streak = previous["streak"] + 1 if previous and previous.get("key") == key else 1
    saving, pct = advice.saving_usd_per_month, advice.saving_pct
    advice.material = (
        advice.current is not None
        and advice.current.key != key
        and saving is not None
        and pct is not None
        and saving >= min_usd
        and pct >= min_pct
    )
    advice.stable_evaluations = streak
    advice.change_recommended = advice.material and streak >= required and advice.confidence != "low"
    return {"key": key, "streak": streak}


def _reasons(workload: Workload, advice: Advice, per_token: Candidate | None) -> list[str]:
    """Why: the branches of the decision tree taken, with their numbers."""
    out: list[str] = []
    best = advice.best
    if advice.deferrable_share > 0:
        where = "the batch API" if workload.batch else "real-time prices (no batch price known)"
        share = f"{advice.deferrable_share:.0%} of tokens could wait"
        idle = (
            f"; {best.cost.deferred_on_idle:.0%} of it fits idle dedicated capacity"
            if best.cost.deferred_on_idle
            else ""
        )
        out.append(f"async: {share} → {where}{idle}")
    needs = workload.needs
    if not needs.serverless_allowed:
        why = [
            n
            for n, flag in (
                ("an off-catalog model", needs.off_catalog),
                ("a latency SLA", needs.latency_sla),
                ("data isolation", needs.isolation),
            )
            if flag
        ]
        out.append(f"needs {' and '.join(why)}: shared serverless is ruled out")
    elif workload.serverless is None:
        out.append("no serverless price for this model in the catalog")
    if advice.breakeven_utilization is not None and best.cost.utilization is not None:
        out.append(
            f"dedicated pays off above {advice.breakeven_utilization:.0%} average utilization; "
            f"the real-time traffic keeps {best.cost.replicas:g} replica(s) {best.cost.utilization:.0%} busy"
        )
    elif advice.breakeven_utilization is not None:
        out.append(
            f"dedicated pays off above {advice.breakeven_utilization:.0%} average utilization, capped at "
            f"{workload.utilization_cap:.0%} for the SLA: the real-time volume does not clear it"
        )
    for option in workload.options:
        out.extend(_measured_reasons(option, workload.utilization_cap))
    if not workload.options:
        out.append("no replica capacity for this model in the catalog: dedicated was not priced")
    elif not workload.autoscaling.enabled:
        out.append("autoscaled dedicated was not priced: advisor.autoscaling.enabled is false")
    out.extend(_mix_reasons(advice))
    if best.purchase is not None:
        on_demand = next(
            (
                c
                for c in advice.candidates
                if c.purchase is None and c.gpu == best.gpu and c.architecture == best.architecture
            ),
            None,
        )
        versus = f", {_pct(best, on_demand)} less than on demand ({on_demand.label})" if on_demand else ""
        out.append(f"{best.purchase.label}{versus}. Risk — {best.purchase.risk}")
    if per_token is not None and best is not per_token:
        out.append(f"{best.label} costs {_pct(best, per_token)} less than {per_token.label}")
    if advice.confidence == "low":
        out.append(f"only {advice.history_days:.1f} days of history: observe a full week before acting")
    return out


def _mix_reasons(advice: Advice) -> list[str]:
    """The GPU mixes beside the best single type, with their numbers."""
    out = []
    per_month = advice.per_month
    for c in advice.candidates:
        if c.fleet is None:
            continue
        single = c.fleet.single_cost.total_usd + c.cost.deferred_usd
        saving = 1 - c.cost.total_usd / single if single > 0 else 0.0
        out.append(
            f"{c.label}: ${c.cost.total_usd * per_month:,.0f}/month, {saving:.0%} less than the best single "
            f"type sized the same way ({c.fleet.single.describe()}, ${single * per_month:,.0f}/month)"
        )
    return out


def _measured_reasons(option: DedicatedOption, default_cap: float) -> list[str]:
    """What a capacity measured at the SLA (the envelope) changes, said: it changes N."""
    out = []
    if option.table is not None:
        out.append(f"{option.label} capacity at the SLO by request shape: {option.table.describe()}")
    if option.utilization_cap is not None:
        out.append(
            f"{option.label} capacity is the {option.capacity_source}: the SLA is in the measurement, "
            f"so it runs up to {option.utilization_cap:.0%}, not {default_cap:.0%}"
        )
    if option.prompts_included:  # the figure already pays for the prompts: say why they add nothing
        out.append(
            f"{option.label} load counts completion tokens only: its {option.output_tokens_per_s:,.0f} "
            "output tok/s per replica were measured under the real prompts, whose prefill they pay for"
        )
    return out


def _pct(a: Candidate, b: Candidate) -> str:
    return f"{1 - a.cost.total_usd / b.cost.total_usd:.0%}" if b.cost.total_usd else "—"
