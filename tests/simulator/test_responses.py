"""The simulator's Responses API, driven by the official openai SDK: whole and streamed answers agree,
every event is the SDK's own type, stored responses round-trip, tool calls and reasoning are simulated."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.clocks import FakeClock
from tests.support.simulators import fast_config, set_faults
from tokenyard.simulator.server import SimulatorServer

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


async def test_a_whole_and_a_streamed_answer_agree_and_count_the_prompt_in_words(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    request: dict[str, Any] = {"model": "sim-model", "input": "three little words", "instructions": "be kind"}
    whole = await client.responses.create(**request)
    assert whole.status == "completed"
    assert whole.usage is not None
    assert whole.usage.input_tokens == 5
    assert whole.usage.output_tokens == len(whole.output_text.split())
    async with client.responses.stream(**request) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert len(final.output_text.split()) == len(whole.output_text.split())  # the words key on the body
    assert final.usage == whole.usage
    # Every event is one of the SDK's, numbered from 0.
    raw = await http.post("/v1/responses", json={**request, "stream": True})
    events = [
        EVENTS.validate_python(orjson.loads(block.split(b"data: ", 1)[1]))
        for block in raw.content.split(b"\n\n")
        if block
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"


async def test_a_cap_ends_incomplete(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="sim-model", input="x", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 3


async def test_a_stored_response_round_trips_and_store_false_is_not_kept(client: openai.AsyncOpenAI) -> None:
    made = await client.responses.create(
        model="sim-model", input=[{"role": "user", "content": [{"type": "input_text", "text": "keep me"}]}]
    )
    assert (await client.responses.retrieve(made.id)).output_text == made.output_text
    items = await client.responses.input_items.list(made.id)
    assert [item.type for item in items.data] == ["message"]
    deleted = await client.responses.delete(made.id)
    assert deleted is None  # the SDK returns nothing for a 200 delete
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made.id)
    unstored = await client.responses.create(model="sim-model", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_required_tool_is_called_with_json_arguments(
    client: openai.AsyncOpenAI, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": "sim-model",
        "input": "weather?",
        "tools": WEATHER,
        "tool_choice": "required",
    }
    if stream:
        async with client.responses.stream(**request) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(**request)
    [call] = response.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert set(orjson.loads(call.arguments)) == {"city"}


async def test_a_reasoning_model_reports_reasoning_among_its_output(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="sim-reasoner", input="think", max_output_tokens=8)
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    chat = await client.chat.completions.create(
        model="sim-reasoner", messages=[{"role": "user", "content": "think"}], max_completion_tokens=8
    )
    assert chat.usage is not None
    assert chat.usage.completion_tokens_details is not None
    assert chat.usage.completion_tokens_details.reasoning_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_calls_a_required_tool_too(client: openai.AsyncOpenAI, stream: bool) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": WEATHER[0]["name"], "parameters": WEATHER[0]["parameters"]}}
    ]
    request: dict[str, Any] = {"model": "sim-model", "messages": [{"role": "user", "content": "weather?"}],
                               "tools": tools, "tool_choice": "required"}  # fmt: skip
    if stream:
        chunks = [c async for c in await client.chat.completions.create(**request, stream=True)]
        arguments = "".join(
            c.choices[0].delta.tool_calls[0].function.arguments or ""
            for c in chunks
            if c.choices and c.choices[0].delta.tool_calls and c.choices[0].delta.tool_calls[0].function
        )
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["tool_calls"]
    else:
        answer = await client.chat.completions.create(**request)
        assert answer.choices[0].finish_reason == "tool_calls"
        [call] = answer.choices[0].message.tool_calls or []
        assert call.type == "function"
        arguments = call.function.arguments
    assert set(orjson.loads(arguments)) == {"city"}


async def test_bad_input_and_faults_are_openai_errors(
    client: openai.AsyncOpenAI, sim: SimulatorServer
) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="sim-model", input=[])
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="sim-model", input="x", background=True, store=False)
    await set_faults(sim, fail_next=1, error_status=503)
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="sim-model", input="x")


async def test_a_background_response_runs_on_the_simulators_clock_and_can_be_cancelled() -> None:
    clock = FakeClock(1_800_000_000.0)
    # 100 ms to the first token, then 8 tokens at 40 tokens/s: done 300 ms after it was made.
    config = fast_config(ttft_ms=100, ttft_jitter=0, tokens_per_s=40, seed=3)
    async with (
        SimulatorServer(config, clock=clock) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        queued = await client.responses.create(
            model="sim-model", input="later", background=True, max_output_tokens=8
        )
        assert (queued.status, queued.background, queued.output) == ("queued", True, [])
        clock.advance(0.1)
        assert (await client.responses.retrieve(queued.id)).status == "in_progress"
        clock.advance(0.2)
        done = await client.responses.retrieve(queued.id)
        assert done.status == "incomplete"  # it ran to max_output_tokens
        assert done.usage is not None
        assert done.usage.output_tokens == len(done.output_text.split()) == 8
        with pytest.raises(openai.BadRequestError):  # done: nothing left to cancel
            await client.responses.cancel(queued.id)
        other = await client.responses.create(model="sim-model", input="never mind", background=True)
        cancelled = await client.responses.cancel(other.id)
        assert cancelled.status == "cancelled"
        clock.advance(60)
        assert (await client.responses.retrieve(other.id)).status == "cancelled"
        assert (await client.responses.cancel(other.id)).status == "cancelled"  # again: the same answer
