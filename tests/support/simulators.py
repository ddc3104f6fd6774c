"""Simulators as upstreams: started in the test's own event loop on free loopback ports, so tests can read
their stats and change their faults over the control API (``/sim/*``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

# Small latencies and lengths keep every test well under a second: FAST for the simulator's own tests,
# FAST_UPSTREAM for simulators a proxy under test calls.
FAST: dict[str, Any] = {"ttft_ms": 1.0, "ttft_jitter": 0.0, "tokens_per_s": 2000.0, "default_max_tokens": 4}
FAST_UPSTREAM: dict[str, Any] = {
    "ttft_ms": 1,
    "ttft_jitter": 0,
    "tokens_per_s": 5000,
    "default_max_tokens": 4,
}

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


@contextlib.asynccontextmanager
async def simulators(**configs: SimulatorConfig) -> AsyncIterator[dict[str, SimulatorServer]]:
    """Start one in-process simulator per keyword, each on a free loopback port."""
    async with contextlib.AsyncExitStack() as stack:
        servers = {
            name: await stack.enter_async_context(SimulatorServer(config.model_copy(update={"name": name})))
            for name, config in configs.items()
        }
        yield servers


@dataclass(frozen=True)
class SimulatorProcess:
    """A simulator in a process of its own (``python -m tokenyard.simulator``)."""

    base_url: str
    port: int


@contextlib.asynccontextmanager
async def simulator_process(*options: str) -> AsyncIterator[SimulatorProcess]:
    """A simulator in its own process, started with these command-line options (``--mode dedicated`` …).

    For tests whose verdict rests on the simulator's pacing (tokens/s per stream): in the test's loop, the
    clients' own work delays its timers and the engine looks slower than its model."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tokenyard.simulator", "--port", "0", *options),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert match, line
        yield SimulatorProcess(match[1], int(match[2]))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), timeout=15)


async def sim_stats(sim: SimulatorServer) -> dict[str, Any]:
    """A simulator's live counters, over its control API."""
    async with httpx.AsyncClient() as http:
        stats: dict[str, Any] = (await http.get(f"http://127.0.0.1:{sim.port}/sim/stats")).json()
        return stats


async def sim_requests(sim: SimulatorServer, limit: int = 50) -> list[dict[str, Any]]:
    """The last requests a simulator received (method, path, headers, body)."""
    async with httpx.AsyncClient() as http:
        got: list[dict[str, Any]] = (
            await http.get(f"http://127.0.0.1:{sim.port}/sim/requests", params={"limit": limit})
        ).json()
        return got


async def set_faults(sim: SimulatorServer | SimulatorProcess, **faults: Any) -> None:
    """Replace a simulator's live faults."""
    async with httpx.AsyncClient() as http:
        (await http.post(f"http://127.0.0.1:{sim.port}/sim/faults", json=faults)).raise_for_status()


async def reset(*sims: SimulatorServer) -> None:
    """Zero the simulators' counters and restore their configured faults."""
    async with httpx.AsyncClient() as http:
        for sim in sims:
            (await http.post(f"http://127.0.0.1:{sim.port}/sim/reset")).raise_for_status()
