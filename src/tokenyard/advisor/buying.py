"""How the always-on base is bought (pure): on demand, committed for a term, or spot with a fallback.

- **On demand**: the catalog's (or the config's) $/GPU-hour, for the hours a replica runs.
- **Committed** (reserved): a lower $/GPU-hour for a whole term (e.g. 1 or 12 months), paid for every hour
  of the term whether the replica is busy or not — never idle-free. Priced per term block: a window longer
  than the term holds several terms, each sized for its own busiest demand; a window shorter than the term
  is a sample of it, billed in full for its length.
- **Spot**: a much lower $/GPU-hour, but replicas are taken back: ``interruptions_per_day`` each lasting
  ``recovery_min`` until a replacement serves. The plan over-provisions for the expected share of replicas
  down, and what is still lost falls back to on-demand replicas or per-token, priced in.

The advice names the risk in words next to the saving (``Purchase.risk``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["on_demand", "committed", "spot"]


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


@dataclass(frozen=True, slots=True)
class Purchase:
    """One way of buying ``replicas`` always-on replicas over a window, and what it costs."""

    kind: Kind
    label: str  # "committed 12 months", "spot, on-demand fallback", "on demand"
    usd: float  # the replicas' cost over the window, fallback included
    replicas_bought: float  # spot: more than needed (over-provisioned); committed: the peak term's count
    fallback_usd: float  # spot: what the lost capacity cost elsewhere; 0 otherwise
    risk: str  # the risk, in words ("" for on demand)

    def to_json(self) -> dict[str, Any]:
        """The purchase for the advice API."""
        raise NotImplementedError


def on_demand(replicas: int, gpus_per_replica: int, gpu_hour_usd: float, minutes: int) -> Purchase:
    """``replicas`` always on for ``minutes`` at the on-demand price."""
    raise NotImplementedError


def committed(
    replicas_per_term: list[int], gpus_per_replica: int, price: CommittedPrice, minutes: int
) -> Purchase:
    """Replicas committed term by term over the window (``replicas_per_term``: the count each term block
    needs, the window cut into blocks of ``price.term_days`` from its start, the last block billed in full
    when the window ends inside it only if it is the window's only block — see the module docstring)."""
    raise NotImplementedError


def spot(
    replicas: int,
    gpus_per_replica: int,
    price: SpotPrice,
    minutes: int,
    *,
    fallback_usd_per_replica_min: float,
    fallback: str,
) -> Purchase:
    """``replicas`` needed, bought on spot: over-provisioned for the expected share down
    (``interruptions_per_day × recovery_min / 1440``), the rest of the lost capacity served by ``fallback``
    ("on-demand" or "per-token") at ``fallback_usd_per_replica_min`` a replica-minute."""
    raise NotImplementedError
