"""Wire formats, defined once: ASGI types, tokenyard's response headers, OpenAI error bodies, body reading."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from tokenyard.errors import (
    BodyTooLarge,
    CapacityExhausted,
    NoBackendAvailable,
    ProxyOverloaded,
    TokenyardError,
)
from tokenyard.wire.sse import sse_data

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Response headers that say who served a request and why.
H_BACKEND = b"x-tokenyard-backend"
H_BACKEND_KIND = b"x-tokenyard-backend-kind"
H_ROUTE = b"x-tokenyard-route"  # primary | spillover | fallback | failover
H_ROUTE_DETAIL = b"x-tokenyard-route-detail"
H_ATTEMPTS = b"x-tokenyard-attempts"
H_MODE = b"x-tokenyard-mode"
H_MODE_REASON = b"x-tokenyard-mode-reason"  # why a request was async (or real time against a policy)
H_PATH = b"x-tokenyard-path"  # the path an async job took: idle_dedicated | provider_batch | realtime
H_REQUEST_ID = b"x-request-id"
# The headers that say who served a request, kept with an async job's answer to be relayed with it.
SERVED_BY = frozenset({H_BACKEND, H_BACKEND_KIND, H_ROUTE, H_ROUTE_DETAIL, H_ATTEMPTS})

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
STREAM_HEADERS = [  # added to the upstream's content-type on a relayed stream
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def error_body(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


def error_response_parts(exc: TokenyardError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one place a tokenyard error becomes an HTTP status, headers and an OpenAI error body."""
    headers = list(JSON_HEADERS)
    if isinstance(exc, CapacityExhausted | NoBackendAvailable | ProxyOverloaded):
        headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    body = error_body(exc.message, exc.error_type, param=exc.param, code=exc.code)
    return exc.status_code, headers, body


def sse_error_event(exc: TokenyardError) -> bytes:
    """An error reported inside an event stream that has already started (the openai SDK raises it)."""
    return sse_data(error_body(exc.message, exc.error_type, code=exc.code))


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a whole response."""
    all_headers = JSON_HEADERS if headers is None else headers
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*all_headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any) -> None:
    """Send a JSON response."""
    await send_bytes(send, status, orjson.dumps(payload))


async def send_error(
    send: Send, exc: TokenyardError, extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a tokenyard error as OpenAI does."""
    status, headers, body = error_response_parts(exc)
    await send_bytes(send, status, body, [*headers, *extra_headers])


def cookie(scope: Scope, name: bytes) -> bytes | None:
    """A request cookie's value (``name=value`` in the ``Cookie`` header), or None."""
    raw = header(scope, b"cookie")
    if raw is None:
        return None
    for part in raw.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name:
            return value
    return None


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` lowercase)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; ``BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Request body is {int(declared)} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Captured:
    """An ASGI ``send`` that keeps a whole response instead of sending it (to run a request for a job)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    @property
    def content_type(self) -> str:
        """The response's content type (JSON when it named none)."""
        for key, value in self.headers:
            if key == b"content-type":
                return value.decode("latin-1")
        return "application/json"

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""
