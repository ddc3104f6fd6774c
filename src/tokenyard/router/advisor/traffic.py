"""Per-minute traffic of a workload (pure): what the cost model replays against every architecture.

Traffic is dense over a run of minutes (a minute with no requests is zeros), split three ways because the
candidates and the current setup treat them differently:

- ``realtime``: someone was waiting, and nothing says it could have waited;
- ``eligible``: it ran real-time, but its workload or tenant is marked async-eligible;
- ``ran_async``: it went down the async track.

Series are ``array('d')``: 30 days × 20 models stays ~50 MB, and summing them stays in C.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

MINUTE_S = 60
WEEK_MIN = 7 * 24 * 60


def _zeros(n: int) -> array[float]:
    return array("d", bytes(8 * n))


class Totals(NamedTuple):
    """A series summed over its minutes: what every per-token price needs (prices are linear)."""

    requests: float
    prompt: float
    cached: float
    completion: float

    def plus(self, other: Totals) -> Totals:
        """Both totals."""
        return Totals(*(a + b for a, b in zip(self, other, strict=True)))

    @property
    def tokens(self) -> float:
        """Input and output tokens."""
        return self.prompt + self.completion


@dataclass(slots=True)
class TokenSeries:
    """Requests and tokens per minute; ``prompt`` includes the ``cached`` (prompt-cache hit) tokens."""

    requests: array[float]
    prompt: array[float]
    cached: array[float]
    completion: array[float]
    # The sums, kept until the next add.
    _totals: Totals | None = field(default=None, repr=False, compare=False, kw_only=True)

    @classmethod
    def zeros(cls, n: int) -> TokenSeries:
        """A series of ``n`` empty minutes."""
        return cls(_zeros(n), _zeros(n), _zeros(n), _zeros(n))

    def add(self, i: int, requests: float, prompt: float, cached: float, completion: float) -> None:
        """Add usage to minute ``i``."""
        self._totals = None
        self.requests[i] += requests
        self.prompt[i] += prompt
        self.cached[i] += cached
        self.completion[i] += completion

    def plus(self, other: TokenSeries) -> TokenSeries:
        """Both series, minute by minute."""
        if other.is_empty():
            return self
        if self.is_empty():
            return other
        return TokenSeries(
            *(
                array("d", map(float.__add__, a, b))
                for a, b in zip(self._columns(), other._columns(), strict=True)
            )
        )

    def is_empty(self) -> bool:
        """Whether no minute has any request or token (``any`` on an array runs in C)."""
        return not (any(self.requests) or any(self.prompt) or any(self.completion))

    def totals(self) -> Totals:
        """Every column summed (once: the candidates all ask)."""
        if self._totals is None:
            self._totals = Totals(*map(sum, self._columns()))
        return self._totals

    def _columns(self) -> tuple[array[float], array[float], array[float], array[float]]:
        return (self.requests, self.prompt, self.cached, self.completion)


@dataclass(slots=True)
class Traffic:
    """One workload's traffic, minute by minute from ``start_minute`` (unix seconds, minute-aligned)."""

    start_minute: int
    minutes: int
    realtime: TokenSeries
    eligible: TokenSeries
    ran_async: TokenSeries
    first_seen: float | None = None  # unix seconds of the first request seen (how much history there is)
    last_seen: float | None = None
    model: str = ""  # the model the workload's requests named

    @classmethod
    def empty(cls, start_minute: int, minutes: int) -> Traffic:
        """No traffic over ``minutes`` minutes."""
        return cls(
            start_minute,
            minutes,
            TokenSeries.zeros(minutes),
            TokenSeries.zeros(minutes),
            TokenSeries.zeros(minutes),
        )

    def sliced(self, start: int, end: int) -> Traffic:
        """Minutes ``start`` to ``end`` (indices) of this traffic."""

        def part(series: TokenSeries) -> TokenSeries:
            return TokenSeries(*(column[start:end] for column in series._columns()))

        return Traffic(
            self.start_minute + MINUTE_S * start,
            len(range(self.minutes)[start:end]),
            part(self.realtime),
            part(self.eligible),
            part(self.ran_async),
            self.first_seen,
            self.last_seen,
            self.model,
        )

    def deferrable(self) -> Totals:
        """What could have waited, summed: eligible plus what ran async (the batch candidate's share)."""
        return self.eligible.totals().plus(self.ran_async.totals())

    def must_wait_for(self) -> TokenSeries:
        """What ran real-time (the current setup's real-time share)."""
        return self.realtime.plus(self.eligible)

    def tokens_by_hour_of_week(self) -> list[float]:
        """Tokens per hour of the week (Monday 00:00 UTC first), for the traffic picture."""
        out = [0.0] * 168
        # The unix epoch was a Thursday: day 3 with Monday = 0.
        first_hour = (self.start_minute // 3600 + 3 * 24) % 168
        for series in (self.realtime, self.eligible, self.ran_async):
            for i, (p, c) in enumerate(zip(series.prompt, series.completion, strict=True)):
                if p or c:
                    out[(first_hour + i // 60) % 168] += p + c
        return out

    def history_days(self, now: float) -> float:
        """Days from the first request seen to ``now``: how much of the weekly cycle was observed."""
        return 0.0 if self.first_seen is None else max(0.0, now - self.first_seen) / 86400


@dataclass(slots=True)
class TrafficBuilder:
    """Collects usage rows into per-workload ``Traffic`` over ``[start_minute, end_minute)``.

    ``workload_of(model, tenant)`` names the workload a row belongs to (None: ignore the row);
    ``eligible(model, tenant)`` says whether its real-time traffic could have been async.
    """

    start_minute: int
    end_minute: int
    workload_of: Callable[[str, str], str | None]
    eligible: Callable[[str, str], bool]
    workloads: dict[str, Traffic] = field(default_factory=dict)
    skipped_rows: int = 0  # outside the window, or of no workload

    @property
    def minutes(self) -> int:
        """The window's length in minutes."""
        return (self.end_minute - self.start_minute) // MINUTE_S

    def add(
        self,
        ts: float,
        *,
        model: str,
        tenant: str,
        mode: str,
        requests: float,
        prompt: float,
        cached: float,
        completion: float,
        async_eligible: bool = False,
    ) -> None:
        """Add one request (or a minute's aggregate) finished at ``ts``."""
        i = (int(ts) - self.start_minute) // MINUTE_S
        name = self.workload_of(model, tenant)
        if name is None or not 0 <= i < self.minutes:
            self.skipped_rows += 1
            return
        traffic = self.workloads.get(name)
        if traffic is None:
            traffic = self.workloads[name] = Traffic.empty(self.start_minute, self.minutes)
            traffic.model = model
        if mode == "async":
            series = traffic.ran_async
        elif async_eligible or self.eligible(model, tenant):
            series = traffic.eligible
        else:
            series = traffic.realtime
        series.add(i, requests, prompt, cached, completion)
        if traffic.first_seen is None or ts < traffic.first_seen:
            traffic.first_seen = ts
        if traffic.last_seen is None or ts > traffic.last_seen:
            traffic.last_seen = ts
