"""Client connections, bounded: head size, slow heads, stalled bodies, and a cap below the fd limit.

uvicorn's httptools protocol reads a request head of any size, holds a connection that never finishes its
head or body for ever, and accepts connections until the process runs out of file descriptors — after which
upstream sockets cannot be opened either. ``GuardedHttpToolsProtocol`` is that protocol with the limits a
server facing real clients needs (nginx's ``large_client_header_buffers``, ``client_header_timeout``,
``client_body_timeout`` and its reuse of idle connections when ``worker_connections`` run out):

- a head larger than ``max_head_bytes`` or with more than ``max_headers`` fields → 431, then closed;
- a head not complete ``head_timeout_s`` after the connection opened (or after a later request's first
  byte), or a body that pauses longer than ``body_timeout_s`` → 408, then closed (a connection that sent
  nothing at all is just closed);
- at most ``max_connections`` client connections: a new one closes the oldest connection with no request
  running (idle keep-alive, or a head still arriving); if every one is busy, the newcomer gets 503;
- malformed HTTP (bad chunking, conflicting Content-Length, …) → an OpenAI-shaped 400 naming the problem.

Every refusal is an OpenAI-shaped error from ``tokenyard.errors``, rendered by ``wire.error_response_parts``.

This runs for every request, so it adds no timer and no parser callback per request or header: one timer
per connection, re-armed lazily, checks a deadline field; a head is summed only when the reads it came in
were larger than the limit. Measured through the protocol alone: ~2 µs per keep-alive request (14.6 → 16.6).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from tokenyard.config import TokenyardConfig
from tokenyard.errors import (
    MalformedHttp,
    ProxyOverloaded,
    RequestHeadTooLarge,
    RequestTimeout,
    TokenyardError,
)
from tokenyard.wire import asgi as wire

log = logging.getLogger("tokenyard.connections")

_FD_FIXED_RESERVE = 64  # the store, the batch and callback clients, log and config files, the event loop
_FD_TARGET_WHEN_UNLIMITED = 1 << 20
_CAP_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client connection may do, and how many there may be."""

    max_head_bytes: int
    max_headers: int
    head_timeout_s: float
    body_timeout_s: float
    keep_alive_s: float
    max_connections: int


def connection_cap(*, fd_limit: int, fds_open: int, reserve: int, configured: int | None) -> int:
    """The client connections to hold at most: ``configured`` if given, else what the descriptor limit
    leaves once ``fds_open`` and the ``reserve`` are set aside (at least 1)."""
    if configured is not None:
        return configured
    return max(1, fd_limit - fds_open - reserve)


def default_fd_reserve(config: TokenyardConfig, *, fd_limit: int, fds_open: int) -> int:
    """Descriptors to keep from client connections: every backend's upstream pool plus a fixed margin, but
    at most half of what is left (a low limit still serves clients)."""
    if config.server.fd_reserve is not None:
        return config.server.fd_reserve
    pools = sum(backend.max_connections for backend in config.backends.values())
    return min(pools + _FD_FIXED_RESERVE, max(0, fd_limit - fds_open) // 2)


def raise_fd_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or 2^20 when unlimited); the soft limit now, or None
    where the platform has none."""
    if sys.platform == "win32":
        return None
    import resource  # POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _FD_TARGET_WHEN_UNLIMITED)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else _FD_TARGET_WHEN_UNLIMITED
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. macOS refuses more than OPEN_MAX: keep what we have
        return soft
    return target


def open_fds() -> int:
    """How many file descriptors this process has open now (0 where that cannot be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def plan_limits(config: TokenyardConfig) -> ConnectionLimits:
    """Raise the descriptor limit and size the connection cap under it (call once, at start-up)."""
    server = config.server
    fd_limit = raise_fd_limit()
    configured = server.max_connections
    if fd_limit is None:  # no descriptor limit to stay under
        cap = configured or 10_000
    else:
        fds = open_fds()
        reserve = default_fd_reserve(config, fd_limit=fd_limit, fds_open=fds)
        cap = connection_cap(fd_limit=fd_limit, fds_open=fds, reserve=reserve, configured=configured)
        room = fd_limit - fds - reserve
        if configured is not None and configured > room:
            log.warning(
                "server.max_connections %d exceeds what the file-descriptor limit %d leaves (%d after %d "
                "kept for upstream sockets and files): silent clients may starve upstream connections",
                configured,
                fd_limit,
                room,
                reserve,
            )
        log.info(
            "at most %d client connections (file-descriptor limit %d, %d kept free)", cap, fd_limit, reserve
        )
    return ConnectionLimits(
        max_head_bytes=server.max_head_bytes,
        max_headers=server.max_headers,
        head_timeout_s=server.head_timeout_s,
        body_timeout_s=server.body_timeout_s,
        keep_alive_s=server.keep_alive_s,
        max_connections=cap,
    )


class ConnectionGuard:
    """What the connections of one server share: the limits, the count, and the idle ones, oldest first."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        # Connections with no request running (a dict keeps insertion order: the first is the oldest).
        self.idle: dict[GuardedHttpToolsProtocol, None] = {}
        self.closed_for_room = 0
        self.refused = 0
        self._logged_at = -math.inf

    def make_room(self, now: float) -> bool:
        """Whether one more connection may be held, closing the oldest idle one if the cap is reached."""
        if self.open < self.limits.max_connections:
            return True
        if not self.idle:
            self.refused += 1
            self._note_cap(now)
            return False
        next(iter(self.idle)).close_for_room()
        self.closed_for_room += 1
        self._note_cap(now)
        return True

    def _note_cap(self, now: float) -> None:
        if now - self._logged_at >= _CAP_LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "connection cap %d reached: %d idle connections closed to make room, %d refused so far",
                self.limits.max_connections,
                self.closed_for_room,
                self.refused,
            )


class _HeadLimit(Exception):
    """Raised from a parser callback to stop parsing a head that is over the limits."""


def protocol_class(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates for each connection (``uvicorn.Config(http=...)``), bound to
    one server's guard."""

    class TokenyardHttpProtocol(GuardedHttpToolsProtocol):
        pass

    TokenyardHttpProtocol.guard = guard
    return TokenyardHttpProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, head and body timeouts and a connection cap."""

    # Slots, not instance attributes: uvicorn's 27 fit a dict sharing its keys with every connection's
    # (CPython shares up to 30); 10 more made each connection's dict its own, 1.6 KB instead of 0.3.
    __slots__ = (
        "_counted",
        "_deadline",
        "_expiry",
        "_head_read_bytes",
        "_kept_alive",
        "_leaving",
        "_limits",
        "_read_len",
        "_reading_head",
        "_refusal",
    )

    guard: ClassVar[ConnectionGuard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.guard.limits
        # uvicorn types it int; call_later takes any float.
        self.timeout_keep_alive = limits.keep_alive_s  # type: ignore[assignment]
        self._limits = limits
        self._reading_head = False  # between a request's first byte and the end of its head
        # Bytes of the reads that ended with the head still incomplete (a previous request's tail may be among
        # them: an overestimate that only makes on_headers_complete count exactly), and the current read's.
        self._head_read_bytes = 0
        self._read_len = 0
        self._refusal: TokenyardError | None = None
        self._counted = False
        # The loop time by which the client must have sent more (its head, or more of its body); inf while
        # nothing is expected from it. One lazily re-armed timer checks it: no timer per request or chunk.
        self._deadline = math.inf
        self._expiry: asyncio.TimerHandle | None = None
        self._kept_alive = False  # between an answer and the next request: the deadline is keep-alive's
        self._leaving: wire.Leaving | None = None  # the current request's line to whoever watches its client

    # -- connection -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.make_room(self.loop.time()):
            self._refuse(
                ProxyOverloaded(
                    "tokenyard is at its connection limit and every connection is busy; retry shortly."
                )
            )
            return
        self.guard.open += 1
        self._counted = True
        self.guard.idle[self] = None
        self._expect_progress(self._limits.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._leaving is not None:
            self._leaving.left()
        self._forget()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def close_for_room(self) -> None:
        """Close this idle connection to make room for a new one (the cap is reached)."""
        self._forget()
        self.transport.close()

    def _forget(self) -> None:
        self.guard.idle.pop(self, None)
        if self._counted:
            self._counted = False
            self.guard.open -= 1

    # -- reading --------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal, self._refusal = self._refusal, None
            # A callback's own error (e.g. an unparsable URL) says more than "User callback error".
            detail = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            self._refuse(refusal or MalformedHttp(f"Malformed HTTP request: {detail or exc}."))
            return
        if self._reading_head:  # a head still incomplete: bound what the parser holds of it
            self._head_read_bytes += len(data)
            if self._head_read_bytes > self._limits.max_head_bytes:
                self._refuse(self._head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        if self._kept_alive or self._deadline == math.inf:  # a later request: its head's clock starts now
            self._kept_alive = False
            self._expect_progress(self._limits.head_timeout_s)

    def on_headers_complete(self) -> None:
        limits = self._limits
        # Only a head read in more than max_head_bytes can be over it: the sum is then worth computing.
        if (
            self._head_read_bytes + self._read_len > limits.max_head_bytes
            or len(self.headers) > limits.max_headers
        ):
            head_bytes = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
            if head_bytes > limits.max_head_bytes or len(self.headers) > limits.max_headers:
                self._refusal = self._head_too_large()
                raise _HeadLimit
        self._reading_head = False
        self._head_read_bytes = 0
        self.guard.idle.pop(self, None)  # a request runs: not to be closed for room
        self._expect_progress(self._limits.body_timeout_s)
        self.scope[wire.LEAVING] = self._leaving = wire.Leaving()  # type: ignore[literal-required]
        super().on_headers_complete()
        head_only = self.scope["method"] == "HEAD"
        cycle = self.cycle
        cycle.__class__ = _Cycle  # its task has not run yet: the app is handed _Cycle's send
        cycle.transport = _HeadWithBody(self.transport, self.loop, head_only=head_only)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._deadline = self.loop.time() + self._limits.body_timeout_s
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._deadline = math.inf
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's own, but for keep-alive: the connection's one timer bounds the wait for the next
        # request (its deadline moved, the timer re-armed only if it is later) where uvicorn would schedule
        # and cancel a timer for every request.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()  # none of ours; kept in case a subclass of uvicorn's set one
        self.flow.resume_reading()
        if self.pipeline:  # the next request is already here: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._reading_head:  # the next request's head is arriving: its own deadline runs
            return
        self._kept_alive = True
        self._expect_progress(self._limits.keep_alive_s)
        if self._counted:
            self.guard.idle[self] = None  # idle until the next request

    # -- limits ---------------------------------------------------------------------------------------

    def _head_too_large(self) -> RequestHeadTooLarge:
        limits = self._limits
        if len(self.headers) > limits.max_headers:
            return RequestHeadTooLarge(f"The request has more than {limits.max_headers} header fields.")
        return RequestHeadTooLarge(
            f"The request line and headers are larger than {limits.max_head_bytes} bytes."
        )

    def _expect_progress(self, within_s: float) -> None:
        deadline = self._deadline = self.loop.time() + within_s
        expiry = self._expiry
        # A later deadline waits for the pending timer (which re-arms itself); an earlier one needs its own.
        if expiry is None or deadline < expiry.when():
            if expiry is not None:
                expiry.cancel()
            self._expiry = self.loop.call_at(deadline, self._check_progress)

    def _check_progress(self) -> None:
        self._expiry = None
        if self._deadline == math.inf or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline:  # progress since the timer was set: wait for the new deadline
            self._expiry = self.loop.call_at(self._deadline, self._check_progress)
            return
        if self._reading_head:
            self._refuse(
                RequestTimeout(f"The request head did not arrive within {self._limits.head_timeout_s:g} s.")
            )
        elif self.cycle is None or self._kept_alive:  # never sent a byte, or idle after an answer: close
            self.transport.close()
        else:
            self._refuse(RequestTimeout(f"The request body stalled for {self._limits.body_timeout_s:g} s."))

    def _refuse(self, exc: TokenyardError) -> None:
        """Answer ``exc`` (unless a response already started) and close the connection."""
        self._forget()
        started = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True  # the app's receive() says so; anything it still sends is dropped
            cycle.message_event.set()
        if not started and not self.transport.is_closing():
            self.transport.write(_raw_response(exc, self.server_state.default_headers))
        self.transport.close()


# The bytes uvicorn's header checks refuse (each expression is one character class).
_BAD_NAME_BYTES = bytes(b for b in range(256) if HEADER_RE.match(bytes([b])))
_BAD_VALUE_BYTES = bytes(b for b in range(256) if HEADER_VALUE_RE.match(bytes([b])))


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, writing byte for byte and state for state what uvicorn's ``send`` writes,
    except that a response head is checked by two C-level deletions over all its names and all its values
    where uvicorn runs two regular-expression searches a header (the bytes deleted are the bytes uvicorn's
    expressions match; an answer of tokenyard's has about ten headers). In a timeit loop a head took
    11.8 → 9.9 µs on this VM's loaded core.

    ``send`` is not a coroutine: it writes in the call and returns an awaitable that is already done. Going
    through uvicorn's coroutine from a coroutine or function of ours would cost a body's message ~0.4 µs
    more than uvicorn's own (once a chunk of every stream); written here it costs the same. Whatever may
    wait or is refused (a paused or lost client, a message out of order, an access log) goes through
    uvicorn's own ``send``."""

    # Nothing of its own to store: the same layout as uvicorn's cycle (with or without slots there), so a
    # cycle uvicorn made can become one (``GuardedHttpToolsProtocol.on_headers_complete``).
    __slots__ = ()

    def send(self, message: Any) -> Awaitable[None]:  # type: ignore[override]
        if self.flow.write_paused or self.disconnected or self.access_log:
            return super().send(message)
        if not self.response_started:
            if message["type"] != "http.response.start":
                return super().send(message)
            self._write_head(message)
            return _WRITTEN
        if message["type"] != "http.response.body" or self.response_complete:
            return super().send(message)
        # A piece of the body: inline, once a chunk of every stream.
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            if body:
                end = b"" if more_body else b"0\r\n\r\n"
                self.transport.write(b"%x\r\n%b\r\n%b" % (len(body), body, end))
            else:  # as uvicorn does: an empty write, or the last chunk alone
                self.transport.write(b"" if more_body else b"0\r\n\r\n")
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()
        return _WRITTEN

    def _write_head(self, message: Any) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        headers = self.default_headers + list(message.get("headers", ()))
        # Joined by a byte neither check refuses: "-" is a token character, a tab may be in a value.
        names = b"-".join([name for name, _ in headers])
        if len(names.translate(None, _BAD_NAME_BYTES)) != len(names):
            raise RuntimeError("Invalid HTTP header name.")
        values = b"\t".join([value for _, value in headers])
        if len(values.translate(None, _BAD_VALUE_BYTES)) != len(values):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in headers:  # as uvicorn reads them
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                has_connection_close = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


class _Written:
    """An awaitable that is already done: what ``_Cycle.send`` returns for what it wrote in the call.

    Awaiting it takes one step of an iterator that is always exhausted, shared by every await: no
    generator or coroutine is made (in a timeit loop ~230 ns an await, a coroutine's ~230, a generator's
    ~530)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return _EXHAUSTED  # type: ignore[return-value]  # an iterator is what await needs


_EXHAUSTED = iter(())
_WRITTEN = _Written()


class _HeadWithBody:
    """The connection's transport as one response writes it: the head is held back and goes out with the
    first piece of the body, in one send (a write system call and a TCP segment fewer for every answer).
    A head that gives a content length is followed by a write of its body, even an empty one (uvicorn
    closes the connection, which sends what is held, if the app ends without one), except in answer to a
    HEAD; any other head (a stream's, whose first event may be slow) goes out alone at the end of the loop's
    pass if no body follows within it."""

    __slots__ = ("_head_only", "_held", "_loop", "_transport")

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, *, head_only: bool
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._head_only = head_only  # a HEAD request: uvicorn writes no body at all
        self._held: bytes | None = b""  # b"": nothing written yet; None: the head has gone out

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._transport.write(data)
        elif not held:
            self._held = data
            if self._head_only or b"\r\ncontent-length:" not in data:
                self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.writelines((held, data))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def _raw_response(exc: TokenyardError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """``exc`` as a whole HTTP/1.1 response that closes the connection, written below the ASGI app."""
    status, headers, body = wire.error_response_parts(exc)
    lines = [STATUS_LINE[status]]
    for name, value in (
        *default_headers,
        *headers,
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ):
        lines += [name, b": ", value, b"\r\n"]
    lines += [b"\r\n", body]
    return b"".join(lines)
