"""A loopback HTTP server that keeps every POST it gets: where callbacks land in tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from tests.support.net import free_port
from tests.support.polling import eventually

Received = list[tuple[dict[str, str], bytes]]  # (headers, body) of each POST, in order


@contextlib.asynccontextmanager
async def serving(app: Any, **settings: Any) -> AsyncIterator[int]:
    """An ASGI ``app`` served on a free loopback port (its port) until the block ends; ``settings``: more
    of uvicorn's (``http=`` a protocol class, say)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **settings)
    )
    task = asyncio.create_task(server.serve())

    async def started() -> None:
        assert server.started

    await eventually(started)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def read_all(receive: Any) -> bytes:
    """A request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[int, Received]]:
    """The port of a running receiver and the list it fills; it stops when the block ends."""
    got: Received = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_all(receive)
        got.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as port:
        yield port, got
