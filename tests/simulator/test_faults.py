"""Injected faults: errors, Retry-After, slow first bytes and cut streams — set live via ``/sim/faults``."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.simulators import USER_HELLO, set_faults
from tokenyard.simulator.server import SimulatorServer

CHAT = {"model": "m", "messages": USER_HELLO}


async def test_fail_next_gives_n_errors_then_success(
    sim: SimulatorServer, http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    await set_faults(sim, fail_next=2)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=USER_HELLO)
    await client.chat.completions.create(model="m", messages=USER_HELLO)

    assert (await http.get("/sim/stats")).json()["errors_injected"] == 2
    assert (await http.get("/sim/faults")).json()["fail_next"] == 0


async def test_injected_429_carries_retry_after(
    sim: SimulatorServer, http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    await set_faults(sim, fail_next=2, error_status=429, retry_after_s=2.0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER_HELLO)
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.code == "rate_limit_exceeded"

    await set_faults(sim, fail_next=1, error_status=429, retry_after_s=0.5)
    response = await http.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert (response.status_code, response.headers["retry-after"]) == (429, "0.5")


async def test_error_rate_one_fails_everything_and_other_statuses_have_no_retry_after(
    sim: SimulatorServer,
    http: httpx.AsyncClient,
) -> None:
    await set_faults(sim, error_rate=1.0, error_status=503)
    responses = [await http.post("/v1/completions", json={"model": "m", "prompt": "x"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert all(
        "retry-after" not in r.headers and r.json()["error"]["type"] == "server_error" for r in responses
    )


async def test_faults_spare_the_model_catalog(sim: SimulatorServer, http: httpx.AsyncClient) -> None:
    await set_faults(sim, error_rate=1.0)
    assert (await http.get("/v1/models")).status_code == 200


async def test_first_byte_delay_holds_back_the_response_headers(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    await set_faults(sim, first_byte_delay_ms=100)
    started = time.monotonic()
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        elapsed_s = time.monotonic() - started
        await response.aread()
    assert elapsed_s >= 0.095  # timers may fire a hair early; only the lower bound is meaningful


async def test_cut_stream_drops_the_connection_mid_stream(
    http: httpx.AsyncClient, sim: SimulatorServer
) -> None:
    await set_faults(sim, cut_stream_after_chunks=2)
    events: list[str] = []

    async def read_stream() -> None:
        async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                events.append(line)  # kept as they come: the stream will break part-way

    with pytest.raises(httpx.RemoteProtocolError):
        await read_stream()

    events = [event for event in events if event]
    assert len(events) == 3  # the role chunk and two content chunks
    assert "data: [DONE]" not in events
    stats = sim.app.state.stats()
    assert (stats["streams_cut"], stats["streams_completed"], stats["in_flight"]) == (1, 0, 0)


async def test_cut_stream_fault_lets_short_streams_finish(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    await set_faults(sim, cut_stream_after_chunks=10)
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        events = [line async for line in response.aiter_lines() if line]
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize("faults", [{"error_rate": 2}, {"fail_nxt": 1}, {"error_status": 200}, [1]])
async def test_invalid_faults_are_rejected_and_leave_the_live_ones(
    http: httpx.AsyncClient, faults: Any
) -> None:
    response = await http.post("/sim/faults", json=faults)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await http.get("/sim/faults")).json()["error_rate"] == 0.0


async def test_a_whole_answer_says_its_length_even_when_a_habit_rewrites_it(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    plain = await http.post("/v1/chat/completions", json=CHAT)
    assert plain.headers["content-length"] == str(len(plain.content))

    await set_faults(sim, json_style="spaced")  # llama-cpp-python's JSON: longer than the compact answer
    spaced = await http.post("/v1/chat/completions", json=CHAT)
    assert spaced.status_code == 200
    assert b'"object": "chat.completion"' in spaced.content
    assert spaced.json()["choices"][0]["message"]["content"]
    assert int(spaced.headers.get("content-length", len(spaced.content))) == len(spaced.content)
