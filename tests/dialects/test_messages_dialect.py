"""Anthropic's Messages API over chat completions, checked against the anthropic SDK's types and its own
stream accumulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from tests.support.chat_streams import HEAD, USAGE, chat_stream, chunk, parsed_events
from tokenyard.dialects import messages
from tokenyard.errors import InvalidRequest

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
# USAGE in Anthropic's words: its input_tokens leave out the cache reads.
ANTHROPIC_USAGE = {
    "input_tokens": 7,
    "cache_read_input_tokens": 4,
    "cache_creation_input_tokens": 0,
    "output_tokens": 5,
}


def sdk_client(handler: Callable[[dict[str, Any]], httpx2.Response]) -> anthropic.Anthropic:
    """The real anthropic SDK (over httpx2, as this version is), its transport answering with ``handler``."""
    transport = httpx2.MockTransport(lambda request: handler(orjson.loads(request.content)))
    return anthropic.Anthropic(
        api_key="k", base_url="http://yard", http_client=httpx2.Client(transport=transport)
    )


def accumulated(raw: bytes) -> Any:
    """The message the anthropic SDK accumulates from these events (each checked to be one of its types)."""
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    for event in parsed_events(raw, EVENTS):
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return snapshot


# -- the request -------------------------------------------------------------------------------------------


def test_the_request_carries_what_chat_can_say() -> None:
    chat = messages.to_chat(
        {
            "model": "claude",
            "max_tokens": 12,
            "temperature": 0.3,
            "top_p": 0.9,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "thanks"},
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "sunny"}]},
                ]},
            ],
            "stop_sequences": ["END"],
            "stream": True,
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral"}}],
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
        # The tool's answer must follow the call it answers, so it goes before the rest of the turn.
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    assert chat["max_completion_tokens"] == 12
    assert (chat["temperature"], chat["top_p"]) == (0.3, 0.9)
    assert chat["stop"] == ["END"]
    assert chat["user"] == "u-1"
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["tool_choice"] == "required"
    assert chat["parallel_tool_calls"] is False
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}, "description": "d"},
        }
    ]
    assert not {"max_tokens", "system", "metadata", "stop_sequences", "thinking"} & chat.keys()


@pytest.mark.parametrize(
    ("choice", "chat_choice"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "any"}, "required"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_each_tool_choice_has_its_chat_twin(choice: dict[str, Any], chat_choice: Any) -> None:
    request = {
        "max_tokens": 1,
        "messages": [],
        "tools": [{"name": "f", "input_schema": {}}],
        "tool_choice": choice,
    }
    chat = messages.to_chat(request)
    assert chat["tool_choice"] == chat_choice
    assert "parallel_tool_calls" not in chat
    # Without tools, OpenAI's chat endpoint refuses a tool choice: none is sent.
    assert "tool_choice" not in messages.to_chat({**request, "tools": []})


def test_images_go_as_image_urls() -> None:
    chat = messages.to_chat(
        {
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}},
                {"type": "text", "text": "what are these?", "cache_control": {"type": "ephemeral"}},
            ]}],
        }
    )  # fmt: skip
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
        {"type": "text", "text": "what are these?"},
    ]}]  # fmt: skip


def test_everything_it_cannot_carry_is_named_in_one_400() -> None:
    with pytest.raises(InvalidRequest) as refused:
        messages.to_chat(
            {
                "model": "claude",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [
                    {"type": "document", "source": {}},
                    {"type": "search_result", "source": "s", "title": "t", "content": []},
                ]}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "top_k": 5,
                "container": "c",
                "mcp_servers": [{"type": "url", "url": "https://m", "name": "m"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"},
                          {"name": "f", "input_schema": {}}],
            }
        )  # fmt: skip
    for named in (
        "messages[0].content[0].type 'document'",
        "messages[0].content[1].type 'search_result'",
        "thinking",
        "top_k",
        "container",
        "mcp_servers",
        "tools[0].type 'web_search_20250305'",
    ):
        assert named in refused.value.message
    assert "tools[1]" not in refused.value.message
    assert refused.value.param == "messages[0].content[0].type"


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        ({}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [], "system": 3}, "system"),
        ({"messages": [], "tools": "f"}, "tools"),
    ],
)
def test_malformed_requests_are_400s_with_their_param(bad: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        messages.to_chat({"max_tokens": 5, **bad})
    assert refused.value.param == param


@given(st.text(), st.text())
def test_any_text_goes_there_and_back(system: str, text: str) -> None:
    chat = messages.to_chat(
        {"max_tokens": 1, "system": system, "messages": [{"role": "user", "content": text}]}
    )
    assert chat["messages"] == [{"role": "system", "content": system}, {"role": "user", "content": text}]
    answer = {**HEAD, "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": text}}]}
    message = Message.model_validate(messages.from_chat(answer, {}, message_id="msg_1"))
    assert "".join(block.text for block in message.content if block.type == "text") == text


# -- the whole answer --------------------------------------------------------------------------------------


def test_a_whole_answer_is_a_message_the_sdk_reads_with_cache_reads_apart() -> None:
    answer = {
        **HEAD,
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
                        {"id": "call_3", "type": "function", "function": {"name": "h", "arguments": ""}},
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
    body = messages.from_chat(answer, {"model": "claude"}, message_id="msg_1")
    message = Message.model_validate(body)
    assert (message.id, message.model, message.role, message.type) == (
        "msg_1",
        "small",
        "assistant",
        "message",
    )
    assert (message.stop_reason, message.stop_sequence) == ("tool_use", None)
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use", "tool_use"]
    assert [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"] == [
        ("call_1", "f", {"a": 1}),
        ("call_2", "g", {"_arguments": "not json"}),  # kept as text rather than lost
        ("call_3", "h", {}),
    ]
    # Anthropic's input_tokens leave out cache reads: together they are the chat prompt.
    assert body["usage"] == ANTHROPIC_USAGE


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")],
)
def test_each_finish_reason_has_its_stop_reason(finish: str | None, stop_reason: str) -> None:
    answer = {**HEAD, "choices": [{"index": 0, "finish_reason": finish, "message": {"content": "x"}}]}
    message = Message.model_validate(messages.from_chat(answer, {}, message_id="m"))
    assert message.stop_reason == stop_reason
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)  # no chat usage: zeros


def test_the_sdk_reads_a_translated_answer_end_to_end() -> None:
    seen: list[dict[str, Any]] = []

    def backend(body: dict[str, Any]) -> httpx2.Response:
        seen.append(messages.to_chat(body))
        answer = {**HEAD, "usage": USAGE, "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"content": "bonjour"}}
        ]}  # fmt: skip
        return httpx2.Response(200, json=messages.from_chat(answer, body, message_id="msg_1"))

    with sdk_client(backend) as client:
        message = client.messages.create(
            model="claude", max_tokens=5, system="in French", messages=[{"role": "user", "content": "hello"}]
        )
    assert [block.text for block in message.content if block.type == "text"] == ["bonjour"]
    assert seen[0]["messages"] == [
        {"role": "system", "content": "in French"},
        {"role": "user", "content": "hello"},
    ]


# -- the stream --------------------------------------------------------------------------------------------


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12), st.integers(1, 6), st.booleans())
def test_a_stream_of_any_grouping_is_what_the_sdk_accumulates(
    words: list[str], group: int, calls: bool
) -> None:
    stream = chat_stream(words, calls=calls, finish="tool_calls" if calls else "length")
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    converter = messages.MessagesStream({"model": "claude"}, message_id="msg_s")
    raw = b"".join(converter.feed(b"".join(events[i : i + group])) for i in range(0, len(events), group))
    assert converter.done
    types = [event.type for event in parsed_events(raw, EVENTS)]
    assert (types[0], types[-2:]) == ("message_start", ["message_delta", "message_stop"])
    assert types.count("content_block_start") == types.count("content_block_stop") == (2 if calls else 1)
    snapshot = accumulated(raw)
    assert snapshot.content[0].type == "text"
    assert snapshot.content[0].text == "".join(words)
    assert snapshot.stop_reason == ("tool_use" if calls else "max_tokens")
    # The SDK's final usage is the chat usage as from_chat says it.
    assert snapshot.usage.model_dump(include=set(ANTHROPIC_USAGE)) == ANTHROPIC_USAGE
    if calls:
        assert snapshot.content[1].type == "tool_use"
        assert (snapshot.content[1].id, snapshot.content[1].name) == ("call_1", "f")
        assert snapshot.content[1].input == {"city": "Paris"}


def test_a_stream_ends_as_the_whole_answer_would_be() -> None:
    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    chunks = [
        chunk({"role": "assistant", "content": "let "}),
        chunk({"content": "me see"}),
        chunk({"tool_calls": [head]}),
        chunk({"tool_calls": [{**head, "function": {"name": "f", "arguments": '{"a"'}}]}),  # a repeated head
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, "tool_calls"),
        {**HEAD, "choices": [], "usage": USAGE},
    ]
    raw = messages.MessagesStream({}, message_id="msg_1").feed(
        b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
        + b": bye\r\n\r\ndata: [DONE]\r\n\r\n"
    )
    call = {"id": "call_1", "function": {"name": "f", "arguments": '{"a": 1}'}}
    message = {"content": "let me see", "tool_calls": [call]}
    whole = {
        **HEAD,
        "usage": USAGE,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
    }
    expected = Message.model_validate(messages.from_chat(whole, {}, message_id="msg_1"))
    fields = set(Message.model_fields)
    assert accumulated(raw).model_dump(mode="json", include=fields, exclude_none=True) == expected.model_dump(
        mode="json", exclude_none=True
    )


def test_the_sdk_streams_a_translated_answer_end_to_end() -> None:
    def backend(body: dict[str, Any]) -> httpx2.Response:
        assert messages.to_chat(body)["stream_options"] == {"include_usage": True}
        raw = messages.MessagesStream(body, message_id="msg_1").feed(chat_stream(["Bon", "jour"]))
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    with (
        sdk_client(backend) as client,
        client.messages.stream(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Bonjour"
    assert [block.text for block in final.content if block.type == "text"] == ["Bonjour"]
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (
        7,
        4,
        5,
    )


@pytest.mark.parametrize("error", [b'{"error": {"message": "boom"}}', b'{"error": "boom"}'])
def test_an_error_mid_stream_is_anthropics_error_event(error: bytes) -> None:
    converter = messages.MessagesStream({"model": "claude"}, message_id="m")
    raw = converter.feed(b"data: " + orjson.dumps(chunk({"content": "a"})) + b"\n\n")
    raw += converter.feed(b"data: " + error + b"\n\n")
    assert converter.done
    assert converter.feed(b"data: [DONE]\n\n") == b""
    before, last = raw.rsplit(b"event: ", 1)
    assert [event.type for event in parsed_events(before, EVENTS)][-1] == "content_block_delta"
    assert last.startswith(b"error\n")
    read = ErrorResponse.model_validate_json(last.split(b"data: ", 1)[1])  # how the SDK reads it
    assert (read.error.type, read.error.message) == ("api_error", "boom")


def test_count_tokens_estimate_reads_system_messages_and_tools() -> None:
    request = {
        "system": "s" * 40,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "t" * 40}]}],
    }
    assert messages.count_tokens_estimate(request) == 20
    tool = {"name": "f", "input_schema": {"type": "object"}}
    assert messages.count_tokens_estimate({**request, "tools": [tool]}) == 20 + -(
        -len(orjson.dumps([tool])) // 4
    )
    assert messages.count_tokens_estimate({"messages": []}) == 1
    assert messages.count_tokens_estimate({"messages": [{"role": "user", "content": "abcde"}]}) == 2
