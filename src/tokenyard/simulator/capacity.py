"""The latency and capacity model: time to first token, decode rate, and generation slots.

Serverless: every request starts at once; its time to first token is drawn around ``ttft_ms`` and it decodes
at a fixed ``tokens_per_s``. Dedicated: at most ``max_concurrency`` requests generate at once (the rest wait
in FIFO order), the time to first token is fixed, and the active streams share ``aggregate_tokens_per_s``,
each capped at ``tokens_per_s`` — recomputed at every token, so streams speed up as others finish.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from types import TracebackType

from tokenyard.simulator.clock import Clock
from tokenyard.simulator.config import SimulatorConfig


def sample_ttft_s(config: SimulatorConfig, rng: random.Random) -> float:
    """Time to first token of one request: lognormal with mean ``ttft_ms`` (serverless), fixed (dedicated)."""
    base_s = config.ttft_ms / 1000.0
    sigma = config.ttft_jitter
    if config.mode == "dedicated" or sigma == 0.0 or base_s == 0.0:
        return base_s
    # exp(sigma*z - sigma^2/2) has mean 1, so the configured ttft stays the mean whatever the spread.
    return base_s * math.exp(sigma * rng.gauss(0.0, 1.0) - sigma * sigma / 2.0)


def stream_rate_per_s(config: SimulatorConfig, active_streams: int, capacity_scale: float = 1.0) -> float:
    """Tokens per second one stream decodes at while ``active_streams`` generate at once, with the aggregate
    scaled by ``capacity_scale`` (the live fault)."""
    if config.mode == "serverless":
        return config.tokens_per_s
    aggregate = config.aggregate_tokens_per_s * capacity_scale
    return min(config.tokens_per_s, aggregate / max(1, active_streams))


class Slots:
    """Admission to generation: unlimited, or ``limit`` slots in FIFO order; counts holders and waiters."""

    __slots__ = ("_semaphore", "in_flight", "max_in_flight", "queued")

    def __init__(self, limit: int | None) -> None:
        # asyncio.Semaphore wakes waiters in arrival order and does not let newcomers barge past them.
        self._semaphore = asyncio.Semaphore(limit) if limit is not None else None
        self.in_flight = 0
        self.queued = 0
        self.max_in_flight = 0

    async def __aenter__(self) -> None:
        if self._semaphore is not None:
            self.queued += 1
            try:
                await self._semaphore.acquire()
            finally:
                self.queued -= 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.in_flight -= 1
        if self._semaphore is not None:
            self._semaphore.release()

    def reset_peak(self) -> None:
        """Start measuring ``max_in_flight`` afresh from the current load."""
        self.max_in_flight = self.in_flight


class TokenPacer:
    """Spaces one stream's tokens at the current rate.

    It sleeps towards a running deadline rather than for a fixed interval, so timer overshoot does not
    accumulate; if the stream falls more than a token behind (a slow reader), it does not burst to catch up.
    """

    __slots__ = ("_clock", "_due", "_fixed_rate", "_rate")

    def __init__(self, clock: Clock, rate_per_s: Callable[[], float], *, fixed_rate: bool) -> None:
        self._clock = clock
        self._rate = rate_per_s
        self._fixed_rate = fixed_rate
        self._due = clock.monotonic()

    async def next_token(self) -> None:
        """Wait until the next token is due."""
        now = self._clock.monotonic()
        self._due = max(self._due + 1.0 / self._rate(), now)
        await self._clock.sleep(self._due - now)

    async def advance(self, tokens: int) -> None:
        """Wait for ``tokens`` more tokens without emitting them (non-streamed answers)."""
        if self._fixed_rate:
            # One timer instead of one per token: the rate cannot change, so the wait is the same.
            now = self._clock.monotonic()
            self._due = max(self._due + tokens / self._rate(), now)
            await self._clock.sleep(self._due - now)
            return
        for _ in range(tokens):
            await self.next_token()
