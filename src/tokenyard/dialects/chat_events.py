"""What the dialects read out of chat completions: the pieces of a stream, a whole answer's first choice,
and the refusal of what a translation cannot carry (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from tokenyard.errors import InvalidRequest

# One piece of a chat stream: (kind, tool-call index, value). Kinds: "model", "text", "refusal",
# "reasoning", "tool" (value: (id, name)), "args" (arguments text), "finish" (finish_reason), "usage" (the
# usage object), "error" (the error object), "done" (``data: [DONE]``).
Piece = tuple[str, int, Any]

_SEPARATOR = re.compile(rb"\r?\n\r?\n")


def pieces(events: bytes) -> Iterator[Piece]:
    """The pieces of whole chat SSE events, in order (comments, ``event:`` lines and unparsable data are
    skipped; only the first choice is read: a translated request asks for one)."""
    for event in _SEPARATOR.split(events):
        data = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
        if not data:
            continue
        payload = b"\n".join(data)
        if payload == b"[DONE]":
            yield ("done", 0, None)
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield from _chunk_pieces(obj)


def _chunk_pieces(chunk: dict[str, Any]) -> Iterator[Piece]:
    error = chunk.get("error")
    if error is not None:  # an upstream failing mid-stream; some send only a message string
        yield ("error", 0, error if isinstance(error, dict) else {"message": str(error)})
        return
    if isinstance(chunk.get("model"), str):
        yield ("model", 0, chunk["model"])
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                yield from _delta_pieces(delta)
            if isinstance(choice.get("finish_reason"), str):
                yield ("finish", 0, choice["finish_reason"])
    if isinstance(chunk.get("usage"), dict):
        yield ("usage", 0, chunk["usage"])


def _delta_pieces(delta: dict[str, Any]) -> Iterator[Piece]:
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        yield ("reasoning", 0, reasoning)
    for key, kind in (("content", "text"), ("refusal", "refusal")):
        if isinstance(delta.get(key), str) and delta[key]:
            yield (kind, 0, delta[key])
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        index = call.get("index", 0) if isinstance(call.get("index"), int) else 0
        found = call.get("function")
        function: dict[str, Any] = found if isinstance(found, dict) else {}
        if call.get("id") or function.get("name"):
            yield ("tool", index, (str(call.get("id") or ""), str(function.get("name") or "")))
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            yield ("args", index, function["arguments"])


def error_message(error: dict[str, Any]) -> str:
    """The message of a chat stream's error object, as the client's API's error event carries it."""
    message = error.get("message")
    return message if isinstance(message, str) and message else "the upstream failed mid-stream"


def first_message(answer: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A whole chat completion's first choice: its message and finish reason."""
    choices = answer.get("choices")
    choice: dict[str, Any] = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    found = choice.get("message")
    message: dict[str, Any] = found if isinstance(found, dict) else {}
    finish = choice.get("finish_reason")
    return message, finish if isinstance(finish, str) else None


def tool_calls(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A chat message's function calls as (id, name, arguments)."""
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            calls.append(
                (
                    str(call.get("id") or ""),
                    str(function.get("name") or ""),
                    arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
                )
            )
    return calls


def counts(usage: Any) -> tuple[int, int, int, int] | None:
    """A chat usage object as (prompt, cached, completion, reasoning) tokens; None if there is none."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    cached = _count(_inner(usage, "prompt_tokens_details", "cached_tokens"))
    reasoning = _count(_inner(usage, "completion_tokens_details", "reasoning_tokens"))
    return prompt, min(cached, prompt), completion, min(reasoning, completion)


def _inner(obj: dict[str, Any], details: str, name: str) -> Any:
    inner = obj.get(details)
    return inner.get(name) if isinstance(inner, dict) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def present(request: dict[str, Any], key: str) -> bool:
    """Whether a request field is given (null counts as absent, as the APIs treat it)."""
    return request.get(key) is not None


def refuse(problems: list[str]) -> None:
    """One 400 naming everything the translation cannot carry, if anything."""
    if problems:
        raise InvalidRequest(
            "This model's deployments speak chat completions only, and tokenyard's translation to it cannot "
            f"carry: {', '.join(problems)}. Leave them out, or route the model to a backend that speaks "
            "this API natively (`apis:` in its backend config).",
            param=problems[0].split(" ")[0],
        )


def text_of(content: Any) -> str | None:
    """The text of a chat message's content (a string, or text parts); None if it has none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(texts) if texts else None
    return None
