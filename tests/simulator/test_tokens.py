"""Token accounting and generated content: pure functions, tested without a server."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from tokenyard.errors import InvalidRequest
from tokenyard.simulator.tokens import (
    GENERATION_BLOCK,
    choice_words,
    count_message_tokens,
    embedding_vector,
    encode_base64_float32,
    generate_texts,
    plan_chat,
    plan_completion,
    plan_embeddings,
)


@pytest.mark.parametrize(
    ("message", "tokens"),
    [
        ({"role": "user", "content": "one two  three\nfour"}, 4),
        ({"role": "user", "content": ""}, 1),
        ({"role": "assistant", "content": None, "tool_calls": []}, 1),
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at"},
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                    {"type": "text", "text": "this picture"},
                ],
            },
            4,
        ),
    ],
)
def test_a_prompt_token_is_a_word_of_message_text_at_least_one_per_message(
    message: dict[str, Any], tokens: int
) -> None:
    assert count_message_tokens(message) == tokens


def test_chat_plan_without_a_cap_runs_to_the_default_length_and_stops() -> None:
    plan = plan_chat({"model": "m", "messages": [{"role": "user", "content": "a b"}]}, default_max_tokens=5)
    assert (plan.prompt_tokens, plan.completion_tokens, plan.finish_reason) == (2, 5, "stop")
    assert (plan.stream, plan.include_usage) == (False, False)


def test_chat_plan_prefers_max_completion_tokens_and_stops_on_the_cap() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 9}
    assert plan_chat(body, 5).completion_tokens_per_choice == 9
    plan = plan_chat({**body, "max_completion_tokens": 3, "n": 2}, 5)
    assert (plan.completion_tokens_per_choice, plan.choices, plan.completion_tokens) == (3, 2, 6)
    assert plan.finish_reason == "length"


def test_include_usage_counts_only_for_streams() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a"}],
        "stream_options": {"include_usage": True},
    }
    assert not plan_chat(body, 1).include_usage
    assert plan_chat({**body, "stream": True}, 1).include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "a"}]}, "model"),
        ({"model": "", "messages": [{"role": "user", "content": "a"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages"),
        ({"model": "m", "messages": [{"content": "a"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": [{"content": "a"}], "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": [{"content": "a"}], "n": 1000}, "n"),
        ({"model": "m", "messages": [{"content": "a"}], "stream": "yes"}, "stream"),
    ],
)
def test_invalid_chat_bodies_name_the_offending_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan_chat(body, 4)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("prompt", "prompt_tokens", "choices"),
    [
        ("one two three", 3, 1),
        (["one two", "three"], 3, 2),
        ([5, 6, 7, 8], 4, 1),
        ([[5, 6], [7]], 3, 2),
    ],
)
def test_legacy_prompts_in_every_form(prompt: Any, prompt_tokens: int, choices: int) -> None:
    plan = plan_completion({"model": "m", "prompt": prompt, "n": 2}, default_max_tokens=4)
    assert (plan.prompt_tokens, plan.choices) == (prompt_tokens, choices * 2)


def test_a_bad_prompt_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        plan_completion({"model": "m", "prompt": [1, "two"]}, 4)


def test_embeddings_plan_honours_dimensions_and_encoding() -> None:
    plan = plan_embeddings(
        {"model": "e", "input": ["a b", "c"], "dimensions": 3, "encoding_format": "base64"}, 8
    )
    assert (plan.inputs, plan.prompt_tokens, plan.dimensions, plan.base64) == (["a b", "c"], 3, 3, True)
    assert plan_embeddings({"model": "e", "input": "x"}, 8).dimensions == 8
    with pytest.raises(InvalidRequest):
        plan_embeddings({"model": "e", "input": "x", "encoding_format": "int8"}, 8)


def test_generated_words_depend_only_on_seed_and_body() -> None:
    body = b'{"model":"m"}'
    first = generate_texts(1, body, choices=2, length=6)
    assert first == generate_texts(1, body, choices=2, length=6)
    assert first != generate_texts(2, body, choices=2, length=6)
    assert first != generate_texts(1, body + b" ", choices=2, length=6)
    assert first[0] != first[1]
    assert all(len(text.split()) == 6 and text.endswith(" ") for text in first)


def test_a_choice_has_the_same_words_however_they_are_drawn() -> None:
    # Streams draw one word at a time (in blocks), whole answers draw larger blocks: same text.
    length = 3 * GENERATION_BLOCK + 5
    [whole] = generate_texts(4, b"body", choices=1, length=length)
    [one_by_one] = choice_words(4, b"body", choices=1, length=length)
    assert "".join(one_by_one.next() for _ in range(length)) == whole
    [in_odd_blocks] = choice_words(4, b"body", choices=1, length=length)
    assert "".join("".join(in_odd_blocks.take(7)) for _ in range(0, length, 7)) == whole


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_completion_cap_past_the_model_limit_is_refused_naming_the_field(field: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: 1001}
    assert plan_chat({**body, field: 1000}, 16, max_output_tokens=1000).completion_tokens_per_choice == 1000
    with pytest.raises(InvalidRequest, match=f"{field} is too large: 1001") as refused:
        plan_chat(body, 16, max_output_tokens=1000)
    assert refused.value.param == field
    assert refused.value.status_code == 400


def test_legacy_prompts_times_n_are_bounded_like_n() -> None:
    plan = plan_completion({"model": "m", "prompt": ["a"] * 64, "n": 2}, 4)
    assert plan.choices == 128
    with pytest.raises(InvalidRequest, match="prompts times 'n'") as refused:
        plan_completion({"model": "m", "prompt": ["a"] * 65, "n": 2}, 4)
    assert refused.value.param == "n"
    with pytest.raises(InvalidRequest, match="max_tokens is too large"):
        plan_completion({"model": "m", "prompt": "a", "max_tokens": 10**9}, 4)


def test_embedding_requests_are_bounded_in_inputs_and_dimensions() -> None:
    with pytest.raises(InvalidRequest, match="'dimensions' is too large") as refused:
        plan_embeddings({"model": "e", "input": "x", "dimensions": 10**9}, 8)
    assert refused.value.param == "dimensions"
    with pytest.raises(InvalidRequest, match="at most 2048 items") as refused:
        plan_embeddings({"model": "e", "input": ["x"] * 2049}, 8)
    assert refused.value.param == "input"


def test_embedding_vectors_are_deterministic_unit_float32() -> None:
    vector = embedding_vector(3, "hello", 16)
    assert vector == embedding_vector(3, "hello", 16)
    assert vector != embedding_vector(4, "hello", 16)
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    decoded = struct.unpack("<16f", base64.b64decode(encode_base64_float32(vector)))
    assert list(decoded) == vector
