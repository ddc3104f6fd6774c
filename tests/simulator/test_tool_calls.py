"""The arguments of a required tool call, from the function's schema (pure): whole, they are JSON that fits
the schema; streamed, the opening, the pieces and the closing spell the same."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenyard.simulator.tool_calls import arguments_frame, required_tool

CHAT_A: Any = {"type": "function", "function": {"name": "a"}}
SCHEMAS: list[tuple[Any, Any]] = [
    (None, {"input": "two words "}),
    ({"type": "object"}, {"input": "two words "}),
    ({"type": "object", "properties": {"q": {"type": "string"}}}, {"q": "two words "}),
    (
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
            "required": ["n"],
        },
        {"n": 1},  # no free string: fixed arguments, the words go nowhere
    ),
    (
        {
            "properties": {
                "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 2},
                "when": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                "text": {"type": ["string", "null"]},
                "mode": {"const": "fast"},
            },
            "required": ["tags", "when", "mode"],
        },
        {"tags": ["a", "a"], "when": 1, "mode": "fast", "text": "two words "},
    ),
]


@pytest.mark.parametrize(("schema", "expected"), SCHEMAS)
def test_arguments_are_json_that_fits_the_schema_and_stream_as_they_are_whole(
    schema: Any, expected: Any
) -> None:
    tool = required_tool(
        [{"type": "function", "name": "f", "parameters": schema}], "required", "call_1", api="responses"
    )
    assert tool is not None
    assert orjson.loads(tool.arguments("two words ")) == expected
    streamed = tool.opening + tool.piece("two ") + tool.piece("words ") + tool.closing
    assert streamed == tool.arguments("two words ")


def test_the_same_schema_always_gets_the_same_arguments_and_a_self_referring_one_ends() -> None:
    nested: dict[str, Any] = {"type": "object", "required": ["child"]}
    nested["properties"] = {"child": nested}
    assert arguments_frame(nested) == arguments_frame(nested)
    opening, closing, carries_words = arguments_frame(nested)
    assert not carries_words
    assert orjson.loads(opening + closing)["child"]["child"] is not None


@pytest.mark.parametrize(
    ("api", "tools", "choice", "called"),
    [
        ("chat", [CHAT_A], "auto", None),
        ("chat", [CHAT_A], "required", "a"),
        ("chat", [CHAT_A, {"type": "function", "function": {"name": "b"}}],
         {"type": "function", "function": {"name": "b"}}, "b"),
        ("responses", [{"type": "web_search"}], "required", None),
        ("messages", [{"name": "a"}, {"name": "b"}], {"type": "tool", "name": "b"}, "b"),
        ("messages", [{"name": "a"}], {"type": "auto"}, None),
        ("messages", [{"name": "a"}], {"type": "any"}, "a"),
    ],
)  # fmt: skip
def test_only_a_choice_that_requires_a_function_gets_a_call(
    api: str, tools: Any, choice: Any, called: str | None
) -> None:
    tool = required_tool(tools, choice, "call_1", api=api)
    assert (tool.name if tool else None) == called
