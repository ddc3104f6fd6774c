"""The one function call a request that requires a tool gets, on chat, Responses and Messages (pure).

When ``tool_choice`` requires a function (chat and Responses: ``"required"`` or a named one; Messages:
``{"type": "any"}`` or ``{"type": "tool"}``), the answer is one call of the named (else first) function.
Its arguments are a JSON object built from the function's parameters schema, deterministically, so a client
that validates them against the schema accepts them:

* every required property gets a value of its type: its ``const`` or first ``enum`` value, else a word for a
  string (picked by the property's name), ``1`` for a number, ``true``, ``[]`` (``minItems`` copies of an
  item), ``null``, or an object built the same way;
* the generated words fill one string property — the first required one, else the first declared one — so
  the answer's tokens are the argument's pieces when streamed; a function that declares no properties gets
  them as ``input``, one whose properties hold no free string gets none (its arguments are fixed).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from tokenyard.simulator.tokens import VOCABULARY

_WORDS_MARK: Final = "\x00"  # where the words go; no schema value we write holds it
_WORDS_MARK_JSON: Final = '"\\u0000"'
_MAX_DEPTH: Final = 8  # nested objects past this are left empty: a schema may refer to itself
_CONSTRAINED: Final = ("enum", "const", "anyOf", "oneOf")  # a string the words cannot be trusted to fit
_SCALARS: Final[dict[str, Any]] = {"integer": 1, "number": 1, "boolean": True, "null": None}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The call one answer makes: its arguments are ``opening``, the pieces of the words, ``closing``."""

    call_id: str
    name: str
    opening: str
    closing: str
    carries_words: bool  # False: the arguments are fixed and every piece is empty

    def piece(self, word: str) -> str:
        """One generated token as it appears inside the arguments' JSON string (escaped, unquoted)."""
        return orjson.dumps(word).decode()[1:-1] if self.carries_words else ""

    def arguments(self, text: str) -> str:
        """The whole arguments, holding ``text``."""
        return self.opening + self.piece(text) + self.closing


def required_tool(tools: Any, choice: Any, call_id: str, *, api: str) -> ToolCall | None:
    """The call a request must answer with, or None (it may answer in text). ``api``: chat, responses or
    messages (where each puts a function's name and schema)."""
    found = [_function(tool, api) for tool in tools] if isinstance(tools, list) else []
    functions = [f for f in found if f is not None]
    if not functions:
        return None
    wanted = _forced_name(choice, api)
    if wanted is None:
        return None
    name, schema = next(((n, s) for n, s in functions if n == wanted), functions[0])
    opening, closing, carries_words = arguments_frame(schema)
    return ToolCall(call_id, name, opening, closing, carries_words)


def arguments_frame(schema: Any) -> tuple[str, str, bool]:
    """The arguments' JSON around the words (opening, closing) for a parameters schema, and whether they
    hold the words at all."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping) or not properties:
        return '{"input":"', '"}', True
    values = _object(schema, 0)
    key = _words_key(properties, _required(schema))
    if key is None:
        return orjson.dumps(values).decode(), "", False
    values[key] = _WORDS_MARK
    before, after = orjson.dumps(values).decode().split(_WORDS_MARK_JSON, 1)
    return before + '"', '"' + after, True


def _function(tool: Any, api: str) -> tuple[str, Any] | None:
    """A tool's name and parameters schema, if it is a function the model can call."""
    if not isinstance(tool, Mapping):
        return None
    if api == "messages":
        custom = tool.get("type", "custom") == "custom"
        return (str(tool.get("name")), tool.get("input_schema")) if custom else None
    if tool.get("type") != "function":
        return None
    if api == "chat":
        inner = tool.get("function")
        return (str(inner.get("name")), inner.get("parameters")) if isinstance(inner, Mapping) else None
    return str(tool.get("name")), tool.get("parameters")


def _forced_name(choice: Any, api: str) -> str | None:
    """ "" for any function, a name for that one, None when the model may answer in text."""
    if api == "messages":
        kind = choice.get("type") if isinstance(choice, Mapping) else None
        return "" if kind == "any" else str(choice.get("name")) if kind == "tool" and choice else None
    if choice == "required":
        return ""
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        inner = choice.get("function") if api == "chat" else choice
        return str(inner.get("name")) if isinstance(inner, Mapping) else ""
    return None


def _required(schema: Mapping[str, Any]) -> list[str]:
    required = schema.get("required")
    return [name for name in required if isinstance(name, str)] if isinstance(required, list) else []


def _words_key(properties: Mapping[str, Any], required: list[str]) -> str | None:
    """The string property the words fill: the first required one, else the first declared one."""
    candidates = [name for name in required if name in properties] + [str(name) for name in properties]
    return next((name for name in candidates if _free_string(properties[name])), None)


def _free_string(schema: Any) -> bool:
    if not isinstance(schema, Mapping) or any(key in schema for key in _CONSTRAINED):
        return False
    return _type_of(schema) == "string"


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else "string"


def _object(schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """Every required property of an object schema, with a value of its type."""
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    if depth >= _MAX_DEPTH:
        return {}
    return {name: _value(properties.get(name), name, depth + 1) for name in _required(schema)}


def _value(schema: Any, name: str, depth: int) -> Any:
    """A value that fits a property's schema, the same every time."""
    if not isinstance(schema, Mapping):
        return _word(name)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    options = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(options, list) and options:
        return _value(options[0], name, depth)
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, depth)
    if kind == "array":
        count = schema.get("minItems")
        return [_value(schema.get("items"), name, depth + 1)] * (count if isinstance(count, int) else 0)
    return _SCALARS[kind] if kind in _SCALARS else _word(name)


def _word(name: str) -> str:
    """A word for a string property, picked by its name (stable across runs, unlike ``hash``)."""
    return VOCABULARY[zlib.crc32(name.encode()) % len(VOCABULARY)]
