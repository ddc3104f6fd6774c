"""A circuit breaker per backend: take a failing backend out for a cool-down, then probe it back in.

No clock is read here: every method is handed ``now`` (seconds, monotonic), so tests advance time
instead of sleeping.

States: *closed* (serving; counting consecutive failures) → *open* (cooling down until ``open_until``)
→ *half-open* (one probe request allowed) → closed on success, open again with a doubled cool-down on
failure. An upstream 429 with ``Retry-After`` opens the circuit for exactly that long, at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    """Where a backend's circuit is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


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

    def on_dispatch(self, now: float) -> None:
        """A request is being sent: in half-open it is the one probe."""
        if self.tripped and now >= self.open_until:
            self.probing = True

    def on_success(self) -> None:
        """The backend answered well: close the circuit."""
        self.failures = 0
        self.tripped = False
        self.probing = False
        self.next_cooldown_s = 0.0

    def on_failure(self, now: float, retry_after_s: float | None = None) -> bool:
        """The backend failed; returns True when this failure opened the circuit."""
        self.failures += 1
        was_probing, self.probing = self.probing, False
        if retry_after_s is not None and retry_after_s > 0:
            self._open(now, min(retry_after_s, self.max_cooldown_s))
            return True
        if was_probing or self.failures >= self.failure_threshold:
            cooldown = self.next_cooldown_s * 2 if was_probing and self.next_cooldown_s else self.cooldown_s
            self._open(now, min(cooldown, self.max_cooldown_s))
            return True
        return False

    def on_abandoned(self) -> None:
        """The probe ended without a verdict (the client left): let another request probe."""
        self.probing = False

    def _open(self, now: float, cooldown_s: float) -> None:
        self.tripped = True
        self.open_until = now + cooldown_s
        self.next_cooldown_s = cooldown_s
