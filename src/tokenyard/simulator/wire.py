"""OpenAI's wire format, defined once: response bodies, stream chunks, SSE framing and error bodies.

Everything here is pure: plain data in, ``dict`` or ``bytes`` out. Shapes follow the ``openai`` Python SDK's
types (``ChatCompletion``, ``ChatCompletionChunk``, ``Completion``, ``CreateEmbeddingResponse``, ``Model``,
``FileObject``, ``FileDeleted``) and the Batch guide's output and error file lines.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol

import orjson

from tokenyard.errors import TokenyardError
from tokenyard.wire.sse import sse_event

Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
HTML_HEADERS: Headers = [(b"content-type", b"text/html")]
BINARY_HEADERS: Headers = [(b"content-type", b"application/octet-stream")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
OWNED_BY = "tokenyard-simulator"


def error_payload(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_body(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """An OpenAI error body, serialized."""
    return orjson.dumps(error_payload(message, error_type, param=param, code=code))


def error_payload_for(exc: TokenyardError) -> dict[str, Any]:
    """The error object a tokenyard error maps to (its status is ``exc.status_code``)."""
    return error_payload(exc.message, exc.error_type, param=exc.param, code=exc.code)


def error_for(exc: TokenyardError) -> tuple[int, bytes]:
    """The status and body that a tokenyard error maps to."""
    return exc.status_code, orjson.dumps(error_payload_for(exc))


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


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The ``usage`` object of chat and legacy completions."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
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


def embeddings_list(model: str, data: list[list[float] | str], prompt_tokens: int) -> dict[str, Any]:
    """A ``/v1/embeddings`` answer; each item is a float list or a base64 string."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(data)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_object(model_id: str, created: int) -> dict[str, Any]:
    """One entry of ``/v1/models``."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": OWNED_BY}


def model_list(model_ids: list[str], created: int) -> dict[str, Any]:
    """The ``/v1/models`` answer."""
    return {"object": "list", "data": [model_object(model_id, created) for model_id in model_ids]}


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of a cursor-paged list (files, batches): the next page starts ``after`` ``last_id``."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def file_object(
    file_id: str, size_bytes: int, created_at: int, filename: str, purpose: str, expires_at: int | None
) -> dict[str, Any]:
    """A ``file`` object, as upload, retrieve and list return it."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size_bytes,
        "created_at": created_at,
        "expires_at": expires_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


def file_deleted(file_id: str) -> dict[str, Any]:
    """The answer to ``DELETE /v1/files/{id}``."""
    return {"id": file_id, "object": "file", "deleted": True}


def batch_response_line(
    line_id: str, custom_id: str, status_code: int, request_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A line of a batch output (2xx) or error (4xx/5xx) file: the request ran and got this answer."""
    response = {"status_code": status_code, "request_id": request_id, "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def batch_unrun_line(line_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A line of a batch error file for a request that never ran (``batch_expired``, ``batch_cancelled``)."""
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    """JSON Lines: one compact object per line, each ending in a newline."""
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def batch_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A batch's ``usage``: the tokens of the requests that succeeded so far."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
