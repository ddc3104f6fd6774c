"""Shared helpers for the simulator tests: a fast config, a fake clock, and URL helpers."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

# Small latencies and lengths keep every test well under a second.
FAST: dict[str, Any] = {"ttft_ms": 1.0, "ttft_jitter": 0.0, "tokens_per_s": 2000.0, "default_max_tokens": 4}

USER_HELLO = [{"role": "user", "content": "hello there simulator"}]


def fast_config(**overrides: Any) -> SimulatorConfig:
    """A simulator config that answers in milliseconds, with ``overrides`` applied."""
    return SimulatorConfig.model_validate({**FAST, **overrides})


def start_sim(**overrides: Any) -> SimulatorServer:
    """A fast simulator on a free loopback port, to use with ``async with``."""
    return SimulatorServer(fast_config(**overrides))


def root_url(server: SimulatorServer) -> str:
    """The server's root URL (``/sim/*`` lives there, not under ``/v1``)."""
    return server.base_url.removesuffix("/v1")


class FakeClock:
    """A clock whose sleeps advance time instantly, recording how long was asked for."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept_s: list[float] = []

    def monotonic(self) -> float:
        return self.now_s

    def time(self) -> float:
        return 1_700_000_000.0 + self.now_s

    async def sleep(self, seconds: float) -> None:
        self.slept_s.append(seconds)
        self.now_s += seconds
        await asyncio.sleep(0)
