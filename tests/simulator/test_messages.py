"""The simulator's Messages API, driven by the official anthropic SDK: whole and streamed answers agree,
every event is the SDK's own type, prompt caching writes then reads, errors come in Anthropic's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.support.simulators import root_url, set_faults
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
