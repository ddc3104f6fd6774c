"""The Responses API over chat completions, checked against the openai SDK's own types and accumulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import openai
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
CALLS = [("call_a", "f", '{"x": 1}'), ("call_b", "g", "{}")]


def feed_split(stream: bytes, cuts: list[int], converter: responses.ResponsesStream) -> bytes:
    """Feed whole events only (as the proxy's tap does), grouped by the cuts."""
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    out, at = b"", 0
    for size in cuts:
        out += converter.feed(b"".join(events[at : at + size]))
        at += size
    return out + converter.feed(b"".join(events[at:]))


def rich_answer(
    text: str, reasoning: str, refusal: str, finish: str = "tool_calls"
) -> tuple[dict[str, Any], bytes]:
    """One chat answer, whole and as the stream a backend would send: reasoning, text, refusal, two calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in CALLS
    ]}  # fmt: skip
    if reasoning:
        message["reasoning_content"] = reasoning
    if refusal:
        message["refusal"] = refusal
    whole = {**HEAD, "object": "chat.completion", "usage": USAGE,
             "choices": [{"index": 0, "finish_reason": finish, "message": message}]}  # fmt: skip
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": piece}) for piece in _halves(reasoning)]
    chunks += [chunk({"content": piece}) for piece in _halves(text)]
    chunks += [chunk({"refusal": piece}) for piece in _halves(refusal)]
    for index, (call_id, name, arguments) in enumerate(CALLS):
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        chunks.append(chunk({"tool_calls": [head]}))
        for piece in _halves(arguments):
            chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    chunks += [chunk({}, finish), {**HEAD, "choices": [], "usage": USAGE}]
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return whole, stream


def _halves(text: str) -> list[str]:
    return [piece for piece in (text[: len(text) // 2], text[len(text) // 2 :]) if piece]


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    """A Response with its output items' own ids blanked (each translation makes fresh ones)."""
    return {**response, "output": [{**item, "id": None} for item in response["output"]]}


def sdk_client(handler: Callable[[dict[str, Any]], httpx2.Response]) -> openai.OpenAI:
    """The real openai SDK, its transport answering each request body with ``handler``."""
    transport = httpx2.MockTransport(lambda request: handler(orjson.loads(request.content)))
    return openai.OpenAI(
        api_key="k", base_url="http://yard/v1", http_client=httpx2.Client(transport=transport)
    )


# -- the request -------------------------------------------------------------------------------------------


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
            "top_p": 0.5,
            "user": "u",
            "parallel_tool_calls": False,
            "stream": True,
            "store": False,
            "metadata": {"k": "v"},
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
    assert (chat["temperature"], chat["top_p"], chat["user"], chat["parallel_tool_calls"]) == (
        0.2,
        0.5,
        "u",
        False,
    )
    assert chat["stream"] is True
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
    assert not {"store", "metadata", "max_output_tokens", "text", "reasoning"} & chat.keys()


def test_images_message_items_and_plain_formats_carry() -> None:
    chat = responses.to_chat(
        {
            "model": "m",
            "input": [
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ]},
                {"type": "message", "role": "assistant", "status": "completed", "id": "msg_1",
                 "content": [{"type": "output_text", "text": "a cat", "annotations": []}]},
            ],
            "text": {"format": {"type": "json_object"}},
            "tool_choice": "required",
            "tools": [{"type": "function", "name": "f"}],
        }
    )  # fmt: skip
    assert chat["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]},
        {"role": "assistant", "content": "a cat"},
    ]  # fmt: skip
    assert chat["response_format"] == {"type": "json_object"}
    assert chat["tool_choice"] == "required"
    assert "response_format" not in responses.to_chat({"input": "x", "text": {"format": {"type": "text"}}})


def test_nulls_are_absent_and_settings_asking_for_nothing_pass() -> None:
    chat = responses.to_chat(
        {
            "model": "m",
            "input": "x",
            "previous_response_id": None,
            "conversation": None,
            "instructions": None,
            "truncation": "disabled",
            "background": False,
            "include": [],
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "reasoning": {"summary": "auto"},
            "stream": False,
        }
    )
    # OpenAI's chat endpoint refuses a tool choice without tools, so neither goes.
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def test_everything_it_cannot_carry_is_named_in_one_400() -> None:
    with pytest.raises(InvalidRequest) as refused:
        responses.to_chat(
            {
                "model": "m",
                "input": [
                    {"type": "item_reference", "id": "x"},
                    {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
                ],
                "previous_response_id": "resp_1",
                "conversation": "conv_1",
                "prompt": {"id": "pmpt_1"},
                "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}, {"type": "file_search"}],
                "include": ["file_search_call.results"],
                "truncation": "auto",
                "background": True,
            }
        )
    message = refused.value.message
    assert "chat completions only" in message
    for named in (
        "input[0].type 'item_reference'",
        "input[1].content[0].type 'input_file'",
        "previous_response_id",
        "conversation",
        "prompt",
        "tools[0].type 'web_search'",
        "tools[2].type 'file_search'",
        "include",
        "truncation",
        "background",
    ):
        assert named in message
    assert "tools[1]" not in message
    assert refused.value.param == "input[0].type"


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        ({"input": 3}, "input"),
        ({}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": ["x"]}, "input[0]"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": "x", "tools": {"type": "function"}}, "tools"),
    ],
)
def test_malformed_input_is_a_400_with_its_param(bad: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        responses.to_chat({"model": "m", **bad})
    assert refused.value.param == param


@given(st.text())
def test_any_text_goes_there_and_back(text: str) -> None:
    assert responses.to_chat({"input": text})["messages"] == [{"role": "user", "content": text}]
    answer = {**HEAD, "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": text}}]}
    response = Response.model_validate(responses.from_chat(answer, {}, response_id="r", created_at=1))
    assert response.output_text == text


# -- the whole answer --------------------------------------------------------------------------------------


def test_a_whole_answer_is_a_response_the_sdk_reads() -> None:
    answer, _ = rich_answer("checking", "think", "")
    request = {"model": "m", "input": "hi", "max_output_tokens": 20, "temperature": None}
    body = responses.from_chat(answer, request, response_id="resp_x", created_at=7)
    response = Response.model_validate(body)
    assert (response.id, response.created_at, response.model, response.object) == (
        "resp_x",
        7,
        "small",
        "response",
    )
    assert response.status == "completed"
    assert response.incomplete_details is None
    assert [item.type for item in response.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert response.output[0].summary[0].text == "think"  # type: ignore[union-attr]
    assert response.output_text == "checking"
    calls = [(i.call_id, i.name, i.arguments) for i in response.output if i.type == "function_call"]
    assert calls == CALLS
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        11,
        5,
        16,
    )
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    # The request's settings, echoed with OpenAI's defaults.
    assert (response.max_output_tokens, response.temperature, response.top_p) == (20, 1.0, 1.0)
    assert (response.tools, response.tool_choice, response.parallel_tool_calls) == ([], "auto", True)
    assert (response.background, response.previous_response_id) == (False, None)
    assert body["store"] is True
    assert body["text"] == {"format": {"type": "text"}}
    assert body["metadata"] == {}


def test_a_refusal_is_a_refusal_part() -> None:
    answer = {**HEAD, "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"content": None, "refusal": "I can't"}}]}  # fmt: skip
    response = Response.model_validate(responses.from_chat(answer, {}, response_id="r", created_at=1))
    [item] = response.output
    assert item.type == "message"
    assert [(part.type, getattr(part, "refusal", None)) for part in item.content] == [("refusal", "I can't")]


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_an_answer_cut_short_is_incomplete(finish: str, reason: str) -> None:
    answer = {**HEAD, "choices": [{"index": 0, "finish_reason": finish, "message": {"content": "ab"}}]}
    response = Response.model_validate(
        responses.from_chat(answer, {"input": "x"}, response_id="r", created_at=1)
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == reason
    assert response.usage is None  # the chat answer had none


def test_the_sdk_reads_a_translated_answer_end_to_end() -> None:
    """The SDK's request, translated to chat; the chat answer, translated back; the SDK's parse of it."""
    seen: list[dict[str, Any]] = []

    def backend(body: dict[str, Any]) -> httpx2.Response:
        seen.append(responses.to_chat(body))
        answer = {**HEAD, "usage": USAGE, "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"content": "bonjour"}}
        ]}  # fmt: skip
        return httpx2.Response(
            200, json=responses.from_chat(answer, body, response_id="resp_1", created_at=1)
        )

    with sdk_client(backend) as client:
        response = client.responses.create(
            model="m", input="hello", instructions="in French", max_output_tokens=5
        )
    assert response.output_text == "bonjour"
    assert seen[0]["messages"] == [
        {"role": "system", "content": "in French"},
        {"role": "user", "content": "hello"},
    ]
    assert seen[0]["max_completion_tokens"] == 5


# -- the stream --------------------------------------------------------------------------------------------


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
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0].response.status == "in_progress"
    assert events[0].response.usage is None
    assert events[-1].type == "response.completed"
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(event)
    final = state._completed_response  # what ResponseStream.get_final_response() hands back
    assert final is not None
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas == "".join(words)
    assert final.usage is not None
    assert final.usage.input_tokens == 11
    if calls:
        [call] = [item for item in final.output if item.type == "function_call"]
        assert (call.name, call.arguments, call.call_id) == ("f", '{"city": "Paris"}', "call_1")
    # The same stream fed whole gives the same bytes, ids apart.
    again = responses.ResponsesStream(request, response_id="resp_s", created_at=3)
    assert len(parsed_events(again.feed(stream), EVENTS)) == len(events)


@given(
    st.text(max_size=12),
    st.text(max_size=12),
    st.text(max_size=6),
    st.lists(st.integers(0, 5), max_size=8),
    st.sampled_from(["tool_calls", "length"]),
)
def test_a_streamed_answer_ends_as_the_whole_answer_would_be(
    text: str, reasoning: str, refusal: str, cuts: list[int], finish: str
) -> None:
    request: dict[str, Any] = {
        "model": "m",
        "input": "x",
        "stream": True,
        "tools": [{"type": "function", "name": "f"}],
    }
    whole, stream = rich_answer(text, reasoning, refusal, finish)
    converter = responses.ResponsesStream(request, response_id="resp_s", created_at=3)
    events = parsed_events(feed_split(stream, cuts, converter), EVENTS)
    last = events[-1]
    assert last.type == ("response.completed" if finish == "tool_calls" else "response.incomplete")
    expected = responses.from_chat(whole, request, response_id="resp_s", created_at=3)
    assert without_ids(last.response.model_dump(mode="json", exclude_unset=True)) == without_ids(expected)
    # Every item that was added is done, in order, and the events name the items they belong to.
    added = [e.item.id for e in events if e.type == "response.output_item.added"]
    assert added == [e.item.id for e in events if e.type == "response.output_item.done"]
    assert added == [item.id for item in last.response.output]
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == reasoning
    assert "".join(e.delta for e in events if e.type == "response.refusal.delta") == refusal


def test_the_sdk_streams_a_translated_answer_end_to_end() -> None:
    def backend(body: dict[str, Any]) -> httpx2.Response:
        chat = responses.to_chat(body)
        assert chat["stream_options"] == {"include_usage": True}
        converter = responses.ResponsesStream(body, response_id="resp_1", created_at=1)
        raw = converter.feed(chat_stream(["Bon", "jour"]))
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    with sdk_client(backend) as client, client.responses.stream(model="m", input="hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == "Bonjour"
    assert final.usage is not None
    assert final.usage.total_tokens == 16


def test_crlf_separators_comments_and_event_lines_are_read() -> None:
    stream = chat_stream(["a", "b"])
    crlf = b": keep-alive\r\n\r\n" + stream.replace(b"data:", b"event: chunk\r\ndata:").replace(
        b"\n\n", b"\r\n\r\n"
    )
    plain = responses.ResponsesStream({}, response_id="r", created_at=1)
    odd = responses.ResponsesStream({}, response_id="r", created_at=1)
    events = parsed_events(odd.feed(crlf), EVENTS)
    assert odd.done
    assert [e.type for e in events] == [e.type for e in parsed_events(plain.feed(stream), EVENTS)]
    assert events[-1].response.output_text == "ab"


def test_a_stream_without_its_usage_chunk_ends_with_usage_null() -> None:
    converter = responses.ResponsesStream({}, response_id="r", created_at=1)
    raw = converter.feed(b"data: " + orjson.dumps(chunk({"content": "hi"}, "stop")) + b"\n\n")
    assert not converter.done
    raw += converter.feed(b"data: [DONE]\n\n")
    assert converter.done
    assert converter.feed(b"data: [DONE]\n\n") == b""  # nothing after the end
    final = parsed_events(raw, EVENTS)[-1]
    assert (final.type, final.response.usage, final.response.output_text) == (
        "response.completed",
        None,
        "hi",
    )


@pytest.mark.parametrize(
    "error", [b'{"error": {"message": "boom", "type": "server_error", "code": 500}}', b'{"error": "boom"}']
)
def test_an_error_mid_stream_is_an_error_event_the_sdk_raises_on(error: bytes) -> None:
    converter = responses.ResponsesStream({"model": "m"}, response_id="r", created_at=1)
    raw = converter.feed(b"data: " + orjson.dumps(chunk({"content": "a"})) + b"\n\n")
    raw += converter.feed(b"data: " + error + b"\n\n")
    assert converter.done
    assert converter.feed(b"data: [DONE]\n\n") == b""
    events = parsed_events(raw, EVENTS)
    assert events[-1].type == "error"
    assert events[-1].message == "boom"
    assert orjson.loads(raw.rsplit(b"data: ", 1)[1])["error"]["message"] == "boom"

    def backend(body: dict[str, Any]) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    with sdk_client(backend) as client, pytest.raises(openai.APIError, match="boom"):
        for _ in client.responses.create(model="m", input="x", stream=True):
            pass
