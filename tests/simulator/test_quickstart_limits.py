"""The quick start's in-process simulators share the proxy's event loop: no request may freeze it.

``tokenyard serve`` with no config runs its simulators inside the proxy's own process and loop, so a
request that makes a simulator work without yielding stalls every other request too. These run the real
quick start and send it the largest requests a client can.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.proxy import ProxyProcess, running_proxy

MODEL = "llama-3.1-8b-instruct"
HELLO = [{"role": "user", "content": "Hello!"}]
CAP = 16_384  # the simulators' default max_output_tokens: the quick start sets none


@pytest.fixture(scope="module")
async def quickstart(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProxyProcess]:
    async with running_proxy(None, tmp_path_factory.mktemp("quickstart")) as proxy:
        yield proxy


async def small_chat(http: httpx.AsyncClient, proxy: ProxyProcess) -> dict[str, Any]:
    got = await http.post(
        f"{proxy.base_url}/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2}
    )
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


@pytest.mark.parametrize("stream", [True, False])
async def test_a_max_tokens_no_model_could_reach_is_refused_at_once(
    quickstart: ProxyProcess, stream: bool
) -> None:
    # Unbounded, max_tokens=1e9 built a billion words before the first byte, holding the proxy's loop.
    huge = {"model": MODEL, "messages": HELLO, "max_tokens": 1_000_000, "stream": stream}
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{quickstart.base_url}/chat/completions", json=huge) as refused:
            assert refused.status_code == 400  # checked at the head: an accepted one would run for hours
            body = await refused.aread()
        error = orjson.loads(body)["error"]
        assert error["param"] == "max_tokens"
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith(
            f"max_tokens is too large: 1000000. This model supports at most {CAP}"
        )
        assert (await small_chat(http, quickstart))["usage"]["completion_tokens"] == 2


async def test_legacy_prompts_times_n_cannot_multiply_past_the_bound(quickstart: ProxyProcess) -> None:
    # Unbounded, 500 prompts x n=128 x 16k tokens is a billion words from a request of a few kilobytes.
    huge = {"model": MODEL, "prompt": ["hi"] * 129, "max_tokens": 1}
    async with httpx.AsyncClient(timeout=60) as http:
        refused = await http.post(f"{quickstart.base_url}/completions", json=huge)
        assert refused.status_code == 400, refused.text[:200]
        assert refused.json()["error"]["param"] == "n"
        await small_chat(http, quickstart)


async def test_embeddings_cannot_ask_for_unbounded_dimensions(quickstart: ProxyProcess) -> None:
    # Unbounded, a billion dimensions drew a billion random numbers in one go.
    huge = {"model": "text-embedding-small", "input": "hi", "dimensions": 100_000}
    async with httpx.AsyncClient(timeout=60) as http:
        refused = await http.post(f"{quickstart.base_url}/embeddings", json=huge)
        assert refused.status_code == 400, refused.text[:200]
        assert refused.json()["error"]["param"] == "dimensions"
        await small_chat(http, quickstart)


async def test_the_largest_allowed_requests_in_flight_leave_room_for_a_small_one(
    quickstart: ProxyProcess,
) -> None:
    # n=128 choices of the full cap, streamed and whole: two million words each, generated while sent.
    biggest = {"model": MODEL, "messages": HELLO, "n": 128, "max_tokens": CAP}
    events: list[str] = []
    first_chunk = asyncio.Event()

    async def big_stream(http: httpx.AsyncClient) -> None:
        body = {**biggest, "stream": True}
        async with http.stream("POST", f"{quickstart.base_url}/chat/completions", json=body) as got:
            assert got.status_code == 200
            async for _ in got.aiter_raw():
                first_chunk.set()
        events.append("big stream done")

    async def big_whole(http: httpx.AsyncClient) -> None:
        got = await http.post(f"{quickstart.base_url}/chat/completions", json=biggest)
        assert got.status_code == 200
        events.append("big answer done")

    async with httpx.AsyncClient(timeout=None) as http:
        bigs = [asyncio.create_task(big_stream(http)), asyncio.create_task(big_whole(http))]
        try:
            under_way = asyncio.create_task(first_chunk.wait())  # the big stream's first bytes arrived
            await asyncio.wait([under_way, *bigs], return_when=asyncio.FIRST_COMPLETED)
            assert under_way.done(), [task.exception() for task in bigs if task.done()]
            await small_chat(http, quickstart)
            events.append("small done")
            # Each big one takes 16k tokens at the quick start's decode rate: far from done yet.
            assert events == ["small done"]
        finally:
            for task in bigs:
                task.cancel()
            await asyncio.gather(*bigs, return_exceptions=True)
        await small_chat(http, quickstart)  # and the cancelled ones left nothing stuck behind
