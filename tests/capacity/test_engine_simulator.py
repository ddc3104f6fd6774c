"""The simulator's /metrics, read over real HTTP by tokenyard's engine client and parser: consistent with its
capacity model in vLLM's and SGLang's names, and its metrics faults."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.clocks import GatedClock
from tests.support.polling import eventually
from tests.support.simulators import USER_HELLO, fast_config, root_url, set_faults, start_sim
from tokenyard.adapters.engine_metrics import EngineMetricsClient
from tokenyard.capacity.engine import EngineSnapshot, parse_metrics
from tokenyard.errors import EngineMetricsInvalid, UpstreamStatusError
from tokenyard.simulator.server import SimulatorServer


async def scrape(sim: SimulatorServer, profile: str = "auto") -> EngineSnapshot:
    client = EngineMetricsClient()
    try:
        text = await client.get_text(f"{root_url(sim)}/metrics", 5.0)
    finally:
        await client.aclose()
    return parse_metrics(text, profile, scraped_at=time.monotonic(), wall_at=time.time())


async def chat(sdk: openai.AsyncOpenAI, *, stream: bool = False) -> Any:
    """A chat completion's usage (None for a stream, read to its end)."""
    if stream:
        chunks = await sdk.chat.completions.create(model="m", messages=USER_HELLO, max_tokens=5, stream=True)
        async for _ in chunks:
            pass
        return None
    answer = await sdk.chat.completions.create(model="m", messages=USER_HELLO, max_tokens=5)
    return answer.usage


@pytest.mark.parametrize("profile", ["vllm", "sglang"])
async def test_running_waiting_and_kv_follow_the_slots_then_tokens_add_up(profile: str) -> None:
    clock = GatedClock()  # requests take their slot and wait there until the gate opens
    sim = SimulatorServer(
        fast_config(mode="dedicated", max_concurrency=2, metrics_profile=profile, kv_cache_tokens=100),
        clock=clock,
    )
    async with sim, openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as sdk:
        idle = await scrape(sim)
        assert idle.profile == profile
        assert (idle.running, idle.waiting, idle.kv_cache_usage) == (0.0, 0.0, 0.0)
        tasks = [asyncio.create_task(chat(sdk, stream=i % 2 == 0)) for i in range(3)]

        async def two_running_one_waiting() -> None:
            snap = await scrape(sim)
            assert (snap.running, snap.waiting) == (2.0, 1.0)

        await eventually(two_running_one_waiting)
        held = sim.app.state.engine.kv_tokens
        assert held > 0
        assert (await scrape(sim)).kv_cache_usage == pytest.approx(min(1.0, held / 100))
        clock.gate.set()
        answers = await asyncio.gather(*tasks)
        done = await scrape(sim)
    assert (done.running, done.waiting, done.kv_cache_usage) == (0.0, 0.0, 0.0)
    usage = [a for a in answers if a is not None]
    assert usage, "the non-streamed answer says its usage"
    prompt_each = usage[0].prompt_tokens  # the same messages every time
    assert done.prompt_tokens_total == 3 * prompt_each
    assert done.generation_tokens_total == 3 * 5
    if profile == "sglang":
        assert done.busy_seconds_total
        assert done.busy_seconds_total > 0
    else:
        assert done.prefix_cache_queries_total == done.prompt_tokens_total


async def test_overrides_say_what_the_test_wants() -> None:
    async with start_sim(mode="dedicated") as sim:
        await set_faults(sim, metrics_waiting=3, metrics_kv_cache_usage=0.95, metrics_running=7)
        snap = await scrape(sim, "vllm")
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (7.0, 3.0, 0.95)


async def test_missing_and_wrong() -> None:
    async with start_sim() as sim:
        await set_faults(sim, metrics_missing=True)
        with pytest.raises(UpstreamStatusError, match="answered 404"):
            await scrape(sim)
        await set_faults(sim, metrics_wrong=True)
        with pytest.raises(EngineMetricsInvalid, match="not valid Prometheus text"):
            await scrape(sim)
        await set_faults(sim)
        assert (await scrape(sim)).profile == "vllm"


async def test_stale_metrics_are_frozen_and_stamped_when_the_fault_was_set() -> None:
    async with (
        start_sim(mode="dedicated") as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as sdk,
        httpx.AsyncClient() as http,
    ):
        await chat(sdk)
        before = await scrape(sim)
        set_at = time.time()
        await set_faults(sim, metrics_stale=True, metrics_waiting=9)
        await chat(sdk)
        text = (await http.get(f"{root_url(sim)}/metrics")).text
        # Read "later": a minute after the fault was set, the snapshot dates from when it was set.
        snap = parse_metrics(text, "auto", scraped_at=1000.0, wall_at=set_at + 60)
        assert snap.generation_tokens_total == before.generation_tokens_total  # frozen: the 2nd chat unseen
        assert snap.waiting == 9.0  # the page as it was when set, overrides included
        assert snap.scraped_at == pytest.approx(1000.0 - 60, abs=1.0)
        await set_faults(sim)
        assert (await scrape(sim)).generation_tokens_total == 10
