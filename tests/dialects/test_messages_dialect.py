"""Anthropic's Messages API over chat completions, checked against the anthropic SDK's types and its own
stream accumulator."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from tests.support.chat_streams import USAGE, chat_stream, chunk, parsed_events
from tokenyard.dialects import messages
from tokenyard.errors import InvalidRequest

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def test_the_request_carries_what_chat_can_say() -> None:
    chat = messages.to_chat(
        {
            "model": "claude",
            "max_tokens": 12,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "thanks"},
                ]},
            ],
            "stop_sequences": ["END"],
            "stream": True,
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "thinking": {"type": "disabled"},
        }
    )  # fmt: skip
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "checking", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    assert chat["max_completion_tokens"] == 12
    assert chat["stop"] == ["END"]
    assert chat["user"] == "u-1"
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["tool_choice"] == "required"
    assert chat["parallel_tool_calls"] is False
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"}


def test_everything_it_cannot_carry_is_named_in_one_400() -> None:
    with pytest.raises(InvalidRequest) as refused:
        messages.to_chat(
            {
                "model": "claude",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "top_k": 5,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            }
        )
    for named in ("messages[0].content[0].type 'document'", "thinking", "top_k", "web_search_20250305"):
        assert named in refused.value.message


def test_a_whole_answer_is_a_message_the_sdk_reads_with_cache_reads_apart() -> None:
    answer = {
        "id": "c",
        "model": "small",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "content": "let me see",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": "not json"},
                        },
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
    message = Message.model_validate(messages.from_chat(answer, {"model": "claude"}, message_id="msg_1"))
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"a": 1}  # type: ignore[union-attr]
    assert message.content[2].input == {"_arguments": "not json"}  # type: ignore[union-attr]
    # Anthropic's input_tokens leave out cache reads: together they are the chat prompt.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (7, 4)
    assert message.usage.output_tokens == 5


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12), st.integers(1, 6), st.booleans())
def test_a_stream_of_any_grouping_is_what_the_sdk_accumulates(
    words: list[str], group: int, calls: bool
) -> None:
    stream = chat_stream(words, calls=calls, finish="tool_calls" if calls else "length")
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    converter = messages.MessagesStream({"model": "claude"}, message_id="msg_s")
    raw = b"".join(converter.feed(b"".join(events[i : i + group])) for i in range(0, len(events), group))
    assert converter.done
    snapshot, buffers = None, {}
    for event in parsed_events(raw, EVENTS):
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    assert snapshot.content[0].type == "text"
    assert snapshot.content[0].text == "".join(words)
    assert snapshot.stop_reason == ("tool_use" if calls else "max_tokens")
    assert (snapshot.usage.input_tokens, snapshot.usage.cache_read_input_tokens) == (7, 4)
    assert snapshot.usage.output_tokens == 5
    if calls:
        assert snapshot.content[1].type == "tool_use"
        assert snapshot.content[1].input == {"city": "Paris"}


def test_an_error_mid_stream_is_anthropics_error_event() -> None:
    converter = messages.MessagesStream({"model": "claude"}, message_id="m")
    raw = converter.feed(b"data: " + orjson.dumps(chunk({"content": "a"})) + b"\n\n")
    raw += converter.feed(b'data: {"error": {"message": "boom"}}\n\n')
    assert converter.done
    assert orjson.loads(raw.rsplit(b"data: ", 1)[1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
    }


def test_count_tokens_estimate_reads_system_messages_and_tools() -> None:
    request = {
        "system": "s" * 40,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "t" * 40}]}],
    }
    assert messages.count_tokens_estimate(request) == 20
    assert messages.count_tokens_estimate({"messages": []}) == 1
