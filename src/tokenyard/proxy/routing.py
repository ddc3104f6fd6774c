"""Real-time backend choice: a pure decision over a snapshot of the deployments (no I/O, no clock).

Deployments are tried in the model's preference order (dedicated first, then dedicated-serverless and
serverless, as the config lists them). A deployment is passed over when

- it is at its concurrency cap (the in-flight count its latency SLA allows) → the request *spills over*;
  for a request whose priority leaves headroom (``routing.priority_headroom``), a dedicated backend is full
  ``reserved_slots`` earlier, so lower priorities spill over first and the last slots stay for higher ones;
- its rate limit (rpm / tpm) has no room right now → *spills over* as well;
- its engine says it is saturated (a queue, a KV cache nearly full: ``capacity.engine``) → *spills over*,
  whatever the in-flight count says; but only if a later deployment can take the request: with nowhere else
  to go, the engine's own queue beats a 429 (it serves the request, later);
- its circuit is open after failures → *falls back* to the next one.

The first deployment not passed over is chosen, and the reason says why it and not an earlier one. When none
is left, the one back soonest says what the client hears: an upstream's 429 holds its circuit open for its
``Retry-After``, and that is a 429 with the wait, not a 503 (nothing is broken, the provider said "later").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class DeploymentView(NamedTuple):
    """What routing needs to know of one deployment at this instant (a named tuple, as the other values
    here: made for every deployment of every request, and a frozen dataclass's fields cost a
    ``object.__setattr__`` call each)."""

    name: str
    in_flight: int
    max_concurrency: int | None
    rate_limited: bool
    cooling_for_s: float  # 0 when its circuit lets a request through
    already_failed: bool = False  # tried for this request already
    held_by_rate_limit: bool = False  # its cool-down follows the upstream's 429, not failures
    saturated: str | None = None  # why its engine says it is full (``queue 3``), from fresh figures
    reserved: int = 0  # slots of max_concurrency the request's priority leaves free (``reserved_slots``)


class Choice(NamedTuple):
    """The deployment to send to, and why it was chosen."""

    position: int  # in the deployments routing was given (``index`` is a tuple's method)
    reason: str  # primary | spillover | fallback | failover
    detail: str


class NoChoice(NamedTuple):
    """No deployment can take the request; ``cooling`` tells 503 (all cooling down) from 429 (all full), and
    ``rate_limited`` says the one back soonest (in ``retry_after_s``) is held out by an upstream's 429."""

    cooling: bool
    retry_after_s: float
    detail: str
    rate_limited: bool = False


def choose_deployment(deployments: Sequence[DeploymentView], priority: str = "normal") -> Choice | NoChoice:
    """Pick the first deployment, in preference order, that can take one more request now; ``priority`` is
    the request's (the views count the slots it leaves free), named when it alone makes one full."""
    passed_over: list[str] = []
    full = cooling = failed = False
    # The first saturated one and the reason it would have had: taken when nothing else can be (its engine
    # queues the request, where the alternative is a 429).
    first_saturated: tuple[int, str] | None = None
    soonest_s, soonest_rate_limited = math.inf, False  # over every deployment out, tried ones too
    for index, d in enumerate(deployments):
        if 0 < d.cooling_for_s < soonest_s:
            soonest_s, soonest_rate_limited = d.cooling_for_s, d.held_by_rate_limit
        if d.already_failed:
            failed = True
            passed_over.append(f"{d.name} failed")
        elif d.cooling_for_s > 0:
            cooling = True
            passed_over.append(f"{d.name} cooling down")
        elif d.max_concurrency is not None and d.in_flight >= d.max_concurrency - d.reserved:
            full = True
            passed_over.append(_at_capacity(d.name, d.in_flight, d.max_concurrency, priority))
        elif d.rate_limited:
            full = True
            passed_over.append(f"{d.name} rate-limited")
        elif d.saturated is not None:
            if first_saturated is None:
                first_saturated = (index, _reason(passed_over, failed=failed, full=full))
            full = True
            passed_over.append(f"{d.name} saturated ({d.saturated})")
        else:
            return Choice(index, _reason(passed_over, failed=failed, full=full), "; ".join(passed_over))
    if first_saturated is not None:
        index, reason = first_saturated
        return Choice(index, reason, "; ".join(passed_over))
    if full or soonest_s == math.inf:
        return NoChoice(cooling=False, retry_after_s=1.0, detail="; ".join(passed_over))
    return NoChoice(
        cooling=cooling,
        retry_after_s=max(1.0, soonest_s),
        detail="; ".join(passed_over),
        rate_limited=soonest_rate_limited,
    )


def reserved_slots(cap: int, share: float) -> int:
    """The slots of an in-flight ``cap`` that a request whose priority leaves ``share`` of it (its
    ``routing.priority_headroom``) must leave free: ``ceil(cap × share)``, but never the last slot.

    Rounded up so a headroom means something on a small cap (0.2 of 4 keeps 1 slot, where rounding down
    would keep none below a cap of 5); never the whole cap, so an idle backend serves every priority (cap 1:
    nothing kept). The share is taken to a millionth and the arithmetic done in integers, so 0.7 of 10 is 7,
    not the 8 a float product (7.000000000000001) would round up to."""
    if cap <= 1 or share <= 0:
        return 0
    return min(cap - 1, -(-cap * round(share * 1_000_000) // 1_000_000))


def _at_capacity(name: str, in_flight: int, cap: int, priority: str) -> str:
    if in_flight < cap:  # full only for this request's priority: the rest is kept for higher ones
        return f"{name} at capacity for {priority} priority ({in_flight}/{cap})"
    return f"{name} at capacity ({in_flight}/{cap})"


def _reason(passed_over: list[str], *, failed: bool, full: bool) -> str:
    """Why the deployment after ``passed_over`` is the one: the most telling reason wins (a failure this
    request saw, then capacity, then cool-down)."""
    if not passed_over:
        return "primary"
    return "failover" if failed else "spillover" if full else "fallback"
