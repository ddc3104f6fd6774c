"""Usage in each API's own words (chat, Responses, Anthropic Messages), read into one ``Usage``, and priced
with cache reads and cache writes apart (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenyard.config import BackendConfig
from tokenyard.meter.model import AggKey
from tokenyard.meter.pricing import token_prices
from tokenyard.meter.usage import (
    MessagesTap,
    ResponsesTap,
    Tap,
    Usage,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    tap_class,
    usage_of_body,
)
from tokenyard.telemetry.focus import CACHE_WRITE_INPUT, CACHED_INPUT, INPUT, OUTPUT, token_charges


def named(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


RESPONSE_USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens": 12,
    "output_tokens_details": {"reasoning_tokens": 5},
    "total_tokens": 52,
}
RESPONSES_STREAM = b"".join(
    [
        named("response.created", {"type": "response.created", "response": {"id": "resp_1", "usage": None}}),
        *(
            named("response.output_text.delta", {"type": "response.output_text.delta", "delta": f"w{i} "})
            for i in range(4)
        ),
        named("response.output_text.done", {"type": "response.output_text.done", "text": "w0 w1 w2 w3 "}),
        named(
            "response.completed",
            {"type": "response.completed", "response": {"id": "resp_1", "usage": RESPONSE_USAGE}},
        ),
    ]
)
MESSAGES_STREAM = b"".join(
    [
        named(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "usage": {
                        "input_tokens": 9,
                        "cache_read_input_tokens": 20,
                        "cache_creation_input_tokens": 30,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        named(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        *(
            named(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"t{i}"}},
            )
            for i in range(3)
        ),
        named("content_block_stop", {"type": "content_block_stop", "index": 0}),
        named(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        ),
        named("message_stop", {"type": "message_stop"}),
    ]
)


def feed_in_pieces(tap: Tap, stream: bytes, cuts: list[int]) -> bytes:
    out, at = b"", 0
    for size in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        out += tap.feed(stream[at : at + size])
        at += size
        if at >= len(stream):
            break
    return out + tap.feed(stream[at:]) + tap.rest()


@given(st.lists(st.integers(1, 80), min_size=1, max_size=30))
def test_a_responses_stream_is_relayed_untouched_and_its_usage_read_however_it_is_cut(
    cuts: list[int],
) -> None:
    tap = tap_class("responses")(strip_usage=True)  # nothing to strip: the usage rides in the last event
    assert isinstance(tap, ResponsesTap)
    assert feed_in_pieces(tap, RESPONSES_STREAM, cuts) == RESPONSES_STREAM
    assert tap.done
    assert tap.usage == Usage(40, 16, 12, reasoning_tokens=5)
    assert tap.content_chunks == 4


@given(st.lists(st.integers(1, 80), min_size=1, max_size=30))
def test_a_messages_stream_sums_input_and_cache_and_takes_the_last_output_count(cuts: list[int]) -> None:
    tap = tap_class("messages")(strip_usage=False)
    assert isinstance(tap, MessagesTap)
    assert feed_in_pieces(tap, MESSAGES_STREAM, cuts) == MESSAGES_STREAM
    assert tap.done
    # Anthropic's input_tokens leave out cache reads and writes: the prompt is all three.
    assert tap.usage == Usage(59, 20, 7, cache_write_tokens=30)
    assert tap.content_chunks == 3


def test_a_stream_cut_before_its_last_event_is_not_done() -> None:
    for api, stream in (("responses", RESPONSES_STREAM), ("messages", MESSAGES_STREAM)):
        tap = tap_class(api)(strip_usage=False)
        tap.feed(stream[: stream.rfind(b"event:")])
        assert not tap.done, api


def test_a_message_delta_that_restates_the_input_counts_wins() -> None:
    tap = MessagesTap()
    restated = {"input_tokens": 3, "cache_read_input_tokens": 4, "output_tokens": 9}
    tap.feed(MESSAGES_STREAM.replace(b'"usage":{"output_tokens":7}', orjson.dumps({"usage": restated})[1:-1]))
    assert tap.usage == Usage(7, 4, 9)


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (
            "chat",
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 6,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                },
            },
            Usage(10, 4, 6, reasoning_tokens=2),
        ),
        ("responses", {"object": "response", "usage": RESPONSE_USAGE}, Usage(40, 16, 12, reasoning_tokens=5)),
        (
            "messages",
            {
                "type": "message",
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 8, "output_tokens": 2},
            },
            Usage(13, 0, 2, cache_write_tokens=8),
        ),
        ("messages", {"type": "message", "usage": {"input_tokens": True, "output_tokens": -3}}, Usage()),
    ],
)
def test_whole_answers_are_read_in_their_apis_words(api: str, body: dict[str, Any], expected: Usage) -> None:
    assert usage_of_body(orjson.dumps(body), api) == expected


def test_estimates_read_every_apis_text() -> None:
    responses_request = {
        "instructions": "x" * 8,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "y" * 12}]}],
    }
    assert estimate_prompt_tokens(responses_request) == 5
    assert estimate_prompt_tokens({"system": [{"type": "text", "text": "z" * 40}], "messages": []}) == 10
    response = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "a" * 16}]}]}
    assert estimate_completion_tokens(orjson.dumps(response), "responses") == 4
    message = {"content": [{"type": "text", "text": "b" * 8}]}
    assert estimate_completion_tokens(orjson.dumps(message), "messages") == 2


PRICED = BackendConfig.model_validate(
    {
        "kind": "serverless",
        "base_url": "http://127.0.0.1:1/v1",
        "prices": {
            "input_per_1m": 3.0,
            "cached_input_per_1m": 0.3,
            "cache_write_input_per_1m": 3.75,
            "output_per_1m": 15.0,
        },
    }
)


def test_cache_writes_and_reads_are_priced_apart() -> None:
    prices = token_prices(PRICED)
    # 100 prompt tokens: 20 read from the cache, 30 written into it, 50 plain; 10 out.
    assert (
        prices.cost_pusd(100, 20, 10, 30) == 50 * 3_000_000 + 20 * 300_000 + 30 * 3_750_000 + 10 * 15_000_000
    )
    # Without a write price a write costs what input costs.
    plain = token_prices(PRICED.model_copy(update={"prices": PRICED.prices.model_copy(
        update={"cache_write_input_per_1m": None})}))  # fmt: skip
    assert plain.cost_pusd(100, 0, 0, 30) == 100 * 3_000_000


def test_focus_bills_cache_writes_as_their_own_meter() -> None:
    prices = token_prices(PRICED)
    fields = {
        "prompt_tokens": 100,
        "cached_tokens": 20,
        "cache_write_tokens": 30,
        "completion_tokens": 10,
        "cost_pusd": prices.cost_pusd(100, 20, 10, 30),
    }
    key = AggKey(3600, "t", "claude", "claude", "serverless", "realtime")
    charges = token_charges(key, fields, {"claude": PRICED})
    assert {c.meter: int(c.quantity) for c in charges} == {
        INPUT: 50,
        CACHED_INPUT: 20,
        CACHE_WRITE_INPUT: 30,
        OUTPUT: 10,
    }
    assert sum(c.cost_pusd for c in charges) == fields["cost_pusd"]
