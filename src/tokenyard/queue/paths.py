"""Which path a job takes now: a pure decision over the job, the clock and what capacity there is.

Cheapest first, as long as the deadline still holds:

1. **idle dedicated capacity** — already paid for, so free; used up to ``idle_fill_cap`` of a dedicated
   backend's slots, always yielding to real-time traffic;
2. **a provider batch** — about half the per-token price, but it may take the provider's whole completion
   window, so only for jobs whose deadline leaves that long, and never for a connection that is waiting;
3. **real time** — when the deadline comes close (within ``realtime_margin_s``), or at once when no
   cheaper path could ever take the job (no dedicated backend that might free up, and no provider batch
   that fits its deadline): waiting would only make it later;
4. otherwise **wait** for one of the above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tokenyard.queue.model import Job

Path = Literal["idle_dedicated", "provider_batch", "realtime", "wait"]


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the dispatcher sees for the job's model at this instant."""

    idle_dedicated: bool  # a dedicated backend has a slot below its async fill cap
    provider_batch: bool  # the model has a provider Batch API backend that is not failing
    has_dedicated: bool = True  # the model has dedicated backends at all (busy or not)


def choose_path(
    job: Job, now: float, capacity: Capacity, *, realtime_margin_s: float, expected_turnaround_s: float
) -> Path:
    """The cheapest path that still meets the job's deadline, or ``wait``."""
    remaining_s = job.deadline - now
    if capacity.idle_dedicated:
        return "idle_dedicated"
    batch_may_take_it = capacity.provider_batch and job.delivery != "hold"
    if batch_may_take_it and remaining_s >= expected_turnaround_s + realtime_margin_s:
        return "provider_batch"
    # Only a dedicated replica can free up: a batch that does not fit the deadline now never will.
    if remaining_s <= realtime_margin_s or not capacity.has_dedicated:
        return "realtime"
    return "wait"
