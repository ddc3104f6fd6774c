"""tokenyard's server (uvicorn with ``edge.connections``' protocol): it tells a request when its client hangs
up (``wire.Leaving``), so the proxy notices without a task a request blocked on ``receive()``; it keeps idle
connections alive on the connection's one timer; and it writes a response's head with the first piece of
its body. The server runs in this process under real sockets; the write rule is also checked call by call
on a transport that records its calls."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.support import receiver
from tokenyard.edge.connections import ConnectionGuard, ConnectionLimits, _HeadWithBody, protocol_class
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


class Transport:
    """An asyncio transport that keeps what each call wrote, in order (one list item a system call)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(bytes(data))

    def writelines(self, pieces: Any) -> None:
        self.calls.append(b"".join(pieces))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_a_response_head_goes_out_with_the_first_piece_of_its_body() -> None:
    transport = Transport()
    held = _HeadWithBody(transport, asyncio.get_running_loop(), head_only=False)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.calls == []  # held back …
    held.write(b"{}")
    assert transport.calls == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]  # … and sent with the body
    held.write(b"more")  # later pieces go as they come
    await asyncio.sleep(0)  # the loop's pass ends: nothing held is sent twice
    assert transport.calls[1:] == [b"more"]


async def test_a_head_that_gives_its_length_waits_for_its_body_however_long() -> None:
    transport = Transport()
    held = _HeadWithBody(transport, asyncio.get_running_loop(), head_only=False)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    for _ in range(3):
        await asyncio.sleep(0)  # passes end: no flush was scheduled for it
    assert transport.calls == []
    held.write(b"")  # uvicorn writes even an empty body
    assert transport.calls == [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]


async def test_the_head_of_an_answer_to_a_head_request_goes_out_at_the_end_of_the_pass() -> None:
    transport = Transport()
    held = _HeadWithBody(transport, asyncio.get_running_loop(), head_only=True)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")  # uvicorn writes no body after it
    await asyncio.sleep(0)
    assert transport.calls == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"]


async def test_a_head_with_no_body_in_the_same_pass_goes_out_alone_then() -> None:
    transport = Transport()
    held = _HeadWithBody(transport, asyncio.get_running_loop(), head_only=False)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)  # the pass ends with no body written
    assert transport.calls == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    held.write(b"2\r\n{}\r\n")
    held.close()  # nothing held: closes
    assert transport.calls[1:] == [b"2\r\n{}\r\n"]
    assert transport.closed


async def test_closing_sends_a_held_head_first() -> None:
    transport = Transport()
    held = _HeadWithBody(transport, asyncio.get_running_loop(), head_only=False)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    held.close()
    assert (transport.calls, transport.closed) == ([b"HTTP/1.1 204 No Content\r\n\r\n"], True)
    await asyncio.sleep(0)
    assert len(transport.calls) == 1


async def test_a_streamed_head_reaches_the_client_before_its_first_event() -> None:
    """Under the real server: an app that starts a stream and waits before its first event (a slow
    upstream's first token) — the client has the head while it waits."""
    first_event = asyncio.Event()

    async def app(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": list(wire.SSE_HEADERS)})
        await first_event.wait()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async with receiver.serving(app, http=protocol_class(ConnectionGuard(LIMITS))) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(30):  # bounds a failure only: the head is due at once
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        first_event.set()
        assert b"data: [DONE]" in await reader.readuntil(b"0\r\n\r\n")
        writer.close()


async def test_a_head_request_on_a_kept_alive_connection_gets_its_answer() -> None:
    """Under the real server: the answer to HEAD has a length and no body, and must not wait for one."""

    async def app(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if scope["type"] == "http":
            await wire.send_bytes(send, 200, b"{}")

    async with receiver.serving(app, http=protocol_class(ConnectionGuard(LIMITS))) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for method in (b"HEAD", b"GET"):
            writer.write(method + b" /h HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(30):  # bounds a failure only: the answer is due at once
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"content-length: 2" in head
        assert await reader.readexactly(2) == b"{}"  # the GET's body; the HEAD's answer had none
        writer.close()


async def test_a_connection_keeps_uvicorns_attributes_only_in_its_dict() -> None:
    # tokenyard's own state lives in slots: one attribute more in the dict would give every connection a
    # dict of its own instead of one sharing its keys (0.3 KB → 1.6 KB a connection, 1,000 held streams).
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=App(), http="httptools")
    config.load()
    ours = protocol_class(ConnectionGuard(LIMITS))(config, ServerState(), {})
    uvicorns = HttpToolsProtocol(config, ServerState(), {})
    assert set(vars(ours)) == set(vars(uvicorns))


def _cycles(method: str, keep_alive: bool) -> tuple[Any, Any, Transport, Transport]:
    """uvicorn's request cycle and tokenyard's, each writing to a transport of its own."""
    import logging

    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from tokenyard.edge.connections import _Cycle

    made = []
    for cls in (RequestResponseCycle, _Cycle):
        transport = Transport()
        cycle = cls(
            scope={"type": "http", "method": method},  # type: ignore[typeddict-item]
            transport=transport,  # type: ignore[arg-type]
            flow=FlowControl(transport),  # type: ignore[arg-type]
            logger=logging.getLogger("test"),
            access_logger=logging.getLogger("test.access"),
            access_log=False,
            default_headers=[(b"date", b"Fri, 04 Dec 2026 15:00:00 GMT")],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=lambda: None,
        )
        made.append((cycle, transport))
    (theirs, their_transport), (ours, our_transport) = made
    return theirs, ours, their_transport, our_transport


_CHUNKS = [(b"data: 1\n\n", True), (b"", True), (b"data: 2\n\n", True), (b"", False)]
# (method, keep-alive, status, headers, the body's messages)
_ANSWERS: list[tuple[str, bool, int, list[tuple[bytes, bytes]], list[tuple[bytes, bool]]]] = [
    ("POST", True, 200, [*wire.JSON_HEADERS, (b"content-length", b"2")], [(b"{}", False)]),
    ("POST", True, 200, [*wire.SSE_HEADERS, *wire.STREAM_HEADERS, (b"x-request-id", b"r")], _CHUNKS),
    ("POST", True, 200, [*wire.SSE_HEADERS], [(b"data: [DONE]\n\n", False)]),
    ("POST", True, 200, [(b"Transfer-Encoding", b"Chunked")], [(b"abc", True), (b"d", False)]),
    ("POST", True, 200, [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], [(b"abc", False)]),
    ("POST", True, 400, [(b"Content-Length", b"1"), (b"Connection", b"keep-alive, Close")], [(b"!", False)]),
    ("POST", False, 200, [(b"content-length", b"3")], [(b"x", True), (b"yz", False)]),  # HTTP/1.0
    ("HEAD", True, 200, [(b"content-length", b"2")], [(b"", False)]),
    ("HEAD", True, 200, [], [(b"ignored", False)]),
    ("GET", True, 204, [], [(b"", False)]),
    ("GET", True, 304, [(b"etag", b'"a"')], [(b"", False)]),
    ("GET", True, 200, [(b"content-length", b"2"), (b"content-length", b"2")], [(b"{", True), (b"}", False)]),
    ("GET", True, 200, [(b"x-tab", b"a\tb"), (b"x-high", "é".encode("latin-1"))], [(b"ok", False)]),
    # refused as uvicorn refuses them: longer or shorter than the length given
    ("GET", True, 200, [(b"content-length", b"2")], [(b"{}!", False)]),
    ("GET", True, 200, [(b"content-length", b"2")], [(b"{", False)]),
    # a body message after the last: refused, and nothing more is written
    ("GET", True, 200, [(b"content-length", b"2")], [(b"{}", False), (b"more", False)]),
]


async def _answer(cycle: Any, status: int, headers: Any, pieces: list[tuple[bytes, bool]]) -> list[str]:
    refused = []
    for message in [
        {"type": "http.response.start", "status": status, "headers": headers},
        *({"type": "http.response.body", "body": body, "more_body": more} for body, more in pieces),
    ]:
        try:
            await cycle.send(message)
        except RuntimeError as exc:
            refused.append(str(exc))
    return refused


async def test_an_answer_is_written_as_uvicorns_own_send_writes_it() -> None:
    # _Cycle checks a head's names and values in one deletion each and writes heads and bodies itself:
    # byte for byte, state for state and refusal for refusal what uvicorn's send does.
    refused = 0
    for method, keep_alive, status, headers, pieces in _ANSWERS:
        theirs, ours, their_transport, our_transport = _cycles(method, keep_alive)
        their_refusals = await _answer(theirs, status, headers, pieces)
        our_refusals = await _answer(ours, status, headers, pieces)
        refused += bool(their_refusals)
        case = (method, status, headers, pieces)
        assert our_refusals == their_refusals, case
        assert our_transport.calls == their_transport.calls, case
        assert our_transport.closed == their_transport.closed, case
        for state in ("chunked_encoding", "expected_content_length", "keep_alive", "response_complete"):
            assert getattr(ours, state) == getattr(theirs, state), (state, case)
        assert ours.message_event.is_set() == theirs.message_event.is_set(), case
    assert refused == 3  # the two length refusals and the message after the last happened, and were compared


async def test_a_head_is_refused_for_the_bytes_uvicorn_refuses_and_only_those() -> None:
    # Every byte, in a name and in a value, between two good headers.
    good = (b"x-ok", b"fine")
    cases = [(b"x" + bytes([byte]) + b"y", b"v") for byte in range(256)]
    cases += [(b"x-v", b"a" + bytes([byte]) + b"b") for byte in range(256)]
    refused = 0
    for bad in cases:
        theirs, ours, their_transport, our_transport = _cycles("GET", True)
        refusals = []
        for cycle in (theirs, ours):
            try:
                await cycle.send({"type": "http.response.start", "status": 200, "headers": [good, bad, good]})
            except RuntimeError as exc:
                refusals.append(str(exc))
        assert len(refusals) in (0, 2), (bad, refusals)
        assert len(set(refusals)) <= 1, (bad, refusals)
        if refusals:
            refused += 1
            assert our_transport.calls == their_transport.calls == []  # nothing of the head went out
        else:
            assert our_transport.calls == their_transport.calls
    # A name: the controls, DEL and HTTP's separators; a value: the controls but tab, and DEL.
    assert refused == 49 + 32
