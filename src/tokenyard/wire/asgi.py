"""The ASGI side of the wire, defined once for the service and the simulator: types, tokenyard's response
headers, the one map from a tokenyard error to a response, reading a body, sending a response, and watching
for a client to leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson

from tokenyard.errors import (
    BodyTooLarge,
    CapacityExhausted,
    NoBackendAvailable,
    ProxyOverloaded,
    TokenyardError,
)
from tokenyard.wire.openai import error_body
from tokenyard.wire.sse import sse_data

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

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
    """Send a whole response (JSON unless ``headers`` name a content type), with its content-length."""
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


async def send_chunk(send: Send, body: bytes) -> None:
    """Send one more piece of a streamed body, as its own ASGI message (the response has started)."""
    await send({"type": "http.response.body", "body": body, "more_body": True})


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


def query(scope: Scope) -> dict[str, str]:
    """The query string's parameters, the last value of each (``?a=1&a=2`` → ``{"a": "2"}``)."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return {key: values[-1] for key, values in parse_qs(raw).items()}


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


async def until_client_leaves(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work``; if the client disconnects first, cancel it (which closes what it holds, such as an
    upstream request). True if the client left before the work was done, False if the work finished.

    The work runs in the caller's task and only the disconnect watch gets one of its own: one task a
    request, not two, and no ``asyncio.wait`` (this is the proxy's hot path). Exceptions from ``work``
    propagate; a cancellation from outside (shutdown) does too.
    """
    task = asyncio.current_task()
    assert task is not None
    left = finished = False

    def on_disconnect(waiter: asyncio.Future[None]) -> None:
        nonlocal left
        # ``finished``: the callback may run after the work is done (it was already scheduled).
        if not finished and not waiter.cancelled() and waiter.exception() is None:
            left = True
            task.cancel()

    waiter = asyncio.ensure_future(_disconnected(receive))
    waiter.add_done_callback(on_disconnect)
    try:
        await work
    except asyncio.CancelledError:
        # Ours only if the client left and nobody else (a shutdown) cancelled this task too.
        if left and task.uncancel() == 0:
            return True
        raise
    finally:
        finished = True
        waiter.cancel()
    return False


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
