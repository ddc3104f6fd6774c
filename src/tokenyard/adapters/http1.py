"""The inference path's HTTP/1.1 client: a bounded pool of keep-alive connections to one upstream, each
answer read by httptools' response parser (the C parser uvicorn already loads for the proxy's own side).

Why not aiohttp: it was two thirds of a bare pass-through's CPU a request here. Over this client tokenyard
needs ~0.6 of the CPU a whole answer it needed over aiohttp, and 12 MiB less for 1,000 held streams
(``bench/README.md``, issue 19). What an upstream client must do, it does: connections reused while the
upstream keeps them and closed after ``keep_idle_s`` unused, at most ``max_connections`` open with the
waiters served in turn, TLS with the system's trust store, answers framed by length, chunks or the close,
interim (1xx) answers skipped, a bound on an answer's head against a hostile upstream, reading paused
while a stream's unread bytes pile up, and an unfinished answer's connection dropped (the upstream stops
working on it). It does not follow redirects, decompress, or go through an HTTP proxy: nothing an inference
upstream needs (``openai_http.session_headers`` asks for no compression).

``OpenAIHttpUpstream`` (``openai_http.py``) is the ``adapters.base.Upstream`` over it; this module speaks
HTTP and the pool, and maps a failed connect to tokenyard's errors (the one place that does).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable

import httptools

from tokenyard.errors import ProxyOverloaded, TokenyardError, UpstreamConnectError, UpstreamTimeout

PAUSE_AT = 64 * 1024  # a response's unread bytes at which reading from the upstream pauses
# An answer's head, interim answers included: far above any real upstream's (a few hundred bytes), far
# below what would hurt (aiohttp allows 8 KiB a line; a hostile upstream could send them without end).
MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_FIELDS = 128
KEEP_IDLE_S = 15.0  # an unused pooled connection is closed after this long (aiohttp's default too)

# Errors that say this machine ran out of something (descriptors, buffers, memory, local ports), not that
# the upstream failed: every backend would fail the same way, so no circuit breaker may count them.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})


def strerror(exc: OSError) -> str:
    """An OS error's sentence, without Python's ``[Errno n]``."""
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or "connection failed")


def local_shortage(exc: OSError) -> ProxyOverloaded | None:
    """The proxy's own error when ``exc`` says this machine ran out of something; None otherwise."""
    if exc.errno not in LOCAL_ERRNOS:
        return None
    return ProxyOverloaded(
        f"tokenyard cannot open a connection to the upstream: {os.strerror(exc.errno)} "
        "on the proxy's machine (the upstream is not at fault); retry shortly."
    )


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's trust store, hostnames checked: one context for every upstream (loading the store
    costs milliseconds and a megabyte)."""
    return ssl.create_default_context()


class _Refused(Exception):
    """Raised in a parser callback to stop the parser: the answer goes no further (httptools raises it to
    ``feed_data`` as an ``HttpParserCallbackError``)."""


class Http1Connection:
    """One connection to the upstream and the answer on it (asyncio's protocol, httptools' callbacks).

    A plain class, not a subclass of ``asyncio.Protocol``: the loop needs only the methods, and the opt-in
    mypyc build compiles a plain class to a native one.
    """

    __slots__ = (
        "_paused",
        "_waiter",
        "after_end",
        "broken",
        "buffered",
        "closed",
        "done",
        "draining",
        "fields",
        "got_bytes",
        "head_bytes",
        "head_done",
        "headers",
        "idle_since",
        "informational",
        "keep_alive",
        "parser",
        "parts",
        "pool",
        "pooled",
        "reset",
        "reused",
        "status",
        "transport",
    )

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = self.reused = self.pooled = self.reset = False
        self.idle_since = 0.0
        self._fresh()

    def _fresh(self) -> None:
        """Ready for the next answer."""
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.parts: list[bytes] = []
        self.buffered = self.head_bytes = self.fields = 0
        self.broken = ""  # why the answer was malformed, when it was
        self.head_done = self.done = self._paused = self.keep_alive = False
        self.got_bytes = self.informational = self.draining = False
        self.after_end: Callable[[], None] | None = None  # called when the answer's end arrives

    # -- asyncio's protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            if self.pooled:  # an idle connection said something nobody asked for: not to be trusted
                self.transport.close()  # type: ignore[union-attr]
                return
            self.got_bytes = True
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # (an upgrade nobody asked for)
            if not self.done:  # (after the end: bytes nobody asked for; the answer itself is whole)
                self.broken = self.broken or ("body" if self.head_done else "head")
            self.keep_alive = False
            self.transport.close()  # type: ignore[union-attr]
            return
        if not self.head_done and self.head_bytes > MAX_HEAD_BYTES:
            self.broken = "too many bytes"
            self.transport.close()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # close the connection: a half-closed upstream sends nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        # An answer with neither a length nor chunks ends where the upstream closes the connection (not
        # where this side does: finish() and aclose() mark it closed first).
        ended = not self.closed and exc is None and self.head_done and not self.done and not self.broken
        self.closed = True
        self.reset = exc is not None
        if ended and self._framed_by_close():
            self.done = True
            if self.after_end is not None:
                self.after_end()
        self._wake()
        self.pool.lost(self)

    def pause_writing(self) -> None:
        pass  # a request is written whole; the transport buffers it

    def resume_writing(self) -> None:
        pass

    def _framed_by_close(self) -> bool:
        headers = self.headers
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()  # as llhttp reads it
        return b"content-length" not in headers and not chunked

    # -- httptools' callbacks --

    def on_message_begin(self) -> None:
        if self.done:  # bytes after the answer's end, nobody asked for: the connection is not to be trusted
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if self.fields > MAX_HEAD_FIELDS:
            self.broken = "too many fields"
            raise _Refused
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            self.informational = True
            self.headers = {}
            return
        self.status = status
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.draining:  # nobody will read the rest: only its end matters
            return
        self.parts.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_AT and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        # Asked now: once this callback returns, the parser is reset for the next answer and says False.
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True
        if self.after_end is not None:
            # Not from inside the parser: bytes after this answer in the same read must still find it done
            # (on_message_begin refuses them) before the connection is fresh for the next answer.
            asyncio.get_running_loop().call_soon(self.after_end)
        else:
            self._wake()

    # -- the answer, for its reader --

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something happens on the connection (a head, a chunk, the end, the close)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def send(self, request: bytes) -> None:
        """Write a request; on a connection already closing, nothing (its close, not an error here, is what
        the sender sees: a reused connection closed before any answer)."""
        transport = self.transport
        if not transport.is_closing():  # type: ignore[union-attr]
            transport.write(request)  # type: ignore[union-attr]

    def take(self) -> bytes:
        """The body's bytes that came and were not taken yet."""
        parts, self.parts, self.buffered = self.parts, [], 0
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def alive(self) -> bool:
        """Open and not closing: fit to carry a request."""
        return not self.closed and not self.transport.is_closing()  # type: ignore[union-attr]

    async def rest(self, gap: Callable[[], Awaitable[None]] | None = None) -> bytes:
        """The rest of the answer's body, taken as it comes (a long body must not stay paused);
        ``ConnectionError``, in words, if the connection ends first. ``gap`` waits for the next bytes
        instead of ``wait`` (the adapter's, under its idle deadline)."""
        pieces: list[bytes] = []
        while not self.done:
            if self.parts:
                pieces.append(self.take())
            elif self.closed:
                raise ConnectionError(self.why_broken())
            else:
                await (self.wait() if gap is None else gap())
        pieces.append(self.take())
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def drain(self) -> None:
        """Nobody reads the rest of the body: drop what came, keep reading until its end."""
        self.draining = True
        self.parts, self.buffered = [], 0
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def finish(self) -> None:
        """Back to the pool when the whole answer came and the upstream keeps the connection; closed
        otherwise (an unfinished answer: the upstream stops working on it)."""
        if self.done and self.keep_alive and not self.closed:
            if self._paused:  # the end came with bytes nobody took: the next answer must be read
                self.transport.resume_reading()  # type: ignore[union-attr]
            self._fresh()
            self.reused = True
            self.pool.release(self)
        elif not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    def why_broken(self) -> str:
        """In words, why the answer on this connection did not come whole: it was malformed or cut."""
        broken = self.broken
        if broken == "head":
            return "the upstream's HTTP response was malformed"
        if broken == "body":
            return "the upstream's chunked encoding was malformed"
        if broken:  # too large, too many fields
            limits = f"{MAX_HEAD_BYTES // 1024} KiB, {MAX_HEAD_FIELDS} fields"
            return f"the upstream's HTTP response head had {broken} (at most {limits})"
        if not self.head_done:
            if self.reset:
                return "the upstream reset the connection"
            return "the upstream closed the connection unexpectedly"
        if b"content-length" in self.headers:
            return "the upstream closed the connection mid-body (before its Content-Length was reached)"
        if self.reset:
            return "the upstream reset the connection mid-body"
        return "the upstream closed the connection mid-body (before the last chunk)"


class Http1Pool:
    """At most ``max_connections`` connections to one host and port, reused while the upstream keeps them.

    ``acquire`` hands out an idle connection (the most recently used: the likeliest to be alive), or opens
    one, or waits its turn (first come, first served) for one to be released or closed: up to ``connect_s``
    for the turn (as aiohttp counts its pool's wait to the connect timeout), and ``connect_s`` to connect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        *,
        connect_s: float,
        max_connections: int,
        keep_idle_s: float = KEEP_IDLE_S,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._connect_s = connect_s
        self._max = max_connections
        self._keep_idle_s = keep_idle_s
        self._idle: list[Http1Connection] = []  # oldest first; taken from the end
        self._open: set[Http1Connection] = set()
        self._opening = 0  # slots taken by connections being opened
        # None: the waiter may open a connection (a slot came free); a connection: its turn on that one.
        self._waiters: deque[asyncio.Future[Http1Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open or being opened."""
        return len(self._open) + self._opening

    async def acquire(self) -> Http1Connection:
        """A connection to send a request on: ``UpstreamTimeout`` if none is free within ``connect_s``,
        and tokenyard's error in words if one cannot be opened."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if conn.alive():
                return conn
        front = False
        while True:
            if self._closed:
                raise UpstreamConnectError("the upstream's client is closed")
            if self.open_connections < self._max and not self._waiters:
                self._opening += 1
                return await self._connect()
            given = await self._wait_turn(front)
            if given is None:  # a slot, counted in _opening
                return await self._connect()
            if given.alive():
                return given
            # It closed on its way here (an upstream that closes after each answer while saying
            # keep-alive): its close frees a slot, which this waiter, first in line again, will have.
            front = True

    async def _wait_turn(self, front: bool) -> Http1Connection | None:
        """A connection released to this waiter, or None: a slot to open one in (counted in _opening)."""
        turn: asyncio.Future[Http1Connection | None] = asyncio.get_running_loop().create_future()
        if front:
            self._waiters.appendleft(turn)
        else:
            self._waiters.append(turn)
        try:
            async with asyncio.timeout(self._connect_s):
                return await turn
        except BaseException as exc:
            if not turn.done():
                self._waiters.remove(turn)
                turn.cancel()
            elif not turn.cancelled():  # the turn came as this wait ended: pass it on
                given = turn.result()
                if given is None:
                    self._opening -= 1
                    self._grant()
                else:
                    self.release(given)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"no connection to the upstream came free within {self._connect_s:g} s "
                    f"(all {self._max} are busy)"
                ) from exc
            raise

    async def _connect(self) -> Http1Connection:
        """Open a connection in a slot already counted in ``_opening``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_s):
                _, conn = await loop.create_connection(  # type: ignore[type-var]
                    lambda: Http1Connection(self),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except BaseException as exc:
            self._opening -= 1
            self._grant()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"cannot connect to the upstream within {self._connect_s:g} s") from exc
            if isinstance(exc, OSError):
                raise connect_failure(exc) from exc
            raise
        self._opening -= 1
        self._open.add(conn)
        if self._closed:  # closed while this one was opening
            conn.finish()
            raise UpstreamConnectError("the upstream's client is closed")
        return conn

    def release(self, conn: Http1Connection) -> None:
        """A connection whose answer ended and which the upstream keeps: to the next waiter, or idle. One
        already closing (an upstream that closes after each answer while saying keep-alive) is neither:
        its ``connection_lost`` gives the slot on."""
        if not conn.alive():
            return
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(conn)
                return
        if self._closed:
            conn.finish()
            return
        loop = asyncio.get_running_loop()
        conn.pooled = True
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self._keep_idle_s, self._sweep)

    def lost(self, conn: Http1Connection) -> None:
        """A connection closed (``connection_lost``): its slot goes to the next waiter."""
        if conn.pooled:
            conn.pooled = False
            self._idle.remove(conn)
        if conn in self._open:
            self._open.discard(conn)
            self._grant()

    def _grant(self) -> None:
        """A slot came free: the next waiter may open a connection in it."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                self._opening += 1
                turn.set_result(None)
                return

    def _sweep(self) -> None:
        """Close the connections unused for ``keep_idle_s``; come back when the next one will be."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._keep_idle_s
        for conn in [conn for conn in self._idle if conn.idle_since <= cutoff]:
            conn.pooled = False
            self._idle.remove(conn)
            conn.finish()  # done and reset: finish closes it, as its answer is not "done" any more
        if self._idle:
            self._sweeper = loop.call_at(self._idle[0].idle_since + self._keep_idle_s, self._sweep)

    async def aclose(self) -> None:
        """Close every connection, busy or idle; waiters fail."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_exception(UpstreamConnectError("the upstream's client is closed"))
        for conn in list(self._open):
            conn.pooled = False
            conn.closed = True
            conn.transport.close()  # type: ignore[union-attr]
        self._idle.clear()


def connect_failure(exc: OSError) -> TokenyardError:
    """tokenyard's error, in words, for a connection that could not be opened (the URL never appears)."""
    shortage = local_shortage(exc)
    if shortage is not None:
        return shortage
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamConnectError("cannot reach the upstream: the upstream's TLS certificate was rejected")
    if isinstance(exc, ssl.SSLError):
        return UpstreamConnectError("cannot reach the upstream: the TLS handshake with the upstream failed")
    if isinstance(exc, socket.gaierror):
        return UpstreamConnectError("cannot reach the upstream: the upstream's host name does not resolve")
    return UpstreamConnectError(
        f"cannot reach the upstream: cannot connect to the upstream ({strerror(exc)})"
    )
