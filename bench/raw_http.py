"""The least an HTTP/1.1 client connection can be on asyncio: one keep-alive connection to an upstream and the
answer on it, read by httptools' response parser (the C parser uvicorn already loads). ``bench.thin_proxy``'s
``raw`` client and ``bench.raw_upstream`` (tokenyard's ``Upstream`` over it) share it. No tokenyard import:
the thin proxy must load nothing of tokenyard's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools

_PAUSE_AT = 64 * 1024  # a stream's unread bytes at which reading from the upstream pauses


class RawConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream and the answer on it."""

    __slots__ = (
        "_idle",
        "_paused",
        "_waiter",
        "after_end",
        "broken",
        "buffered",
        "closed",
        "done",
        "head_done",
        "headers",
        "keep_alive",
        "parser",
        "parts",
        "reused",
        "status",
        "transport",
    )

    def __init__(self, idle: list[RawConnection]) -> None:
        self._idle = idle
        self.broken = ""  # the parser's complaint, when the answer was malformed
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = self.reused = False
        self._fresh()

    def _fresh(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.parts: list[bytes] = []
        self.buffered = 0
        self.head_done = self.done = self._paused = self.keep_alive = False
        self.after_end: Callable[[], None] | None = None  # called when the answer's end arrives

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken = "head" if not self.head_done else "body"
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self in self._idle:
            self._idle.remove(self)
        self._wake()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_AT and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        # Asked now: once this callback returns, the parser is reset for the next answer and says False.
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True
        if self.after_end is not None:
            self.after_end()
        else:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """The body's bytes that came and were not taken yet."""
        parts, self.parts, self.buffered = self.parts, [], 0
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def rest(self) -> bytes:
        """The rest of the answer's body, taken as it comes (a long body must not stay paused);
        ``ConnectionError``, in words, if the connection ends first."""
        pieces: list[bytes] = []
        while not self.done:
            if self.parts:
                pieces.append(self.take())
            elif self.closed:
                raise ConnectionError(self.why_broken())
            else:
                await self.wait()
        pieces.append(self.take())
        return b"".join(pieces)

    def finish(self) -> None:
        """Back to the pool when the whole answer was read and the upstream keeps the connection; closed
        otherwise (an unfinished body: the upstream stops working on it)."""
        if self.done and not self.closed and self.keep_alive:
            if self._paused:  # the answer's end came with chunks nobody took: the next answer must be read
                self.transport.resume_reading()  # type: ignore[union-attr]
            self._fresh()
            self.reused = True
            self._idle.append(self)
        elif not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    def why_broken(self) -> str:
        """In words, why the answer on this connection did not end: it closed, or was malformed."""
        if self.broken == "head":
            return "the upstream's HTTP response was malformed"
        if self.broken == "body":
            return "the upstream's chunked encoding was malformed"
        if not self.head_done:
            return "the upstream closed the connection unexpectedly"
        if b"content-length" in self.headers:
            return "the upstream closed the connection mid-body (before its Content-Length was reached)"
        return "the upstream closed the connection mid-body (before the last chunk)"
