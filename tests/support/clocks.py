"""Clocks for tests: one fake that moves only when told (or slept on), and a gate for the simulator's."""

from __future__ import annotations

import asyncio

from tokenyard.simulator.clock import SystemClock

T0 = 1_800_000_000  # a minute-aligned "now" (unix s) for the stores' clocks


class FakeClock:
    """Time that moves only when a test says so, or when the code under test sleeps on it.

    It serves both kinds of clock the code takes: the stores' and the meter's (called: ``clock()`` is Unix
    seconds) and the simulator's (``time()``, ``monotonic()`` and ``sleep()``, which passes the time at once
    and records how long was asked for). ``monotonic()`` counts from 0, so paced durations stay exact.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.start = start  # Unix seconds when the clock was made
        self.elapsed_s: float = 0  # seconds passed since then; tests may set it outright
        self.slept_s: list[float] = []

    def __call__(self) -> float:
        return self.start + self.elapsed_s

    def time(self) -> float:
        return self.start + self.elapsed_s

    def monotonic(self) -> float:
        return self.elapsed_s

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.elapsed_s += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept_s.append(seconds)
        self.elapsed_s += seconds
        await asyncio.sleep(0)


class GatedClock(SystemClock):
    """A simulator clock that keeps real time but holds every wait until the test opens its gate: requests
    already at the upstream stay there, however slow the machine, until the test lets them go on."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()
        await asyncio.sleep(seconds)
