"""The Responses API over chat completions, checked against the openai SDK's own types and accumulator."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.chat_streams import HEAD, USAGE, chat_stream, chunk, parsed_events
from tokenyard.dialects import responses
from tokenyard.errors import InvalidRequest

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def feed_split(stream: bytes, cuts: list[int], converter: responses.ResponsesStream) -> bytes:
    """Feed whole events only (as the proxy's tap does), grouped by the cuts."""
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    out, at = b"", 0
    for size in cuts:
        out += converter.feed(b"".join(events[at : at + size]))
        at += size
    return out + converter.feed(b"".join(events[at:]))


def test_the_request_carries_what_chat_can_say() -> None:
    chat = responses.to_chat(
        {
            "model": "m",
            "instructions": "be brief",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "hi "},
                        {"type": "input_text", "text": "there"},
                    ],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"role": "developer", "content": "rules"},
            ],
            "max_output_tokens": 9,
            "temperature": 0.2,
            "stream": True,
            "store": False,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"},
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "system", "content": "rules"},
    ]  # fmt: skip
    assert chat["max_completion_tokens"] == 9
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}},
    }
    assert chat["reasoning_effort"] == "low"
    assert "store" not in chat


def test_everything_it_cannot_carry_is_named_in_one_400() -> None:
    with pytest.raises(InvalidRequest) as refused:
        responses.to_chat(
            {
                "model": "m",
                "input": [{"type": "item_reference", "id": "x"}],
                "previous_response_id": "resp_1",
                "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
                "include": ["file_search_call.results"],
                "truncation": "auto",
                "background": True,
            }
        )
    message = refused.value.message
    for named in ("input[0].type 'item_reference'", "previous_response_id", "tools[0].type 'web_search'",
                  "include", "truncation", "background"):  # fmt: skip
        assert named in message
    assert refused.value.param == "input[0].type"
    # Nulls are absent, and plain settings pass.
    assert responses.to_chat(
        {"model": "m", "input": "x", "previous_response_id": None, "truncation": "disabled"}
    )


@pytest.mark.parametrize(
    "bad", [{"input": 3}, {"input": [{"role": "robot", "content": "x"}]}, {"input": ["x"]}]
)
def test_malformed_input_is_a_400_with_its_param(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as refused:
        responses.to_chat({"model": "m", **bad})
    assert str(refused.value.param).startswith("input")


def test_a_whole_answer_is_a_response_the_sdk_reads() -> None:
    answer = {
        **HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "checking",
                    "reasoning_content": "think",
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
    request = {"model": "m", "input": "hi", "max_output_tokens": 20}
    response = Response.model_validate(
        responses.from_chat(answer, request, response_id="resp_x", created_at=7)
    )
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert response.output_text == "checking"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 5)
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    assert response.max_output_tokens == 20


def test_an_answer_cut_at_the_limit_is_incomplete() -> None:
    answer = {**HEAD, "choices": [{"index": 0, "finish_reason": "length", "message": {"content": "ab"}}]}
    response = Response.model_validate(
        responses.from_chat(answer, {"input": "x"}, response_id="r", created_at=1)
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is None


@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12),
    st.lists(st.integers(0, 4), max_size=10),
    st.booleans(),
)
def test_a_stream_of_any_split_is_what_the_sdk_accumulates(
    words: list[str], cuts: list[int], calls: bool
) -> None:
    request: dict[str, Any] = {"model": "m", "input": "x", "stream": True}
    stream = chat_stream(words, calls=calls, finish="tool_calls" if calls else "stop")
    converter = responses.ResponsesStream(request, response_id="resp_s", created_at=3)
    raw = feed_split(stream, cuts, converter)
    assert converter.done
    events = parsed_events(raw, EVENTS)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(event)
    final = events[-1].response
    assert final.output_text == "".join(words)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "".join(words)
    assert final.usage is not None
    assert final.usage.input_tokens == 11
    if calls:
        [call] = [item for item in final.output if item.type == "function_call"]
        assert (call.name, call.arguments, call.call_id) == ("f", '{"city": "Paris"}', "call_1")
    # The same stream whole gives the same answer.
    again = responses.ResponsesStream(request, response_id="resp_s", created_at=3)
    assert parsed_events(again.feed(stream), EVENTS)[-1].response.output_text == final.output_text


def test_an_error_mid_stream_is_an_error_event_the_sdk_raises_on() -> None:
    converter = responses.ResponsesStream({"model": "m"}, response_id="r", created_at=1)
    raw = converter.feed(b"data: " + orjson.dumps(chunk({"content": "a"})) + b"\n\n")
    raw += converter.feed(b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n')
    assert converter.done
    events = parsed_events(raw, EVENTS)
    assert events[-1].type == "error"
    assert events[-1].message == "boom"
    assert orjson.loads(raw.rsplit(b"data: ", 1)[1])["error"]["message"] == "boom"
