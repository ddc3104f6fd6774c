"""The simulator's Messages API, driven by the official anthropic SDK: whole and streamed answers agree,
every event is the SDK's own type, prompt caching writes then reads, errors come in Anthropic's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.support.chat_streams import parsed_events
from tests.support.simulators import root_url, set_faults, sim_requests, sim_stats, start_sim
from tokenyard.simulator.server import SimulatorServer

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
HELLO: Any = [{"role": "user", "content": "hello there simulator"}]


@pytest.fixture
async def claude(sim: SimulatorServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=root_url(sim), api_key="sk-ant", max_retries=0) as sdk:
        yield sdk


async def test_a_whole_and_a_streamed_message_agree(
    claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    whole = await claude.messages.create(model="sim-model", max_tokens=6, system="be brief", messages=HELLO)
    assert whole.stop_reason == "max_tokens"
    assert whole.usage.input_tokens == 5
    assert whole.usage.output_tokens == 6
    assert (whole.usage.cache_read_input_tokens, whole.usage.cache_creation_input_tokens) == (0, 0)
    async with claude.messages.stream(
        model="sim-model", max_tokens=6, system="be brief", messages=HELLO
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == final.content[0].text  # type: ignore[union-attr]
    assert len(text.split()) == 6
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    raw = await http.post(
        "/v1/messages", json={"model": "sim-model", "max_tokens": 3, "messages": HELLO, "stream": True}
    )
    kinds = [
        EVENTS.validate_python(orjson.loads(b.split(b"data: ", 1)[1])).type
        for b in raw.content.split(b"\n\n")
        if b
    ]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]


async def test_a_marked_prefix_is_written_once_then_read(
    claude: anthropic.AsyncAnthropic, sim: SimulatorServer
) -> None:
    system: Any = [
        {"type": "text", "text": "a long stable prompt " * 10, "cache_control": {"type": "ephemeral"}}
    ]
    first = await claude.messages.create(model="sim-model", max_tokens=2, system=system, messages=HELLO)
    second = await claude.messages.create(model="sim-model", max_tokens=2, system=system, messages=HELLO)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (40, 0)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, 40)
    assert first.usage.input_tokens == second.usage.input_tokens == 3  # the rest: the user's words
    sim.app.state.reset()  # the cache goes with a reset
    again = await claude.messages.create(model="sim-model", max_tokens=2, system=system, messages=HELLO)
    assert again.usage.cache_creation_input_tokens == 40


async def test_count_tokens_is_the_input_a_message_reports(claude: anthropic.AsyncAnthropic) -> None:
    counted = await claude.messages.count_tokens(model="sim-model", system="be brief", messages=HELLO)
    message = await claude.messages.create(model="sim-model", max_tokens=2, system="be brief", messages=HELLO)
    assert counted.input_tokens == message.usage.input_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_a_required_tool_is_a_tool_use_block(claude: anthropic.AsyncAnthropic, stream: bool) -> None:
    request: Any = {
        "model": "sim-model",
        "max_tokens": 50,
        "messages": HELLO,
        "tools": [
            {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
        ],
        "tool_choice": {"type": "any"},
    }
    if stream:
        async with claude.messages.stream(**request) as events:
            message = await events.get_final_message()
    else:
        message = await claude.messages.create(**request)
    [block] = message.content
    assert block.type == "tool_use"
    assert block.name == "lookup"
    assert set(block.input) == {"q"}  # type: ignore[arg-type]
    assert message.stop_reason == "tool_use"


async def test_errors_and_faults_are_anthropic_shaped(
    claude: anthropic.AsyncAnthropic, sim: SimulatorServer
) -> None:
    async with httpx.AsyncClient(base_url=root_url(sim)) as http:
        missing = await http.post("/v1/messages", json={"model": "sim-model", "messages": HELLO})
    assert missing.status_code == 400
    assert missing.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    await set_faults(sim, fail_next=1, error_status=529)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await claude.messages.create(model="sim-model", max_tokens=2, messages=HELLO)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


LOOKUP: Any = [
    {
        "name": "lookup",
        "input_schema": {
            "type": "object",
            "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["q", "limit"],
        },
    }
]
LONG_SYSTEM = "a long stable prompt " * 10  # 40 words
EPHEMERAL: Any = {"type": "ephemeral"}


def final_usage(events: list[Any]) -> dict[str, Any]:
    """A stream's usage as the SDK accumulates it: message_start's, output tokens from message_delta."""
    start = events[0].message.usage.model_dump(exclude_none=True)
    return {**start, "output_tokens": events[-2].usage.output_tokens}


@pytest.mark.parametrize(
    "request_",
    [
        {"model": "sim-model", "max_tokens": 5, "system": "be brief", "messages": HELLO},
        {"model": "sim-model", "max_tokens": 500, "messages": HELLO},
        {
            "model": "sim-model",
            "max_tokens": 3,
            "messages": HELLO,
            "tools": LOOKUP,
            "tool_choice": {"type": "any"},
        },
        {
            "model": "sim-model",
            "max_tokens": 4,
            "messages": HELLO,
            "tools": LOOKUP,
            "tool_choice": {"type": "tool", "name": "lookup"},
        },
    ],
    ids=["capped", "end-turn", "any-tool", "named-tool"],
)
async def test_every_message_and_event_is_the_sdks_own_and_a_stream_counts_what_a_whole_answer_does(
    http: httpx.AsyncClient, request_: dict[str, Any]
) -> None:
    whole = Message.model_validate((await http.post("/v1/messages", json=request_)).json())
    assert whole.id.startswith("msg_")
    raw = await http.post("/v1/messages", json={**request_, "stream": True})
    events = parsed_events(raw.content, EVENTS)
    assert [e.type for e in events[:2]] == ["message_start", "content_block_start"]
    assert [e.type for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.usage.output_tokens == 1
    assert events[-2].delta.stop_reason == whole.stop_reason
    assert final_usage(events) == whole.usage.model_dump(exclude_none=True)
    [block] = whole.content
    if block.type == "tool_use":
        assert whole.stop_reason == "tool_use"
        assert block.id.startswith("toolu_")
        assert set(block.input) == {"q", "limit"}
        assert type(block.input["limit"]) is int
        pieces = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta")
        assert set(orjson.loads(pieces)) == {"q", "limit"}
    else:
        cap = request_["max_tokens"]
        assert whole.stop_reason == ("max_tokens" if whole.usage.output_tokens == cap else "end_turn")
        assert "".join(e.delta.text for e in events if e.type == "content_block_delta").split() != []


async def test_a_prefix_marked_anywhere_is_cached_per_model_until_a_reset(
    claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    system: Any = [{"type": "text", "text": LONG_SYSTEM}]
    marked: Any = [
        {"role": "user", "content": [{"type": "text", "text": "hello there", "cache_control": EPHEMERAL}]},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "and now?"},
    ]  # fmt: skip

    async def usage(model: str = "sim-model", **extra: Any) -> tuple[int, int, int]:
        made = await claude.messages.create(
            model=model, max_tokens=1, system=system, messages=marked, **extra
        )
        got = made.usage
        return got.input_tokens, got.cache_creation_input_tokens or 0, got.cache_read_input_tokens or 0

    # Prefix: the system's 40 words and the marked block's 2; the rest (3) is input.
    assert await usage() == (3, 42, 0)
    assert await usage() == (3, 0, 42)
    assert await usage("sim-other") == (3, 42, 0)  # per model
    tools: Any = [{**LOOKUP[0], "cache_control": EPHEMERAL}]
    written = await usage(tools=tools)  # tools come first: a new prefix, and the rest beyond the tool
    counted = await claude.messages.count_tokens(
        model="sim-model", system=system, messages=marked, tools=tools
    )
    assert written == (3, counted.input_tokens - 3, 0)  # the tool joins the prefix the message block ends
    assert (await http.post("/sim/reset")).status_code == 200
    assert await usage() == (3, 42, 0)


async def test_count_tokens_equals_input_tokens_with_tools_and_system_blocks(
    claude: anthropic.AsyncAnthropic,
) -> None:
    request: Any = {
        "model": "sim-model",
        "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "and kind"}],
        "messages": [*HELLO, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}],
        "tools": LOOKUP,
    }
    counted = await claude.messages.count_tokens(**request)
    message = await claude.messages.create(max_tokens=2, **request)
    assert counted.input_tokens == message.usage.input_tokens > 0


async def test_every_error_on_the_messages_api_is_anthropic_shaped() -> None:
    async with (
        start_sim(models=["sim-model"]) as sim,
        httpx.AsyncClient(base_url=root_url(sim)) as http,
        anthropic.AsyncAnthropic(base_url=root_url(sim), api_key="sk-ant", max_retries=0) as claude,
    ):
        unknown = {"model": "sim-unknown", "max_tokens": 2, "messages": HELLO}
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            missing = await http.post(path, json=unknown)
            assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")
        for bad in ({"model": "sim-model", "max_tokens": 0, "messages": HELLO}, {"model": "sim-model"}):
            refused = await http.post("/v1/messages", json=bad)
            assert (refused.status_code, refused.json()["error"]["type"]) == (400, "invalid_request_error")
        wrong_method = await http.get("/v1/messages")
        assert (wrong_method.status_code, wrong_method.json()["type"]) == (405, "error")
        for status, kind, raised in [
            (429, "rate_limit_error", anthropic.RateLimitError),
            (500, "api_error", anthropic.InternalServerError),
            (529, "overloaded_error", anthropic.APIStatusError),
        ]:
            await set_faults(sim, fail_next=1, error_status=status, retry_after_s=2)
            with pytest.raises(raised) as failed:
                await claude.messages.create(model="sim-model", max_tokens=2, messages=HELLO)
            assert failed.value.status_code == status
            assert failed.value.body == {"type": "error", "error": {"type": kind, "message": ANY}}
        # A fault on a stream is answered before it starts, in the same shape.
        await set_faults(sim, fail_next=1, error_status=529)
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            async with claude.messages.stream(model="sim-model", max_tokens=2, messages=HELLO) as stream:
                await stream.get_final_message()
        assert overloaded.value.status_code == 529
        stats = (await http.get("/sim/stats")).json()
        assert stats["errors_injected"] == 4
        assert stats["by_path"]["/v1/messages"] == 8  # the GET and the refused bodies too


async def test_messages_are_recorded_and_counted_as_requests_and_streams(
    claude: anthropic.AsyncAnthropic, sim: SimulatorServer
) -> None:
    await claude.messages.create(model="sim-model", max_tokens=2, messages=HELLO)
    async with claude.messages.stream(model="sim-model", max_tokens=2, messages=HELLO) as stream:
        await stream.get_final_message()
    stats = await sim_stats(sim)
    assert (stats["requests_completed"], stats["streams_completed"]) == (1, 1)
    assert [(r["method"], r["path"]) for r in await sim_requests(sim)] == [("POST", "/v1/messages")] * 2
