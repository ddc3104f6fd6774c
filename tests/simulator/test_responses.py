"""The simulator's Responses API, driven by the official openai SDK: whole and streamed answers agree,
every event is the SDK's own type, stored responses round-trip, tool calls and reasoning are simulated."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.chat_streams import parsed_events
from tests.support.clocks import FakeClock
from tests.support.simulators import fast_config, set_faults, sim_requests, sim_stats
from tokenyard.simulator.server import SimulatorServer

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ITEMS: TypeAdapter[Any] = TypeAdapter(ResponseItem)
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


async def answered(client: openai.AsyncOpenAI, request: dict[str, Any], stream: bool) -> Response:
    """The Response, whole or as the SDK's stream accumulates it."""
    if stream:
        async with client.responses.stream(**request) as events:
            return await events.get_final_response()
    return await client.responses.create(**request)


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
    response = await answered(client, request, stream)
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


FORMS: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "hourly": {"type": "boolean"},
        "where": {
            "type": "object",
            "properties": {"country": {"type": "string"}, "lat": {"type": "number"}},
            "required": ["country", "lat"],
        },
        "note": {"type": "string"},
    },
    "required": ["unit", "city", "days", "hourly", "where"],
}
FORM_TOOLS: Any = [{"type": "function", "name": "forecast", "parameters": FORMS}]


@pytest.mark.parametrize(
    "request_",
    [
        {"model": "sim-model", "input": "a plain answer"},
        {"model": "sim-model", "input": "a capped answer", "max_output_tokens": 3},
        {"model": "sim-reasoner", "input": "a reasoned answer", "max_output_tokens": 12},
        {"model": "sim-model", "input": "call it", "tools": WEATHER, "tool_choice": "required"},
        {
            "model": "sim-model",
            "input": "call that one",
            "tools": [*WEATHER, *FORM_TOOLS],
            "tool_choice": {"type": "function", "name": "forecast"},
            "max_output_tokens": 2,
        },
    ],
    ids=["text", "capped", "reasoning", "required-tool", "named-tool"],
)
async def test_every_object_and_event_is_the_sdks_own_and_a_stream_counts_what_a_whole_answer_does(
    http: httpx.AsyncClient, request_: dict[str, Any]
) -> None:
    whole = Response.model_validate((await http.post("/v1/responses", json=request_)).json())
    raw = await http.post("/v1/responses", json={**request_, "stream": True})
    events = parsed_events(raw.content, EVENTS)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    assert events[-1].type == f"response.{whole.status}"
    assert final.usage == whole.usage
    assert final.status == whole.status
    # The deltas spell the finished output, text or arguments.
    [item] = final.output
    deltas = "".join(event.delta for event in events if event.type.endswith(".delta"))
    assert deltas == (item.arguments if item.type == "function_call" else final.output_text)
    assert whole.usage is not None
    reasoning = whole.usage.output_tokens // 4 if "reason" in whole.model else 0
    assert whole.usage.output_tokens_details.reasoning_tokens == reasoning
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens
    assert Response.model_validate((await http.get(f"/v1/responses/{whole.id}")).json()) == whole


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_calls_arguments_fill_every_required_property_with_its_type(
    client: openai.AsyncOpenAI, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": "sim-model",
        "input": "forecast",
        "tools": FORM_TOOLS,
        "tool_choice": "required",
        "max_output_tokens": 3,
    }
    response = await answered(client, request, stream)
    [call] = response.output
    assert call.type == "function_call"
    assert call.call_id.startswith("call_")
    arguments = orjson.loads(call.arguments)
    assert arguments["unit"] == "celsius"  # an enum's first value; the words go to the first free string
    assert len(arguments["city"].split()) == 3
    assert (type(arguments["days"]), arguments["hourly"]) == (int, True)
    assert set(arguments["where"]) == {"country", "lat"}
    assert isinstance(arguments["where"]["country"], str)
    assert "note" not in arguments  # optional: left out
    assert response.status == "completed"  # a call is whole however many words filled it


async def test_input_items_list_every_kind_of_item_with_an_id(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    made = await client.responses.create(
        model="sim-model",
        input=[
            {"role": "developer", "content": "answer briefly"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
    )
    items = await client.responses.input_items.list(made.id)
    kinds = ["message", "function_call_output", "function_call", "message", "message"]  # newest first
    assert [item.type for item in items.data] == kinds
    assert len({item.id for item in items.data}) == 5
    page = (await http.get(f"/v1/responses/{made.id}/input_items")).json()
    assert (page["object"], page["has_more"]) == ("list", False)
    assert (page["first_id"], page["last_id"]) == (items.data[0].id, items.data[-1].id)
    for item in page["data"]:
        ITEMS.validate_python(item)
    deleted = await http.delete(f"/v1/responses/{made.id}")
    assert deleted.json() == {"id": made.id, "object": "response.deleted", "deleted": True}
    gone = await http.get(f"/v1/responses/{made.id}/input_items")
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == f"No response found with id '{made.id}'."


async def test_the_responses_api_is_recorded_and_counted_as_requests_and_streams(
    client: openai.AsyncOpenAI, sim: SimulatorServer
) -> None:
    await client.responses.create(model="sim-model", input="whole")
    async with client.responses.stream(model="sim-model", input="streamed") as stream:
        await stream.get_final_response()
    stats = await sim_stats(sim)
    assert (stats["requests_completed"], stats["streams_completed"]) == (1, 1)
    assert stats["by_path"] == {"/v1/responses": 2}
    recorded = await sim_requests(sim)
    assert [(r["method"], r["path"], r["body"]["input"]) for r in recorded] == [
        ("POST", "/v1/responses", "whole"),
        ("POST", "/v1/responses", "streamed"),
    ]


async def test_chat_tool_calls_and_reasoning_are_the_sdks_own_chunks_with_the_whole_answers_usage(
    http: httpx.AsyncClient,
) -> None:
    tools: Any = [{"type": "function", "function": {"name": "forecast", "parameters": FORMS}}]
    request: dict[str, Any] = {
        "model": "sim-reasoner",
        "messages": [{"role": "user", "content": "forecast please"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "forecast"}},
        "max_completion_tokens": 8,
    }
    whole = ChatCompletion.model_validate((await http.post("/v1/chat/completions", json=request)).json())
    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    raw = (await http.post("/v1/chat/completions", json=streamed)).content
    chunks = [
        ChatCompletionChunk.model_validate_json(block.removeprefix(b"data: "))
        for block in raw.split(b"\n\n")
        if block and block != b"data: [DONE]"
    ]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id is not None
    assert (calls[0].id[:5], calls[0].type) == ("call_", "function")
    assert calls[0].function is not None
    assert calls[0].function.name == "forecast"
    assert all(call.index == 0 and call.id is None for call in calls[1:])
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert set(orjson.loads(arguments)) == {"unit", "city", "days", "hourly", "where"}
    assert chunks[-1].usage == whole.usage
    assert whole.usage is not None
    assert whole.usage.completion_tokens_details is not None
    assert whole.usage.completion_tokens_details.reasoning_tokens == 2
    assert whole.choices[0].finish_reason == "tool_calls"
