"""The thin ASGI layer: types, the parsed request, response helpers and disconnect watching."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from tokenyard.errors import InvalidRequest, TokenyardError
from tokenyard.simulator import wire

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(slots=True)
class Request:
    """An HTTP request with its body read, as handlers see it."""

    method: str
    path: str
    path_param: str
    """The variable tail of a prefix route (the model id of ``/v1/models/{id}``), else empty."""
    query: bytes
    headers: dict[str, str]
    raw_body: bytes
    json: Any
    """The parsed body, or None when it is empty or not JSON (see ``json_ok``)."""
    json_ok: bool
    receive: Receive

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; anything else is the client's error."""
        if not self.json_ok:
            raise InvalidRequest(
                "We could not parse the JSON body of your request. The body must be valid JSON."
            )
        if not isinstance(self.json, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        return self.json


def parse_json(raw: bytes) -> tuple[Any, bool]:
    """The body parsed as JSON, and whether that worked."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return None, False


def header_dict(scope: Scope) -> dict[str, str]:
    """Request headers by lowercase name; repeated headers are joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes, headers: wire.Headers) -> None:
    """Send a complete response in one go."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, payload: Any, status: int = 200) -> None:
    """Send a JSON response."""
    await send_bytes(send, status, orjson.dumps(payload), wire.JSON_HEADERS)


async def send_error(send: Send, exc: TokenyardError, headers: wire.Headers | None = None) -> None:
    """Send the OpenAI-shaped error a tokenyard error maps to."""
    status, body = wire.error_for(exc)
    await send_bytes(send, status, body, wire.JSON_HEADERS + headers if headers else wire.JSON_HEADERS)


async def send_chunk(send: Send, body: bytes) -> None:
    """Send one more piece of a streamed body, as its own ASGI message."""
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def run_until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` while watching for the client to leave; True if it finished, False if the client left.

    On disconnect ``work`` is cancelled, so its ``finally``/``async with`` blocks release what it holds.
    An ``OSError`` from ``work`` counts as a disconnect (servers may raise it on a write to a closed
    connection); any other exception propagates.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached when this request is itself cancelled (server shutdown): stop both either way.
        for task in (work_task, watcher):
            task.cancel()
        await asyncio.gather(work_task, watcher, return_exceptions=True)
    if work_task.cancelled():
        return False
    exc = work_task.exception()
    if isinstance(exc, OSError):
        return False
    if exc is not None:
        raise exc
    return True


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
