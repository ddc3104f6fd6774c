"""The stream a client asked for, made from the whole answer of an upstream that ignored ``stream: true``
(pure, no I/O).

Some OpenAI-compatible servers answer a streamed request with one ``application/json`` body. Relayed as it
is, the openai SDK reads it as an event stream, finds no events and yields nothing, with no error, while
the tokens are billed. So the answer is re-shaped into the chunks the SDK expects: per choice, one chunk
with the whole message as its delta and one with its finish reason; the usage chunk if the client asked for
it (``stream_options.include_usage``); then ``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenyard.wire.sse import SSE_DONE, sse_event

# Fields every chunk of a stream repeats from its response.
_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
# A message's generated fields that a delta carries under the same name, when the upstream set them.
_DELTA_FIELDS = ("refusal", "reasoning_content", "reasoning", "function_call")


def whole_answer_as_stream(body: bytes, *, chat: bool, include_usage: bool) -> bytes | None:
    """The SSE stream of a whole chat (``chat``) or legacy completion answer; None if ``body`` is none."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        return None
    head = {key: answer[key] for key in _HEAD_FIELDS if key in answer}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    events: list[bytes] = []
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        finish_reason = choice.get("finish_reason")
        logprobs = choice.get("logprobs")
        if chat:
            message = choice.get("message")
            if not isinstance(message, dict):
                return None
            opening = {"index": index, "delta": _delta(message), "logprobs": logprobs, "finish_reason": None}
            closing = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            text = choice.get("text")
            if not isinstance(text, str):
                return None
            opening = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": None}
            closing = {"text": "", "index": index, "logprobs": None, "finish_reason": finish_reason}
        events.append(sse_event({**head, "choices": [opening]}))
        events.append(sse_event({**head, "choices": [closing]}))
    usage = answer.get("usage")
    if include_usage and isinstance(usage, dict):
        events.append(sse_event({**head, "choices": [], "usage": usage}))
    events.append(SSE_DONE)
    return b"".join(events)


def _delta(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as one chunk's delta: role, content, tool calls (each with its index) and the rest."""
    delta: dict[str, Any] = {"role": message.get("role") or "assistant", "content": message.get("content")}
    for field in _DELTA_FIELDS:
        if message.get(field) is not None:
            delta[field] = message[field]
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        delta["tool_calls"] = [
            {"index": index, **call} if isinstance(call, dict) else call
            for index, call in enumerate(tool_calls)
        ]
    return delta
