"""Dedicated capacity and client disconnects, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.simulators import USER_HELLO, root_url, start_sim
from tokenyard.simulator.server import SimulatorServer


async def wait_for_stats(server: SimulatorServer, **expected: int) -> dict[str, Any]:
    """Poll the live stats until they show ``expected`` (a disconnect reaches the server asynchronously)."""
    for _ in range(200):
        stats = server.app.state.stats()
        if all(stats[key] == value for key, value in expected.items()):
            return stats
        await asyncio.sleep(0.01)
    pytest.fail(f"stats never reached {expected}: {server.app.state.stats()}")


async def test_dedicated_slots_cap_concurrency_and_queue_the_rest() -> None:
    async with (
        start_sim(
            mode="dedicated", max_concurrency=2, tokens_per_s=200, aggregate_tokens_per_s=1000
        ) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk,
    ):

        async def one_stream() -> str:
            stream = await sdk.chat.completions.create(
                model="m", messages=USER_HELLO, stream=True, max_tokens=5
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        tasks = [asyncio.create_task(one_stream()) for _ in range(5)]
        await wait_for_stats(server, in_flight=2, queued=3)
        texts = await asyncio.gather(*tasks)

        stats = server.app.state.stats()
    assert all(len(text.split()) == 5 for text in texts)
    assert (stats["max_in_flight"], stats["streams_completed"], stats["in_flight"], stats["queued"]) == (
        2,
        5,
        0,
        0,
    )


async def test_dedicated_streams_share_the_aggregate_rate() -> None:
    async with (
        start_sim(mode="dedicated", tokens_per_s=1000, aggregate_tokens_per_s=100) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk,
    ):

        async def one_stream() -> None:
            stream = await sdk.chat.completions.create(
                model="m", messages=USER_HELLO, stream=True, max_tokens=10
            )
            async for _ in stream:
                pass

        started = time.monotonic()
        await asyncio.gather(one_stream(), one_stream())
        elapsed_s = time.monotonic() - started
    # Two streams at 100 tokens/s in total decode at ~50 tokens/s each: 9 gaps of >= 20 ms (alone: 10 ms).
    assert elapsed_s >= 0.15


async def test_client_disconnect_mid_stream_cancels_it_and_frees_the_slot() -> None:
    async with (
        start_sim(mode="dedicated", max_concurrency=1, tokens_per_s=50) as server,
        httpx.AsyncClient(base_url=root_url(server)) as http,
    ):
        body = {"model": "m", "messages": USER_HELLO, "stream": True, "max_tokens": 200}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.aiter_lines()
            await anext(lines)  # the role chunk: generation has started
            await wait_for_stats(server, in_flight=1)
        # Leaving the block unread closes the connection.
        await wait_for_stats(server, streams_cancelled=1, in_flight=0)

        # The freed slot serves the next request at once.
        response = await http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
        assert response.status_code == 200


async def test_client_abandoning_a_non_streamed_request_is_counted() -> None:
    async with (
        start_sim(tokens_per_s=10) as server,
        httpx.AsyncClient(base_url=root_url(server)) as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": USER_HELLO, "max_tokens": 100},
                timeout=0.1,
            )
        stats = await wait_for_stats(server, requests_cancelled=1, in_flight=0)
    assert stats["requests_completed"] == 0
