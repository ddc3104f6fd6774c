"""The simulator's sense of time, passed in so tests can fake it instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Reads time and waits; the simulator never touches ``time`` or ``asyncio.sleep`` directly."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards, for pacing."""

    def time(self) -> float:
        """Wall-clock Unix seconds, for ``created`` timestamps."""

    async def sleep(self, seconds: float) -> None:
        """Wait this long (0 still yields to the event loop)."""


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
