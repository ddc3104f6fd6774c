"""A circuit breaker per backend: take a failing backend out for a cool-down, then probe it back in.

No clock is read here: every method is handed ``now`` (seconds, monotonic), so tests advance time
instead of sleeping.

States: *closed* (serving; counting consecutive failures) → *open* (cooling down until ``open_until``)
→ *half-open* (one probe request allowed) → closed on the probe's success, open again with a doubled
cool-down on its failure. An upstream 429 with ``Retry-After`` opens the circuit for exactly that long; a
circuit a 429 opened is held by a rate limit (``rate_limited``), which routing answers with 429, not 503.

Every dispatch gets a ``Ticket``: a verdict counts only for the circuit it was dispatched under (a slow
request sent before the circuit opened cannot close it again), and only the probe settles half-open.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple


class BreakerState(Enum):
    """Where a backend's circuit is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Ticket(NamedTuple):
    """What a request was dispatched under: the circuit's generation, and whether it is the probe."""

    generation: int
    probe: bool


@dataclass(slots=True)
class CircuitBreaker:
    """Consecutive-failure circuit breaker with exponential cool-down and single-probe recovery."""

    failure_threshold: int
    cooldown_s: float
    max_cooldown_s: float
    failures: int = 0
    open_until: float = 0.0
    next_cooldown_s: float = 0.0
    probing: bool = False
    tripped: bool = False
    generation: int = 0  # +1 every time the circuit opens
    rate_limited: bool = False  # the failure that opened the circuit was the upstream's 429

    def state(self, now: float) -> BreakerState:
        """The state at ``now``."""
        if not self.tripped:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.open_until or self.probing else BreakerState.HALF_OPEN

    def available(self, now: float) -> bool:
        """Whether a request may be sent now (closed, or half-open with no probe in flight)."""
        return self.state(now) is not BreakerState.OPEN

    def cooling_for_s(self, now: float) -> float:
        """Seconds until the backend may be probed again (0 when available)."""
        return max(0.0, self.open_until - now) if self.tripped else 0.0

    def on_dispatch(self, now: float) -> Ticket:
        """A request is being sent; in half-open it is the one probe."""
        probe = self.tripped and now >= self.open_until and not self.probing
        if probe:
            self.probing = True
        return Ticket(self.generation, probe)

    def on_success(self, ticket: Ticket) -> bool:
        """The backend answered well; returns True when this closed an open circuit."""
        if ticket.generation != self.generation or (self.tripped and not ticket.probe):
            return False  # sent under an older circuit, or not the probe: no say over this one
        was_tripped = self.tripped
        self.failures = 0
        self.tripped = self.probing = self.rate_limited = False
        self.next_cooldown_s = 0.0
        return was_tripped

    def on_failure(
        self, now: float, ticket: Ticket, retry_after_s: float | None = None, *, rate_limited: bool = False
    ) -> bool:
        """The backend failed (``rate_limited``: with a 429); returns True when this opened the circuit."""
        if ticket.generation != self.generation:
            return False  # the circuit already opened since this request was sent
        if ticket.probe:
            self.probing = False
        elif self.tripped:
            return False  # only the probe settles a half-open circuit
        self.failures += 1
        if retry_after_s is not None and retry_after_s > 0:
            self._open(now, min(retry_after_s, self.max_cooldown_s), rate_limited)
            return True
        if ticket.probe or self.failures >= self.failure_threshold:
            cooldown = self.next_cooldown_s * 2 if ticket.probe and self.next_cooldown_s else self.cooldown_s
            self._open(now, min(cooldown, self.max_cooldown_s), rate_limited)
            return True
        return False

    def on_abandoned(self, ticket: Ticket) -> None:
        """The request ended without a verdict (the client left): if it was the probe, let another probe."""
        if ticket.probe and ticket.generation == self.generation:
            self.probing = False

    def _open(self, now: float, cooldown_s: float, rate_limited: bool) -> None:
        self.tripped = True
        self.rate_limited = rate_limited
        self.generation += 1
        self.open_until = now + cooldown_s
        self.next_cooldown_s = cooldown_s
