"""Client connections are bounded: head size (431), slow heads and stalled bodies (408), malformed HTTP (an
OpenAI-shaped 400), a connection cap below the file-descriptor limit, and a local shortage of descriptors is
never blamed on an upstream. Raw sockets, because the official SDK cannot send what these tests send."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import pytest_asyncio

from tests.support.config import CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy, start_proxy
from tests.support.simulators import reset, set_faults, simulators
from tokenyard.adapters.openai_http import OpenAIHttpUpstream
from tokenyard.edge.connections import connection_cap
from tokenyard.errors import UpstreamError
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

ADMIN_KEY = "sk-admin-connection-limits-0123"
MAX_HEAD_BYTES = 4096
MAX_HEADERS = 20
SHORT_S = 0.5  # every timeout of the module's proxy; tests only wait (generously) for the connection to close
CLOSED_WITHIN_S = 20.0
FD_LIMIT = 256
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def _config(sim: SimulatorServer, **sections: dict[str, Any]) -> dict[str, Any]:
    server = {"admin_key": ADMIN_KEY, **sections.pop("server", {})}
    return {
        "server": server,
        "backends": {"up": backend("serverless", f"http://127.0.0.1:{sim.port}/v1")},
        "models": {"m": {"deployments": ["up"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        **sections,
    }


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, SimulatorServer]]:
    async with simulators(up=SimulatorConfig(ttft_ms=1, tokens_per_s=5000)) as sims:
        limits = {
            "max_head_bytes": MAX_HEAD_BYTES,
            "max_headers": MAX_HEADERS,
            "head_timeout_s": SHORT_S,
            "body_timeout_s": SHORT_S,
            "keep_alive_s": SHORT_S,
        }
        async with running_proxy(
            _config(sims["up"], server=limits), tmp_path_factory.mktemp("limits")
        ) as proxy:
            yield proxy, sims["up"]


@pytest_asyncio.fixture
async def proxy(stack: tuple[ProxyProcess, SimulatorServer]) -> ProxyProcess:
    await reset(stack[1])
    return stack[0]


# -- raw HTTP ------------------------------------------------------------------------------------------


def _head(method: str, path: str, *headers: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: tokenyard\r\n".encode()
        + "".join(f"{h}\r\n" for h in headers).encode()
    )


def _chat_request(body: bytes, *extra: str) -> bytes:
    return (
        _head(
            "POST",
            "/v1/chat/completions",
            f"Authorization: Bearer {CLIENT_KEY}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *extra,
        )
        + b"\r\n"
    )


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, ignoring a connection the proxy already closed (it may refuse before reading everything)."""
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection (fails if it never does)."""
    received = b""
    async with asyncio.timeout(CLOSED_WITHIN_S):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _error(raw: bytes, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error of a refused connection, checked for its status and its shape."""
    got_status, headers, body = _parse(raw)
    assert got_status == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@contextlib.asynccontextmanager
async def _connection(
    proxy: ProxyProcess,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- heads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([f"X-Pad: {'a' * 200_000}"], id="one-long-header"),
        pytest.param([f"X-Pad: {'a' * MAX_HEAD_BYTES}"], id="just-over-in-one-read"),
        pytest.param([f"X-Pad-{i}: {'a' * 1000}" for i in range(200)], id="many-long-headers"),
        pytest.param([f"X-N-{i}: 1" for i in range(MAX_HEADERS + 5)], id="too-many-fields"),
    ],
)
async def test_a_head_over_the_limits_gets_431_without_a_key(proxy: ProxyProcess, headers: list[str]) -> None:
    async with _connection(proxy) as (reader, writer):
        await _send(writer, _head("POST", "/v1/chat/completions", *headers) + b"\r\n")
        error = _error(await _until_closed(reader), 431)
    assert error["code"] == "request_header_fields_too_large"
    assert error["type"] == "invalid_request_error"


async def test_a_head_within_the_limits_is_served(proxy: ProxyProcess) -> None:
    body = orjson.dumps(CHAT)
    pad = "a" * (MAX_HEAD_BYTES - 600)  # the whole head stays under the limit
    async with _connection(proxy) as (reader, writer):
        await _send(writer, _chat_request(body, f"X-Pad: {pad}", "Connection: close") + body)
        status, _, answer = _parse(await _until_closed(reader))
    assert status == 200, answer
    async with proxy.client() as client:  # and the SDK's own requests, of course
        reply = await client.chat.completions.create(model="m", messages=CHAT["messages"], max_tokens=2)
    assert reply.choices


# -- slow heads, stalled bodies, idle connections --------------------------------------------------


async def test_a_head_that_never_completes_gets_408_and_is_closed(proxy: ProxyProcess) -> None:
    async with _connection(proxy) as (reader, writer):
        await _send(writer, b"POST /v1/chat/completions HTTP/1.1\r\nHost: tokenyard\r\nX-Slow: ")
        error = _error(await _until_closed(reader), 408)
    assert error["code"] == "request_timeout"


async def test_a_connection_that_sends_nothing_is_closed(proxy: ProxyProcess) -> None:
    async with _connection(proxy) as (reader, _):
        assert await _until_closed(reader) == b""  # nothing was asked, nothing is answered


async def test_a_stalled_body_gets_408_and_is_closed(proxy: ProxyProcess) -> None:
    body = orjson.dumps(CHAT)
    async with _connection(proxy) as (reader, writer):
        await _send(writer, _chat_request(body) + body[:10])  # ...and the rest never comes
        error = _error(await _until_closed(reader), 408)
    assert "body" in error["message"]


async def test_a_kept_alive_connection_that_starts_a_head_and_stops_is_closed(proxy: ProxyProcess) -> None:
    body = orjson.dumps(CHAT)
    async with _connection(proxy) as (reader, writer):
        await _send(writer, _chat_request(body) + body)
        status_line = await reader.readline()
        assert b" 200 " in status_line
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        await _send(writer, b"GET /health/live HTTP/1.1\r\nHost: tok")  # a second request, cut short
        _error(await _until_closed(reader), 408)


async def test_an_idle_kept_alive_connection_is_closed(proxy: ProxyProcess) -> None:
    async with _connection(proxy) as (reader, writer):
        await _send(writer, b"GET /health/live HTTP/1.1\r\nHost: tokenyard\r\n\r\n")
        status, _, _ = _parse(await _until_closed(reader))  # server.keep_alive_s closes it after the answer
    assert status == 200


# -- malformed HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "says"),
    [
        pytest.param(
            _head("POST", "/v1/chat/completions", "Content-Length: 5", "Transfer-Encoding: chunked")
            + b"\r\n",
            "Transfer-Encoding",
            id="content-length-and-chunked",
        ),
        pytest.param(
            _head("POST", "/v1/chat/completions", "Transfer-Encoding: chunked") + b"\r\nzz\r\nhello\r\n",
            "chunk size",
            id="bad-chunk-size",
        ),
        pytest.param(
            _head("POST", "/v1/chat/completions", "Content-Length: 5", "Content-Length: 6") + b"\r\n",
            "Content-Length",
            id="two-content-lengths",
        ),
    ],
)
async def test_malformed_http_gets_an_openai_shaped_400(
    proxy: ProxyProcess, request_bytes: bytes, says: str
) -> None:
    async with _connection(proxy) as (reader, writer):
        await _send(writer, request_bytes)
        error = _error(await _until_closed(reader), 400)
    assert error["code"] == "invalid_http_request"
    assert says in error["message"]


async def _read_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=CHAT["messages"], max_tokens=20, stream=True
    )
    async for _ in stream:
        pass


# -- upstream errors in words ----------------------------------------------------------------------------


async def test_a_broken_upstream_stream_is_described_in_words(
    proxy: ProxyProcess, stack: tuple[ProxyProcess, SimulatorServer]
) -> None:
    await set_faults(stack[1], cut_stream_after_chunks=2)
    async with proxy.client() as client:
        with pytest.raises(openai.APIError) as caught:
            await _read_stream(client)
    message = caught.value.message
    assert "closed the connection mid-body" in message
    assert "Error" not in message  # no aiohttp class names (ClientPayloadError, …)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            "the upstream closed the connection mid-body (before its Content-Length was reached)",
            id="short-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "the upstream closed the connection mid-body (before the last chunk)",
            id="cut-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n",
            "the upstream's chunked encoding was malformed",
            id="bad-chunk-size",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            "the upstream's HTTP response was malformed",
            id="bad-head",
        ),
        pytest.param(b"", "the upstream closed the connection unexpectedly", id="closed-without-answer"),
    ],
)
async def test_a_broken_upstream_answer_is_described_in_words(answer: bytes, says: str) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()  # ...and nothing more: the raw upstream misbehaves at the far edge

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = OpenAIHttpUpstream(
        f"http://127.0.0.1:{port}/v1",
        api_key=None,
        connect_s=5,
        first_byte_s=20,
        idle_s=20,
        max_connections=2,
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await _post_and_read(upstream)
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()
    assert says in caught.value.message
    assert "Error" not in caught.value.message  # no aiohttp class names


async def _post_and_read(upstream: OpenAIHttpUpstream) -> None:
    resp = await upstream.post("/chat/completions", b"{}")
    try:
        await resp.read()
    finally:
        resp.close()


# -- the file-descriptor limit -----------------------------------------------------------------------------


async def _running(proxy: ProxyProcess, body: bytes) -> asyncio.StreamWriter:
    """A connection whose request is running: its head was read and the app is waiting for the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await _send(writer, _chat_request(body, "Expect: 100-continue"))
    assert b" 100 " in await reader.readline()  # uvicorn says so once the app asks for the body
    await reader.readline()
    await _send(writer, body[:5])
    return writer


async def test_at_the_connection_cap_idle_connections_make_room_and_busy_ones_do_not(tmp_path: Path) -> None:
    async with simulators(up=SimulatorConfig(ttft_ms=1, tokens_per_s=5000)) as sims:
        server = {"max_connections": 2, "head_timeout_s": 600, "body_timeout_s": 600}
        proxy = await start_proxy(_config(sims["up"], server=server), tmp_path)
        body = orjson.dumps(CHAT)
        try:
            async with _connection(proxy) as (oldest, _), _connection(proxy):
                async with _connection(proxy) as (reader, writer):  # a third: the oldest idle one goes
                    await _send(writer, _chat_request(body, "Connection: close") + body)
                    status, _, answer = _parse(await _until_closed(reader))
                assert status == 200, answer
                assert await _until_closed(oldest) == b""
            busy = [await _running(proxy, body), await _running(proxy, body)]
            async with _connection(proxy) as (reader, _):  # nothing idle to close: a clean refusal
                error = _error(await _until_closed(reader), 503)
            assert error["code"] == "proxy_overloaded"
            await _hang_up(busy)
        finally:
            proxy.stop()


def test_the_connection_cap_leaves_the_reserve_free() -> None:
    assert connection_cap(fd_limit=1024, fds_open=24, reserve=576, configured=None) == 424
    assert connection_cap(fd_limit=100, fds_open=90, reserve=5, configured=None) == 5
    assert connection_cap(fd_limit=100, fds_open=99, reserve=50, configured=None) == 1
    assert connection_cap(fd_limit=100, fds_open=20, reserve=40, configured=5000) == 5000  # obeyed, warned


async def _flood(proxy: ProxyProcess, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that never send a byte."""
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writers.append(writer)
    return writers


async def _hang_up(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _circuit(proxy: ProxyProcess) -> str:
    async with httpx.AsyncClient(timeout=CLOSED_WITHIN_S) as http:
        resp = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    resp.raise_for_status()
    state: str = resp.json()["data"][0]["circuit"]
    return state


async def test_silent_connections_at_the_fd_limit_do_not_starve_real_requests(tmp_path: Path) -> None:
    async with simulators(up=SimulatorConfig(ttft_ms=1, tokens_per_s=5000)) as sims:
        # Long head timeouts: it is the connection cap, not a timeout, that must keep serving here.
        config = _config(sims["up"], server={"head_timeout_s": 600}, routing={"failure_threshold": 1})
        proxy = await start_proxy(config, tmp_path, fd_limit=FD_LIMIT)
        silent = await _flood(proxy, FD_LIMIT + 64)  # more than the process may ever hold
        try:
            async with httpx.AsyncClient(timeout=CLOSED_WITHIN_S) as http:
                resp = await http.post(
                    f"{proxy.base_url}/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                )
            # Served, or a clean refusal; silence or a dropped connection is not acceptable.
            assert resp.status_code in (200, 503), resp.text
            if resp.status_code == 503:
                assert resp.json()["error"]["code"] == "proxy_overloaded"
            assert await _circuit(proxy) == "closed"
        finally:
            await _hang_up(silent)
            proxy.stop()


def _fds_of(proxy: ProxyProcess) -> int:
    return len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts the proxy's descriptors in /proc")
async def test_a_local_fd_shortage_is_not_blamed_on_the_upstream(tmp_path: Path) -> None:
    async with simulators(up=SimulatorConfig(ttft_ms=1, tokens_per_s=5000)) as sims:
        # A cap above what the limit allows (obeyed, with a warning): silent clients can take every fd.
        config = _config(
            sims["up"],
            server={"head_timeout_s": 600, "body_timeout_s": 600, "max_connections": 100_000},
            routing={"failure_threshold": 1},
        )
        proxy = await start_proxy(config, tmp_path, fd_limit=FD_LIMIT)
        body = orjson.dumps(CHAT)
        silent: list[asyncio.StreamWriter] = []
        try:
            async with _connection(proxy) as (reader, writer):
                await _send(writer, _chat_request(body, "Connection: close") + body[:5])
                silent = await _flood(proxy, FD_LIMIT + 64)

                async def every_fd_taken() -> None:
                    assert _fds_of(proxy) >= FD_LIMIT

                await eventually(every_fd_taken, timeout_s=CLOSED_WITHIN_S)
                await _send(writer, body[5:])  # now the proxy must connect upstream, with no fd left
                status, _, answer = _parse(await _until_closed(reader))
            assert status == 503, answer  # a clean refusal, not a 502 blaming the upstream
            error = orjson.loads(answer)["error"]
            assert error["code"] == "proxy_overloaded"
            assert "Too many open files" in error["message"]
            await _hang_up(silent)
            silent = []
            assert await _circuit(proxy) == "closed"  # the upstream did nothing wrong
        finally:
            await _hang_up(silent)
            proxy.stop()
