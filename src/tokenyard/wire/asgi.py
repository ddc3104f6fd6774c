"""The ASGI side of the wire, defined once for the service and the simulator: types, tokenyard's response
headers, the one map from a tokenyard error to a response, reading a body, sending a response, and watching
for a client to leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from types import TracebackType
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


# The scope key under which tokenyard's own server (``edge.connections``) gives each request a ``Leaving``.
LEAVING = "tokenyard.leaving"


class Leaving:
    """A request's line from the server to whoever waits on its client: the server calls ``left()`` when
    the client's connection is lost. Without it, noticing a hang-up takes a task a request blocked on
    ``receive()`` (an ``asyncio.Event``, a done callback); with it, a callback from the protocol."""

    __slots__ = ("callback", "gone")

    def __init__(self) -> None:
        self.gone = False
        self.callback: Callable[[], None] | None = None

    def left(self) -> None:
        """The client's connection is lost (called by the server, once)."""
        self.gone = True
        if self.callback is not None:
            self.callback()


class LeaveWatch:
    """``with LeaveWatch(receive, scope.get(LEAVING)) as watch:`` cancels the task it runs in if the client
    disconnects (which closes what the block holds, such as an upstream request); the block then ends
    quietly, with ``watch.left`` true. Exceptions from the block propagate, and so does a cancellation from
    outside (a shutdown), even one that meets a hang-up.

    Under tokenyard's server the protocol says when the connection is lost (``Leaving``): no task, no
    timer. Under another ASGI server one task a request watches ``receive()``. Either way the work runs in
    the caller's task, with no ``asyncio.wait`` and no coroutine of its own (this is the proxy's hot path).
    """

    __slots__ = ("_done", "_leaving", "_receive", "_task", "_waiter", "left")

    def __init__(self, receive: Receive, leaving: Leaving | None) -> None:
        self._leaving = leaving
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self.left = False

    def __enter__(self) -> LeaveWatch:
        self._task = asyncio.current_task()
        assert self._task is not None
        leaving = self._leaving
        if leaving is None:
            waiter = self._waiter = asyncio.ensure_future(_disconnected(self._receive))
            waiter.add_done_callback(self._on_disconnect)
        elif leaving.gone:  # gone already: the block is cancelled at its first await
            self._leave()
        else:
            leaving.callback = self._leave
        return self

    def _on_disconnect(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.cancelled() and waiter.exception() is None:
            self._leave()

    def _leave(self) -> None:
        # ``_done``: a disconnect noticed after the block ended (its callback was already scheduled).
        if not self._done and not self.left:
            self.left = True
            self._task.cancel()  # type: ignore[union-attr]

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._done = True
        if self._leaving is not None:
            self._leaving.callback = None
        elif self._waiter is not None:
            self._waiter.cancel()
        if self.left:
            # The hang-up's own cancellation is taken back; ours only if nobody else (a shutdown) cancelled.
            if self._task.uncancel() == 0 and kind is asyncio.CancelledError:  # type: ignore[union-attr]
                return True
            if kind is None:  # the work ended before the cancellation reached it: it did not leave early
                self.left = False
        return False


async def until_client_leaves(
    receive: Receive, work: Coroutine[Any, Any, None], leaving: Leaving | None = None
) -> bool:
    """Run ``work``; if the client disconnects first, cancel it (``LeaveWatch``). True if the client left
    before the work was done, False if the work finished."""
    with LeaveWatch(receive, leaving) as watch:
        await work
    return watch.left


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
