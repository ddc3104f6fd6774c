"""The inference path's HTTP/1.1 client (``adapters/http1.py`` under ``OpenAIHttpUpstream``), against raw
upstreams that send exactly the bytes each test needs: keep-alive and the resend on a connection closed
under a request, the pool's bound and its turns, heads too large, interim answers, bodies that end at the
close, TLS with a non-default port, unread and abandoned bodies, and what a request may not smuggle.

The far side is an asyncio server speaking bytes (``tests.support.raw_server``); the client is the
production class. Nothing waits on wall time: the tests wait for events the far side sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.raw_server import serving
from tokenyard.adapters import http1
from tokenyard.adapters.http1 import Http1Pool
from tokenyard.adapters.openai_http import OpenAIHttpUpstream
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStreamBroken, UpstreamTimeout

LONG_S = 60.0  # a deadline no test should reach


@dataclass
class Seen:
    """What the far side saw: a count of connections and each request's head and body, in order."""

    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a connection saw the client's EOF

    def lines(self) -> list[bytes]:
        return [head.split(b"\r\n", 1)[0] for head, _ in self.requests]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body; None at the client's close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    lines = b"".join(line + b"\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), lines, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


Script = Callable[[Seen, int, bytes, asyncio.StreamWriter], Awaitable[bool]]


@contextlib.asynccontextmanager
async def upstream(
    script: Script, *, tls: ssl.SSLContext | None = None, **options: float
) -> AsyncIterator[tuple[OpenAIHttpUpstream, Seen]]:
    """A far side that calls ``script(seen, connection number, request head, writer)`` for each request
    (False: stop reading on that connection), and the client in front of it."""
    seen = Seen()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        number = seen.connections
        while (request := await read_request(reader)) is not None:
            seen.requests.append(request)
            if not await script(seen, number, request[0], writer):
                return
            await writer.drain()
        seen.closed.set()

    async with serving(answer, tls) as root:
        settings = {
            "connect_s": 5.0,
            "first_byte_s": LONG_S,
            "idle_s": LONG_S,
            "max_connections": 4,
            **options,
        }
        client = OpenAIHttpUpstream(
            f"{root}/v1",
            api_key="sk-test",
            connect_s=settings["connect_s"],
            first_byte_s=settings["first_byte_s"],
            idle_s=settings["idle_s"],
            max_connections=int(settings["max_connections"]),
        )
        # No idle sweep within a test: a connection the client closes, it closed for the reason tested.
        client._pool._keep_idle_s = LONG_S
        try:
            yield client, seen
        finally:
            await client.aclose()


async def answering(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(ok(b"answer %d" % len(seen.requests)))
    return True


async def whole(client: OpenAIHttpUpstream, path: str = "/chat/completions") -> tuple[int, bytes]:
    resp = await client.post(path, b'{"model": "m"}')
    return resp.status, await resp.read()


# -- keep-alive and the resend -----------------------------------------------------------------------------


async def test_connections_are_reused_while_the_upstream_keeps_them() -> None:
    async with upstream(answering) as (client, seen):
        answers = [await whole(client) for _ in range(3)]
    assert answers == [(200, b"answer 1"), (200, b"answer 2"), (200, b"answer 3")]
    assert seen.connections == 1
    head = seen.requests[0][0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    port = client._pool._port
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in head  # the non-default port is in Host
    assert b"\r\nAuthorization: Bearer sk-test\r\n" in head
    assert b"\r\nContent-Length: 14\r\n" in head
    assert seen.requests[0][1] == b'{"model": "m"}'


async def test_a_request_on_a_pooled_connection_closed_under_it_goes_again() -> None:
    async def closes_after_one(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 1 and len(seen.requests) == 2:
            return False  # the second request on the first connection: closed, unanswered
        writer.write(ok(b"answer %d" % len(seen.requests)))
        return True

    async with upstream(closes_after_one) as (client, seen):
        assert await whole(client) == (200, b"answer 1")
        assert await whole(client) == (200, b"answer 3")  # sent again, on a new connection
    assert seen.connections == 2
    assert len(seen.requests) == 3


async def test_a_new_connection_closed_before_an_answer_is_not_sent_again() -> None:
    async def hangs_up(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with upstream(hangs_up) as (client, seen):
        with pytest.raises(UpstreamConnectError, match="closed the connection unexpectedly"):
            await whole(client)
    assert len(seen.requests) == 1


async def test_a_request_whose_answer_had_begun_is_not_sent_again() -> None:
    async def half_a_head(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(seen.requests) == 1:
            writer.write(ok())
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")
        return False

    async with upstream(half_a_head) as (client, seen):
        await whole(client)
        with pytest.raises(UpstreamConnectError, match="closed the connection unexpectedly"):
            await whole(client)
    assert len(seen.requests) == 2  # the upstream may have begun work: not sent a third time


async def test_bytes_after_an_answer_end_the_connection() -> None:
    async def then_talks(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok() + b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        return True

    async with upstream(then_talks) as (client, seen):
        assert await whole(client) == (200, b"ok")
        assert await whole(client) == (200, b"ok")
    assert seen.connections == 2


async def test_a_pooled_connection_that_speaks_unasked_is_closed() -> None:
    pooled = asyncio.Event()

    async def talks_later(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        await writer.drain()
        await pooled.wait()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        return True

    async with upstream(talks_later) as (client, seen):
        assert await whole(client) == (200, b"ok")  # read whole: the connection is idle in the pool
        pooled.set()
        await asyncio.wait_for(seen.closed.wait(), LONG_S)  # the client hung up on it (a bound, not a clock)
        assert await whole(client) == (200, b"ok")
    assert seen.connections == 2


# -- the pool's bound --------------------------------------------------------------------------------------


async def test_at_most_max_connections_are_open_and_waiters_are_served_in_turn() -> None:
    async with upstream(answering, max_connections=1) as (client, seen):
        paths = ["/a", "/b", "/c", "/d"]
        tasks = [asyncio.create_task(whole(client, path)) for path in paths]
        answers = await asyncio.gather(*tasks)
    assert seen.connections == 1
    assert seen.lines() == [b"POST /v1%s HTTP/1.1" % path.encode() for path in paths]
    assert [status for status, _ in answers] == [200] * 4


async def test_a_slot_freed_by_a_close_goes_to_the_next_waiter() -> None:
    async def closing(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"bye", b"Connection: close"))
        return False

    async with upstream(closing, max_connections=1) as (client, seen):
        answers = await asyncio.gather(*(whole(client) for _ in range(3)))
    assert answers == [(200, b"bye")] * 3
    assert seen.connections == 3


async def test_no_turn_within_connect_s_is_a_timeout_that_says_the_pool_is_full() -> None:
    hold = asyncio.Event()

    async def holds(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        await hold.wait()
        return False

    async with upstream(holds, max_connections=1, connect_s=0.2) as (client, seen):
        first = asyncio.create_task(whole(client))
        await asyncio.sleep(0)  # the first took its step: it holds the one connection
        with pytest.raises(UpstreamTimeout, match=r"no connection to the upstream came free within 0.2 s"):
            await whole(client)
        hold.set()
        with pytest.raises(UpstreamConnectError):
            await first
    assert len(seen.requests) == 1


async def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    hold = asyncio.Event()

    async def holds_the_first(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(seen.requests) == 1:
            await hold.wait()
        writer.write(ok())
        return True

    async with upstream(holds_the_first, max_connections=1) as (client, seen):
        first = asyncio.create_task(whole(client))
        quitter = asyncio.create_task(whole(client))
        await asyncio.sleep(0)  # both took their first step: the second waits its turn
        quitter.cancel()
        hold.set()
        assert await first == (200, b"ok")
        assert await whole(client) == (200, b"ok")  # the line is empty: the freed connection is used
        with pytest.raises(asyncio.CancelledError):
            await quitter
    assert seen.connections == 1
    assert len(seen.requests) == 2


# -- what an answer may be ---------------------------------------------------------------------------------


async def test_interim_answers_are_skipped() -> None:
    async def early_hints(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        writer.write(interim + ok(b"final", b"Content-Type: text/plain"))
        return True

    async with upstream(early_hints) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        assert (resp.status, resp.content_type, await resp.read()) == (200, "text/plain", b"final")
        assert await whole(client) == (200, b"final")
    assert seen.connections == 1  # the connection stays good after them


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_a_body_without_length_or_chunks_ends_at_the_close(version: bytes) -> None:
    events = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]

    async def until_close(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(version + b" 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for event in events:
            writer.write(event)
            await writer.drain()
        return False

    async with upstream(until_close) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        received = b""
        while piece := await resp.next_chunk():
            received += piece
        assert received == b"".join(events)
        assert await whole(client) == (200, b"".join(events))  # whole, too; on a new connection
    assert seen.connections == 2


async def test_a_head_with_too_many_fields_is_refused() -> None:
    async def many(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"x", *(b"X-Field-%d: %d" % (n, n) for n in range(http1.MAX_HEAD_FIELDS + 1))))
        return True

    async with upstream(many) as (client, _):
        with pytest.raises(UpstreamError, match="head had too many fields"):
            await whole(client)


async def test_a_head_too_large_is_refused_before_it_is_all_read() -> None:
    async def endless(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # 4 MiB, and no end of the line: the client must hang up long before
                writer.write(b"a" * 65536)
                await writer.drain()
        return False

    async with upstream(endless) as (client, _):
        with pytest.raises(UpstreamError, match="head had too many bytes"):
            await whole(client)


@pytest.mark.parametrize(
    ("status", "header", "after_s"),
    [(429, b"Retry-After: 7", 7.0), (503, b"retry-after-ms: 1500", 1.5), (500, b"Retry-After: 7", None)],
)
async def test_retry_after_is_read_from_a_429_or_503(
    status: int, header: bytes, after_s: float | None
) -> None:
    async def busy(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 %d Busy\r\n%s\r\nContent-Length: 0\r\n\r\n" % (status, header))
        return True

    async with upstream(busy) as (client, _):
        resp = await client.post("/chat/completions", b"{}")
        assert (resp.status, resp.retry_after_s, resp.content_type) == (status, after_s, "application/json")
        resp.close()


async def test_a_megabyte_comes_whole_and_in_pieces() -> None:
    data = bytes(range(256)) * 4096

    async def big(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(seen.requests) == 1:
            writer.write(ok(data))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(data), 10_000):
                writer.write(chunk(data[start : start + 10_000]))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        return True

    async with upstream(big) as (client, seen):
        assert await whole(client) == (200, data)
        resp = await client.post("/chat/completions", b"{}")
        pieces = []
        while piece := await resp.next_chunk():
            pieces.append(piece)
        assert b"".join(pieces) == data
        assert len(pieces) > 1
        assert await whole(client) == (200, data)
    assert seen.connections == 1


# -- unfinished answers ------------------------------------------------------------------------------------


async def test_closing_an_unfinished_answer_drops_its_connection() -> None:
    async def slow(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        return True  # ...and the rest never: the client's hang-up is what the far side waits for

    async with upstream(slow) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        assert await resp.next_chunk() == b"0123456789"
        resp.close()
        await seen.closed.wait()  # the upstream saw the connection close: it stops working on the answer


async def test_an_answer_let_go_goes_back_to_the_pool_when_its_end_comes() -> None:
    rest = asyncio.Event()

    async def done_then_more(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(seen.requests) > 1:
            writer.write(ok())
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: [DONE]\n\n"))
        await writer.drain()
        await rest.wait()
        for _ in range(32):  # half a megabyte nobody reads: taken and dropped, not paused on
            writer.write(chunk(b"z" * 16384))
        writer.write(b"0\r\n\r\n")
        return True

    async with upstream(done_then_more, max_connections=1) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        assert await resp.next_chunk() == b"data: [DONE]\n\n"
        resp.release_when_done(LONG_S)
        rest.set()
        assert await whole(client) == (200, b"ok")  # its turn comes when the first answer's end does
    assert seen.connections == 1


async def test_an_answer_let_go_whose_end_does_not_come_is_dropped_after_the_grace() -> None:
    async def never_ends(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: [DONE]\n\n"))
        return True

    async with upstream(never_ends) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        await resp.next_chunk()
        resp.release_when_done(0.01)
        await seen.closed.wait()


async def test_an_answer_cut_short_is_a_broken_stream_in_words() -> None:
    async def cut(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        return False

    async with upstream(cut) as (client, _):
        with pytest.raises(UpstreamStreamBroken, match=r"before its Content-Length was reached"):
            await whole(client)


# -- what a request may not carry --------------------------------------------------------------------------


async def test_a_target_is_percent_encoded_and_a_get_has_no_body_length() -> None:
    async with upstream(answering) as (client, seen):
        resp = await client.request("GET", "/responses/resp x\r\nX-Injected: 1?after=é")
        await resp.read()
    head = seen.requests[0][0]
    assert head.startswith(b"GET /v1/responses/resp%20x%0D%0AX-Injected:%201?after=%C3%A9 HTTP/1.1\r\n")
    assert b"\r\nX-Injected" not in head
    assert b"Content-Length" not in head


async def test_a_header_value_with_a_line_break_is_refused() -> None:
    async with upstream(answering) as (client, seen):
        with pytest.raises(ValueError, match="line break"):
            await client.post("/chat/completions", b"{}", (("traceparent", "00-x\r\nX-Injected: 1"),))
    assert seen.requests == []


# -- connections -------------------------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_keep_idle_s() -> None:
    closed = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(ok())
        closed.set()

    async with serving(answer) as root:
        port = int(root.rsplit(":", 1)[1])
        pool = Http1Pool("127.0.0.1", port, None, connect_s=5, max_connections=1, keep_idle_s=0.01)
        conn = await pool.acquire()
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await conn.rest() == b"ok"
        conn.finish()
        assert pool.open_connections == 1  # idle in the pool
        await closed.wait()  # ...until the sweep
        await pool.aclose()
    assert pool.open_connections == 0


async def test_refused_connections_are_described_in_words() -> None:
    async with serving(lambda reader, writer: asyncio.sleep(0)) as root:
        pass  # the port is free again
    client = OpenAIHttpUpstream(
        f"{root}/v1", api_key=None, connect_s=5, first_byte_s=5, idle_s=5, max_connections=1
    )
    try:
        with pytest.raises(UpstreamConnectError) as caught:
            await whole(client)
    finally:
        await client.aclose()
    assert (
        caught.value.message
        == "cannot reach the upstream: cannot connect to the upstream (Connection refused)"
    )


# -- TLS ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and its key, made by the system's openssl."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def fresh_trust() -> Iterator[None]:
    """The client's trust store is read again for the test, and again after it."""
    http1.default_tls.cache_clear()
    yield
    http1.default_tls.cache_clear()


async def test_tls_with_a_trusted_certificate_on_a_non_default_port(
    certificate: tuple[Path, Path],
    server_tls: ssl.SSLContext,
    fresh_trust: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # what OpenSSL trusts by default, here
    async with upstream(answering, tls=server_tls) as (client, seen):
        assert await whole(client) == (200, b"answer 1")
        assert await whole(client) == (200, b"answer 2")
    assert seen.connections == 1
    assert f"\r\nHost: localhost:{client._pool._port}\r\n".encode() in seen.requests[0][0]


async def test_tls_with_an_untrusted_certificate_is_refused_in_words(
    server_tls: ssl.SSLContext, fresh_trust: None
) -> None:
    async with upstream(answering, tls=server_tls) as (client, seen):
        with pytest.raises(UpstreamConnectError, match="the upstream's TLS certificate was rejected"):
            await whole(client)
    assert seen.requests == []


# -- what a review found (each failed on the first version of the client) -----------------------------------


async def test_bytes_after_an_answer_let_go_are_never_the_next_requests_answer() -> None:
    rest = asyncio.Event()

    async def stray(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(seen.requests) > 1:
            writer.write(ok(b"answer to " + seen.requests[-1][1]))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: [DONE]\n\n"))
        await writer.drain()
        await rest.wait()
        writer.write(b"0\r\n\r\n" + ok(b"STALE"))  # the end, and an answer to nothing, in one write
        return True

    async with upstream(stray, max_connections=1) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        await resp.next_chunk()
        resp.release_when_done(LONG_S)
        rest.set()
        for n in range(3):
            sent = b'{"n": %d}' % n
            answer = await client.post("/chat/completions", sent)
            assert await answer.read() == b"answer to " + sent
    assert seen.connections == 2  # the connection that spoke unasked was not used again


async def test_an_upstream_that_closes_after_every_answer_loses_no_request_at_a_full_pool() -> None:
    async def one_answer(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())  # and closes, without saying so (llama-server does this after a stream)
        return False

    async with upstream(one_answer, max_connections=2) as (client, seen):
        answers = await asyncio.gather(*(whole(client) for _ in range(100)))
    assert answers == [(200, b"ok")] * 100
    assert len(seen.requests) == 100  # none sent twice: a connection closed on its way was never used


async def test_a_cut_chunked_body_is_broken_whatever_the_case_of_its_header() -> None:
    async def cut(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n")
        return False

    async with upstream(cut) as (client, _):
        with pytest.raises(UpstreamStreamBroken, match="before the last chunk"):
            await whole(client)


async def test_a_body_framed_by_the_close_is_not_ended_by_this_side_closing() -> None:
    async def endless(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        return True

    async with upstream(endless) as (client, seen):
        resp = await client.post("/chat/completions", b"{}")
        assert await resp.next_chunk() == b"data: 1\n\n"
        await client.aclose()  # a shutdown, mid-answer: the answer is cut, not complete
        await seen.closed.wait()  # the socket is closed: the connection's loss has been told
        with pytest.raises(UpstreamStreamBroken):
            await resp.next_chunk()


async def test_an_upgrade_nobody_asked_for_is_a_malformed_answer() -> None:
    async def upgrades(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        return True

    async with upstream(upgrades) as (client, _):
        with pytest.raises(UpstreamError, match="HTTP response was malformed"):
            await whole(client)


async def test_a_408_on_a_reused_connection_is_its_idle_timeout_and_the_request_goes_again() -> None:
    async def times_out(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 1 and len(seen.requests) == 2:
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return False
        writer.write(ok(b"answer %d" % len(seen.requests)))
        return True

    async with upstream(times_out) as (client, seen):
        assert await whole(client) == (200, b"answer 1")
        assert await whole(client) == (200, b"answer 3")
    assert seen.connections == 2


async def test_a_408_on_a_new_connection_is_the_answer() -> None:
    async def times_out(seen: Seen, number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        return False

    async with upstream(times_out) as (client, seen):
        assert await whole(client) == (408, b"")
    assert len(seen.requests) == 1


async def test_an_answer_let_go_reads_nothing_more_from_its_connection() -> None:
    async with upstream(answering, max_connections=1) as (client, seen):
        first = await client.post("/chat/completions", b"{}")
        first.release_when_done(LONG_S)  # its end has come: the connection is back in the pool
        second = await client.post("/chat/completions", b"{}")
        assert await first.next_chunk() == b""  # not the second request's answer
        assert await second.read() == b"answer 2"
    assert seen.connections == 1
