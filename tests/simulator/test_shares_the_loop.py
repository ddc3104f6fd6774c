"""The simulator builds large answers a piece at a time, handing the event loop back in between.

In the quick start it runs inside the proxy's loop, so a large answer built in one go holds every other
request up. Counted, not timed: a coroutine beside the request counts the loop's turns while the answer is
built (with a fake clock, the decode time passes at once, so only the work itself is left).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.clocks import FakeClock
from tests.support.simulators import USER_HELLO, fast_config
from tokenyard.simulator.app import build_app
from tokenyard.simulator.inference import WORDS_PER_YIELD


async def turns_while_answering(path: str, body: dict[str, Any]) -> tuple[int, httpx.Response]:
    """How many times another coroutine ran while the simulator answered ``body``, and the answer."""
    app = build_app(fast_config(), clock=FakeClock())
    turns = 0
    answered = asyncio.Event()

    async def beside() -> None:
        nonlocal turns
        while not answered.is_set():
            turns += 1
            await asyncio.sleep(0)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as http:
        counter = asyncio.create_task(beside())
        await asyncio.sleep(0)  # it is running
        start = turns
        try:
            response = await http.post(path, json=body, timeout=None)
        finally:
            answered.set()
            await counter
    assert response.status_code == 200, response.text[:200]
    return turns - start, response


async def test_the_largest_whole_answer_hands_the_loop_back_every_few_thousand_words() -> None:
    choices, length = 128, 16_384
    body = {"model": "m", "messages": USER_HELLO, "n": choices, "max_tokens": length}
    turns, response = await turns_while_answering("/v1/chat/completions", body)
    assert response.json()["usage"]["completion_tokens"] == choices * length
    # Built in one go, the loop came back only at the few awaits around it (ttft, pacing, sending).
    assert turns >= choices * length // WORDS_PER_YIELD // 2


async def test_many_embeddings_hand_the_loop_back_between_vectors() -> None:
    inputs = [f"text {i}" for i in range(256)]
    body = {"model": "e", "input": inputs, "dimensions": 256}
    turns, response = await turns_while_answering("/v1/embeddings", body)
    assert len(response.json()["data"]) == len(inputs)
    assert turns >= len(inputs) // 2
