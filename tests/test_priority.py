"""Who yields first: near a dedicated backend's cap, a low-priority key's requests spill over to the per-token
backend while normal-priority ones still land on the dedicated one (``routing.priority_headroom``).

The real ``tokenyard serve``, the official openai SDK, simulators as upstreams; the dedicated one holds every
request it gets until the test opens its gate, so what is in flight there is exactly what the test sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.clocks import GatedClock
from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, sim_stats, simulators
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MODEL = "llama"
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
CAP = 10  # the dedicated backend's; low leaves 0.2 of it (2 slots) to the others by default
HELD = 8  # normal-priority requests kept in flight there


@dataclass
class Stack:
    """A proxy in front of a gated dedicated simulator and a serverless one."""

    proxy: ProxyProcess
    dedicated: SimulatorServer
    serverless: SimulatorServer
    gate: asyncio.Event  # set: the dedicated simulator answers what it holds


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    clock = GatedClock()
    dedicated = SimulatorServer(
        SimulatorConfig(name="vllm-a", mode="dedicated", max_concurrency=2 * CAP, **FAST_UPSTREAM),
        clock=clock,
    )
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as sims, dedicated:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "backends": {
                "vllm-a": backend("dedicated", dedicated.base_url, max_concurrency=CAP),
                "api": backend("serverless", sims["api"].base_url),
            },
            "models": {MODEL: {"deployments": ["vllm-a", "api"]}},
            "keys": {
                "team-a": {"key": CLIENT_KEY},  # normal priority
                "nightly-evals": {"key": OTHER_KEY, "priority": "low"},
            },
        }
        async with running_proxy(config, tmp_path) as proxy:
            try:
                yield Stack(proxy, dedicated, sims["api"], clock.gate)
            finally:
                clock.gate.set()  # nothing stays held when a test fails


async def chat(proxy: ProxyProcess, key: str) -> httpx.Headers:
    """A chat completion with ``key``: the answer's headers, once it is whole."""
    async with proxy.client(key=key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, max_tokens=2
        )
        raw.parse()
        return raw.headers


async def in_flight_at(sim: SimulatorServer, count: int) -> None:
    async def there() -> None:
        assert (await sim_stats(sim))["in_flight"] == count

    await eventually(there, timeout_s=30)


async def low_key(stack: Stack, source: str) -> str:
    """The secret of a low-priority key: the config file's, or one made now through the admin API."""
    if source == "config":
        return OTHER_KEY
    async with httpx.AsyncClient(timeout=30) as http:
        made = await http.post(
            f"{stack.proxy.url}/admin/keys",
            json={"name": "batch-evals", "priority": "low"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
    assert made.status_code == 201, made.text
    assert made.json()["priority"] == "low"
    secret: str = made.json()["value"]
    return secret


@pytest.mark.parametrize("source", ["config", "admin API"])
async def test_near_the_cap_low_priority_spills_over_while_normal_still_lands_on_dedicated(
    stack: Stack, source: str
) -> None:
    low = await low_key(stack, source)
    held = [asyncio.create_task(chat(stack.proxy, CLIENT_KEY)) for _ in range(HELD)]
    await in_flight_at(stack.dedicated, HELD)

    spilled = await chat(stack.proxy, low)  # the serverless one is not gated: it answers now
    assert spilled["x-tokenyard-backend"] == "api"
    assert spilled["x-tokenyard-route"] == "spillover"
    assert spilled["x-tokenyard-route-detail"] == f"vllm-a at capacity for low priority ({HELD}/{CAP})"

    normal = asyncio.create_task(chat(stack.proxy, CLIENT_KEY))
    await in_flight_at(stack.dedicated, HELD + 1)  # taken by the dedicated one, held there with the rest
    assert (await sim_stats(stack.serverless))["requests_total"] == 1, "only the low-priority request"

    stack.gate.set()
    answered = await asyncio.gather(*held, normal)
    assert [h["x-tokenyard-backend"] for h in answered] == ["vllm-a"] * (HELD + 1)
    assert {h["x-tokenyard-route"] for h in answered} == {"primary"}
    assert (await sim_stats(stack.dedicated))["in_flight"] == 0
