"""Chat-completions streams as upstreams send them, and named-event streams read back through an SDK's
types: what the dialect tests feed the translations and check their output with."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import TypeAdapter

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "small"}
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 5,
    "total_tokens": 16,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def chat_stream(words: list[str], *, calls: bool = False, finish: str = "stop") -> bytes:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": word}) for word in words]
    if calls:
        head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
        chunks.append(chunk({"tool_calls": [head]}))
        for piece in ('{"city"', ': "Paris"}'):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    chunks += [chunk({}, finish), {**HEAD, "choices": [], "usage": USAGE}]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def parsed_events(raw: bytes, types: TypeAdapter[Any]) -> list[Any]:
    """Named events, each checked to be named by its type and to be one of the SDK's ``types``."""
    events = []
    for block in raw.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            payload = orjson.loads(data.removeprefix(b"data: "))
            assert name == b"event: " + payload["type"].encode()
            events.append(types.validate_python(payload))
    return events
