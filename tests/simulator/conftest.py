"""Fixtures: one shared fast simulator (reset before each test), the official SDK and a raw HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.support.simulators import root_url, start_sim
from tokenyard.simulator.server import SimulatorServer


@pytest.fixture(scope="module")
async def shared_sim() -> AsyncIterator[SimulatorServer]:
    async with start_sim(name="shared", seed=7) as server:
        yield server


@pytest.fixture
def sim(shared_sim: SimulatorServer) -> SimulatorServer:
    """The shared simulator with fresh stats, an empty request log and its configured faults."""
    shared_sim.app.state.reset()
    return shared_sim


@pytest.fixture
async def client(sim: SimulatorServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK pointed at the simulator; no retries, so every injected error is seen."""
    async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def http(sim: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """A raw HTTP client rooted at the simulator (paths like ``/v1/...`` and ``/sim/...``)."""
    async with httpx.AsyncClient(base_url=root_url(sim), timeout=10.0) as raw:
        yield raw
