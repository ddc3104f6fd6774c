"""A raw TCP server on loopback that answers each connection with a coroutine the test gives: the far edge
faked the way a broken gateway or receiver behaves (bytes, not HTTP a framework would tidy up)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """The server's root URL (``http://127.0.0.1:<port>``, ``https://localhost:<port>`` with ``tls``) while
    the block runs; every connection it took is closed and its handler finished before it goes (no socket
    outlives the test)."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}" if tls is None else f"https://localhost:{port}"
    finally:
        server.close()
        await asyncio.gather(*handlers)
        await server.wait_closed()
