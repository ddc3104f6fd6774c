"""Real-time backend choice: a pure decision over a snapshot of the deployments (no I/O, no clock).

Deployments are tried in the model's preference order (dedicated first, then dedicated-serverless and
serverless, as the config lists them). A deployment is passed over when

- it is at its concurrency cap (the in-flight count its latency SLA allows) → the request *spills over*;
- its rate limit (rpm / tpm) has no room right now → *spills over* as well;
- its circuit is open after failures → *falls back* to the next one.

The first deployment not passed over is chosen, and the reason says why it and not an earlier one. When none
is left, the one back soonest says what the client hears: an upstream's 429 holds its circuit open for its
``Retry-After``, and that is a 429 with the wait, not a 503 (nothing is broken, the provider said "later").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """What routing needs to know of one deployment at this instant."""

    name: str
    in_flight: int
    max_concurrency: int | None
    rate_limited: bool
    cooling_for_s: float  # 0 when its circuit lets a request through
    already_failed: bool = False  # tried for this request already
    held_by_rate_limit: bool = False  # its cool-down follows the upstream's 429, not failures


@dataclass(frozen=True, slots=True)
class Choice:
    """The deployment to send to, and why it was chosen."""

    index: int
    reason: str  # primary | spillover | fallback | failover
    detail: str


@dataclass(frozen=True, slots=True)
class NoChoice:
    """No deployment can take the request; ``cooling`` tells 503 (all cooling down) from 429 (all full), and
    ``rate_limited`` says the one back soonest (in ``retry_after_s``) is held out by an upstream's 429."""

    cooling: bool
    retry_after_s: float
    detail: str
    rate_limited: bool = False


def choose_deployment(deployments: Sequence[DeploymentView]) -> Choice | NoChoice:
    """Pick the first deployment, in preference order, that can take one more request now."""
    passed_over: list[str] = []
    full = cooling = failed = False
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
        elif d.max_concurrency is not None and d.in_flight >= d.max_concurrency:
            full = True
            passed_over.append(f"{d.name} at capacity ({d.in_flight}/{d.max_concurrency})")
        elif d.rate_limited:
            full = True
            passed_over.append(f"{d.name} rate-limited")
        else:
            if not passed_over:
                return Choice(index, "primary", "")
            # The most telling reason wins: a failure this request saw, then capacity, then cool-down.
            reason = "failover" if failed else "spillover" if full else "fallback"
            return Choice(index, reason, "; ".join(passed_over))
    if full or soonest_s == math.inf:
        return NoChoice(cooling=False, retry_after_s=1.0, detail="; ".join(passed_over))
    return NoChoice(
        cooling=cooling,
        retry_after_s=max(1.0, soonest_s),
        detail="; ".join(passed_over),
        rate_limited=soonest_rate_limited,
    )
