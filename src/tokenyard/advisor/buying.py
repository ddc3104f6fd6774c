"""How the always-on base is bought (pure): on demand, committed for a term, or spot with a fallback.

- **On demand**: the catalog's (or the config's) $/GPU-hour, for the hours a replica runs.
- **Committed** (reserved): a lower $/GPU-hour for a whole term, paid for every hour of the term whether the
  replica is busy or not — never idle-free. The window is cut into term blocks from its start; each block
  commits the replicas cheapest for its own minutes at the committed price (so a window longer than the
  term holds several commitments, each sized for its own traffic), and is billed for its whole length in
  the window (a window shorter than the term is a sample of it: billed for the window's length, as the
  term's other hours are assumed alike).
- **Spot**: a lower $/GPU-hour, but replicas are taken back: ``interruptions_per_day`` each lasting
  ``recovery_min`` until a replacement serves, so each replica is down a share ``d`` of the time. The plan
  buys ``N_s ≥ N`` replicas — one more while the expected shortfall it saves, priced at the fallback, is
  worth more than the replica — and the expected shortfall ``E[max(0, N - up)]`` with ``up ~ Binomial(N_s,
  1 - d)`` is served by on-demand replicas, priced in. Interruptions are taken as independent; a zone-wide
  reclaim is not, and the risk says so.

The advice names the risk in words next to the saving (``Purchase.risk``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["on_demand", "committed", "spot"]
DAY_MIN = 1440


@dataclass(frozen=True, slots=True)
class CommittedPrice:
    """A committed-use price for one GPU type."""

    term_days: float
    gpu_hour_usd: float
    source: str  # where and when it was read


@dataclass(frozen=True, slots=True)
class SpotPrice:
    """A spot price for one GPU type and how often spot capacity is taken back."""

    gpu_hour_usd: float
    interruptions_per_day: float  # per replica
    recovery_min: float  # from interruption to a replacement serving
    source: str

    @property
    def down_share(self) -> float:
        """The share of the time one replica is down."""
        return min(1.0, self.interruptions_per_day * self.recovery_min / DAY_MIN)


@dataclass(frozen=True, slots=True)
class Purchase:
    """How the always-on replicas of a candidate are bought, and what that adds to its cost."""

    kind: Kind
    label: str  # "committed 365 days", "spot, on-demand fallback"
    replicas_bought: float  # spot: more than needed (over-provisioned); committed: mean over the blocks
    fallback_usd: float  # spot: what the expected shortfall cost on demand; 0 otherwise
    risk: str  # the risk, in words
    source: str

    def to_json(self) -> dict[str, Any]:
        """The purchase for the advice API."""
        return {
            "kind": self.kind,
            "label": self.label,
            "replicas_bought": round(self.replicas_bought, 3),
            "fallback_usd": round(self.fallback_usd, 6),
            "risk": self.risk,
            "source": self.source,
        }


def term_blocks(minutes: int, term_days: float) -> list[tuple[int, int]]:
    """The window's minutes cut into term blocks from its start: [(start, end), ...]."""
    term = max(1, round(term_days * DAY_MIN))
    return [(start, min(minutes, start + term)) for start in range(0, minutes, term)] or [(0, 0)]


def expected_shortfall(needed: int, bought: int, down_share: float) -> float:
    """``E[max(0, needed - up)]`` replicas with ``up ~ Binomial(bought, 1 - down_share)``."""
    if needed <= 0:
        return 0.0
    total = 0.0
    for down in range(max(0, bought - needed + 1), bought + 1):  # the counts that leave fewer than needed up
        up = bought - down
        total += (needed - up) * math.comb(bought, down) * down_share**down * (1 - down_share) ** up
    return total


def spot_replicas(
    needed: int, down_share: float, spot_usd_per_replica_min: float, fallback_usd_per_replica_min: float
) -> tuple[int, float]:
    """(replicas to buy on spot, expected shortfall in replicas) for ``needed`` always up: one more while the
    shortfall it saves, at the fallback's price, is worth more than it costs."""
    bought = needed
    shortfall = expected_shortfall(needed, bought, down_share)
    while bought < 2 * needed + 2:
        better = expected_shortfall(needed, bought + 1, down_share)
        if (shortfall - better) * fallback_usd_per_replica_min <= spot_usd_per_replica_min:
            break
        bought, shortfall = bought + 1, better
    return bought, shortfall


def spot_risk(price: SpotPrice, needed: int, bought: int, shortfall: float, minutes: int) -> str:
    """The spot risk, in words."""
    hours = shortfall * minutes / 60
    return (
        f"spot: ~{price.interruptions_per_day:.3g} interruptions a day per replica, each "
        f"~{price.recovery_min:g} min until a replacement serves; {bought} bought to keep {needed} up, "
        f"expected shortfall {hours:.2g} replica-hours over the window, served on demand; a zone-wide "
        "reclaim takes them all at once — keep the per-token fallback configured"
    )


def committed_risk(price: CommittedPrice, counts: list[int]) -> str:
    """The committed risk, in words."""
    blocks = len(counts)
    sizes = ", ".join(map(str, counts)) if blocks > 1 else str(counts[0])
    return (
        f"committed: {sizes} replica(s) paid for every hour of each {price.term_days:g}-day term, busy "
        "or not; if traffic falls, the commitment does not"
    )
