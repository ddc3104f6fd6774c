"""tokenyard's server (uvicorn with ``edge.connections``' protocol): it tells a request when its client hangs
up (``wire.Leaving``), so the proxy notices without a task a request blocked on ``receive()``, and it keeps
idle connections alive on the connection's one timer. The server runs in this process under real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.support import receiver
from tokenyard.edge.connections import ConnectionGuard, ConnectionLimits, protocol_class
from tokenyard.wire import asgi as wire

LIMITS = ConnectionLimits(
    max_head_bytes=8192,
    max_headers=50,
    head_timeout_s=3600,
    body_timeout_s=3600,
    keep_alive_s=3600,  # never reached here: nothing in these tests waits for a timer
    max_connections=16,
)


class App:
    """Holds every request inside a ``LeaveWatch`` until the client leaves or ``release`` is set."""

    def __init__(self) -> None:
        self.leavings: list[wire.Leaving | None] = []
        self.left: list[bool] = []
        self.entered = asyncio.Event()
        self.ended = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if scope["type"] != "http":
            return
        await wire.read_body(scope, receive, 1 << 20)
        leaving = scope.get(wire.LEAVING)
        self.leavings.append(leaving)
        with wire.LeaveWatch(receive, leaving) as watch:
            self.entered.set()
            await self.release.wait()
            await wire.send_bytes(send, 200, b"{}")
        self.left.append(watch.left)
        self.ended.set()


def serving(app: App) -> contextlib.AbstractAsyncContextManager[int]:
    return receiver.serving(app, http=protocol_class(ConnectionGuard(LIMITS)), access_log=False)


async def _request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    return reader, writer


async def test_a_client_hanging_up_is_told_to_the_request_that_watches_it() -> None:
    app = App()
    async with serving(app) as port:
        _, writer = await _request(port)
        await app.entered.wait()
        writer.close()
        await app.ended.wait()
    (leaving,) = app.leavings
    assert isinstance(leaving, wire.Leaving)  # told by the protocol, not by a task on receive()
    assert leaving.gone
    assert app.left == [True]


async def test_a_kept_alive_connection_serves_request_after_request_and_a_late_hang_up_is_harmless() -> None:
    app = App()
    app.release.set()
    async with serving(app) as port:
        reader, writer = await _request(port)
        for turn in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await reader.readexactly(2) == b"{}"
            if turn < 2:  # the same connection again: kept alive between answers
                writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()
        # The hang-up comes after every answer: no request is told it left early.
        await _closed(reader)
    assert app.left == [False, False, False]
    assert len({id(leaving) for leaving in app.leavings}) == 3  # one Leaving a request


async def _closed(reader: asyncio.StreamReader) -> Any:
    with contextlib.suppress(ConnectionError):
        return await reader.read()

