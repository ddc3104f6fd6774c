"""The always-on base of a dedicated candidate bought committed or on spot (pure): the replicas cheapest at
that price, with the per-token overflow where there is one, and what it costs over the window
(``buying.py`` holds the terms and the risk in words)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tokenyard.advisor import buying, costs
from tokenyard.advisor.catalog import TokenPrices
from tokenyard.advisor.costs import Cost, DedicatedOption, Deferred, Minutes

Priced = tuple[str, str, Cost, buying.Purchase]  # architecture, label, cost, how it is bought


@dataclass(frozen=True, slots=True)
class Base:
    """What sizing the always-on replicas of one replica shape needs."""

    option: DedicatedOption  # at its on-demand price
    minutes: Minutes  # the real-time series the candidate serves
    per_token: tuple[str, TokenPrices] | None  # where the overflow goes (None: nowhere, size for the peak)
    deferred: Deferred
    most: int  # the most always-on replicas worth pricing
    utilization_cap: float

    def cheapest(self, option: DedicatedOption, series: Minutes, deferred: Deferred) -> Cost:
        """The cheapest always-on count of ``option`` over ``series``."""
        cap = option.cap(self.utilization_cap)
        profile = series.profile(option, self.per_token[1] if self.per_token else None, cap)
        if self.per_token is None:
            return costs.always_on(option, profile, max(1, profile.peak_replicas()), deferred)
        most = max(self.most, profile.peak_replicas())
        return costs.hybrid_curve(option, profile, deferred, most=most)[1]

    def label(self, replicas: int, how: str, cost: Cost) -> tuple[str, str]:
        """(architecture, label) of the candidate."""
        overflow = cost.per_token_usd > 0
        architecture = "hybrid" if overflow else "dedicated"
        tail = f" + {self.per_token[0].replace('_', ' ')}" if self.per_token and overflow else ""
        return architecture, f"{architecture} {replicas} × {self.option.label} {how}{tail}"


def priced(
    base: Base, committed: Sequence[buying.CommittedPrice], spot: buying.SpotPrice | None
) -> list[Priced]:
    """The base bought each way the catalog has public terms for (committed terms, then spot)."""
    out = [_committed(base, term) for term in committed]
    if spot is not None:
        out.append(_spot(base, spot))
    return out


def _committed(base: Base, term: buying.CommittedPrice) -> Priced:
    """Committed term block by term block, each with the replicas cheapest for its own minutes."""
    option = replace(base.option, gpu_hour_usd=term.gpu_hour_usd)
    rt = base.minutes
    blocks = buying.term_blocks(rt.minutes, term.term_days)
    parts: list[Cost] = []
    for start, end in blocks:
        share = (end - start) / rt.minutes if rt.minutes else 0.0
        series = rt if len(blocks) == 1 else Minutes(rt.series.between(start, end), end - start)
        deferred = Deferred(base.deferred.load * share, base.deferred.cost_usd * share)
        parts.append(base.cheapest(option, series, deferred))
    counts = [round(part.replicas) for part in parts]
    cost = Cost(
        total_usd=math.fsum(p.total_usd for p in parts),
        dedicated_usd=math.fsum(p.dedicated_usd for p in parts),
        per_token_usd=math.fsum(p.per_token_usd for p in parts),
        deferred_usd=math.fsum(p.deferred_usd for p in parts),
        deferred_on_idle=parts[0].deferred_on_idle if len(parts) == 1 else 0.0,
        replicas=math.fsum(p.replicas * (e - s) for p, (s, e) in zip(parts, blocks, strict=True))
        / max(1, rt.minutes),
        utilization=parts[0].utilization if len(parts) == 1 else None,
    )
    purchase = buying.Purchase(
        "committed",
        f"committed {term.term_days:g} days",
        cost.replicas,
        0.0,
        buying.committed_risk(term, counts),
        term.source,
    )
    return (*base.label(max(counts), f"committed {term.term_days:g} d", cost), cost, purchase)


def _spot(base: Base, spot: buying.SpotPrice) -> Priced:
    """The base on spot: sized at the spot price, over-provisioned for interruptions, the expected shortfall
    served by on-demand replicas."""
    on_demand = base.option
    on_spot = replace(on_demand, gpu_hour_usd=spot.gpu_hour_usd)
    cheapest = base.cheapest(on_spot, base.minutes, base.deferred)
    needed = round(cheapest.replicas)
    bought, shortfall = buying.spot_replicas(
        needed, spot.down_share, on_spot.replica_usd_per_min, on_demand.replica_usd_per_min
    )
    minutes = base.minutes.minutes
    extra_usd = (bought - needed) * on_spot.replica_usd_per_min * minutes
    fallback_usd = shortfall * on_demand.replica_usd_per_min * minutes
    cost = replace(
        cheapest,
        total_usd=cheapest.total_usd + extra_usd + fallback_usd,
        dedicated_usd=cheapest.dedicated_usd + extra_usd + fallback_usd,
        replicas=bought,
    )
    purchase = buying.Purchase(
        "spot",
        "spot, on-demand fallback",
        bought,
        fallback_usd,
        buying.spot_risk(spot, needed, bought, shortfall, minutes),
        spot.source,
    )
    return (*base.label(bought, "on spot", cheapest), cost, purchase)
