"""The answers only the simulator writes: completions, stream chunks, embeddings, models, batch usage and
injected faults. What tokenyard shares with it (errors, files, pages, batch lines) is in ``tokenyard.wire``.

Everything here is pure: plain data in, ``dict`` or ``bytes`` out. Shapes follow the ``openai`` Python SDK's
types (``ChatCompletion``, ``ChatCompletionChunk``, ``Completion``, ``CreateEmbeddingResponse``, ``Model``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol

import orjson

from tokenyard.wire import asgi
from tokenyard.wire.openai import error_payload
from tokenyard.wire.sse import SSE_DONE, sse_event

HTML_HEADERS: asgi.Headers = [(b"content-type", b"text/html")]
BINARY_HEADERS: asgi.Headers = [(b"content-type", b"application/octet-stream")]
SSE_HEADERS: asgi.Headers = [*asgi.SSE_HEADERS, (b"cache-control", b"no-cache")]
OWNED_BY = "tokenyard-simulator"


def injected_error_payload(status: int) -> dict[str, Any]:
    """The error object of an injected fault, shaped like OpenAI's own error for that status."""
    if status == 429:
        return error_payload(
            "Rate limit reached (injected by simulator).", "requests", code="rate_limit_exceeded"
        )
    if status >= 500:
        return error_payload("The server had an error (injected by simulator).", "server_error")
    return error_payload(f"Injected error with status {status}.", "invalid_request_error")


def injected_error(status: int) -> bytes:
    """The body of an injected fault, serialized."""
    return orjson.dumps(injected_error_payload(status))


def injected_error_html(status: int) -> bytes:
    """The body of an injected fault when a gateway answers it: a small HTML page, as nginx writes one."""
    try:
        title = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        title = f"{status} Error"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def retry_after_value(seconds: float) -> bytes:
    """A ``Retry-After`` header value: whole seconds as an integer, otherwise a decimal."""
    return str(int(seconds) if seconds == int(seconds) else seconds).encode("ascii")


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The ``usage`` object of chat and legacy completions (reasoning tokens are among the completion's)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def chat_completion(
    head: dict[str, Any], texts: list[str], finish_reason: str, usage_: dict[str, Any]
) -> dict[str, Any]:
    """A non-streamed ``chat.completion``; ``head`` holds id, created, model and fingerprint."""
    choices = [
        {
            "index": index,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        for index, text in enumerate(texts)
    ]
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage_}


def text_completion(
    head: dict[str, Any], texts: list[str], finish_reason: str, usage_: dict[str, Any]
) -> dict[str, Any]:
    """A non-streamed legacy ``text_completion``."""
    choices = [
        {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        for index, text in enumerate(texts)
    ]
    return {**head, "object": "text_completion", "choices": choices, "usage": usage_}


def response_head(id_: str, created: int, model: str, fingerprint: str) -> dict[str, Any]:
    """The fields every completion object and chunk of one response shares."""
    return {"id": id_, "created": created, "model": model, "system_fingerprint": fingerprint}


class StreamChunks(Protocol):
    """Builds the SSE frames of one streamed response, one choice event at a time."""

    def start(self, index: int) -> bytes | None:
        """The frame that opens a choice, if the format has one."""

    def content(self, index: int, piece: str) -> bytes:
        """The frame carrying one generated token of a choice."""

    def finish(self, index: int, finish_reason: str) -> bytes:
        """The frame that closes a choice with its finish reason."""

    def usage(self, usage_: dict[str, Any]) -> bytes:
        """The extra, choice-less frame carrying the usage (``stream_options.include_usage``)."""

    def end(self) -> bytes:
        """The stream's last bytes (``data: [DONE]`` for OpenAI's chat and completions)."""


class ChatChunks:
    """SSE frames of a streamed ``chat.completion.chunk`` response."""

    __slots__ = ("_head",)

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        # With include_usage, OpenAI puts "usage": null on every chunk but the last.
        self._head = {**head, "object": "chat.completion.chunk"}
        if include_usage:
            self._head["usage"] = None

    def _frame(self, choices: list[dict[str, Any]]) -> bytes:
        return sse_event({**self._head, "choices": choices})

    def start(self, index: int) -> bytes | None:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def content(self, index: int, piece: str) -> bytes:
        return self._frame(
            [{"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]
        )

    def finish(self, index: int, finish_reason: str) -> bytes:
        return self._frame([{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}])

    def usage(self, usage_: dict[str, Any]) -> bytes:
        return sse_event({**self._head, "choices": [], "usage": usage_})

    def end(self) -> bytes:
        return SSE_DONE


class ArgumentsSpelling(Protocol):
    """How a call's ``arguments`` are spelled around the generated words (``tool_calls.ToolCall``)."""

    @property
    def opening(self) -> str:
        """The arguments before the first word."""

    @property
    def closing(self) -> str:
        """The arguments after the last word."""

    def piece(self, word: str) -> str:
        """One word as it appears inside the arguments."""


class ChatToolCallChunks(ChatChunks):
    """SSE frames of a streamed chat answer that is one function call: the generated words are the pieces of
    its arguments (the opening, each piece, the closing)."""

    __slots__ = ("_call", "_spelling")

    def __init__(
        self, head: dict[str, Any], include_usage: bool, call: dict[str, Any], spelling: ArgumentsSpelling
    ) -> None:
        super().__init__(head, include_usage)
        self._call, self._spelling = call, spelling

    def _arguments(self, index: int, piece: str) -> bytes:
        call = {"index": 0, "function": {"arguments": piece}}
        return self._frame(
            [{"index": index, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}]
        )

    def start(self, index: int) -> bytes | None:
        opening = self._spelling.opening
        call = {"index": 0, **self._call, "function": {**self._call["function"], "arguments": opening}}
        delta = {"role": "assistant", "content": None, "tool_calls": [call]}
        return self._frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def content(self, index: int, piece: str) -> bytes:
        return self._arguments(index, self._spelling.piece(piece))

    def finish(self, index: int, finish_reason: str) -> bytes:
        # The arguments are whole however many words filled them: the answer is a call.
        return self._arguments(index, self._spelling.closing) + super().finish(index, "tool_calls")


class CompletionChunks:
    """SSE frames of a streamed legacy ``text_completion`` response."""

    __slots__ = ("_head",)

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        self._head = {**head, "object": "text_completion"}
        if include_usage:
            self._head["usage"] = None

    def _frame(self, index: int, text: str, finish_reason: str | None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        return sse_event({**self._head, "choices": [choice]})

    def start(self, index: int) -> bytes | None:
        return None

    def content(self, index: int, piece: str) -> bytes:
        return self._frame(index, piece, None)

    def finish(self, index: int, finish_reason: str) -> bytes:
        return self._frame(index, "", finish_reason)

    def usage(self, usage_: dict[str, Any]) -> bytes:
        return sse_event({**self._head, "choices": [], "usage": usage_})

    def end(self) -> bytes:
        return SSE_DONE


def embeddings_list(model: str, data: list[list[float] | str], prompt_tokens: int) -> dict[str, Any]:
    """A ``/v1/embeddings`` answer; each item is a float list or a base64 string."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(data)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def batch_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A batch's ``usage``: the tokens of the requests that succeeded so far."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
