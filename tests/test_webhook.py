"""The webhook adapter (a job's callback POST) against real sockets: the receiver's status comes back as it
is, and every way the receiver can fail arrives as a tokenyard error that says what happened, in words."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.support.net import free_port
from tokenyard.adapters.webhook import WebhookSender
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"Content-Type": "application/json", "X-Tokenyard-Signature": "t=1,v1=ab"}


@contextlib.asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[str]:
    """A raw TCP server on loopback answering each connection with ``answer``; every connection it took is
    closed and its handler finished before it goes."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hooks/done"
    finally:
        server.close()
        await asyncio.gather(*handlers)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


def answering(status_line: bytes, seen: list[tuple[bytes, bytes]]) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(
            b"HTTP/1.1 " + status_line + b"\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    return answer


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    webhook = WebhookSender()
    try:
        yield webhook
    finally:
        await webhook.aclose()


@pytest.mark.parametrize("status_line", [b"204 No Content", b"500 Internal Server Error", b"302 Found"])
async def test_the_receivers_status_comes_back_and_a_redirect_is_not_followed(
    sender: WebhookSender, status_line: bytes
) -> None:
    seen: list[tuple[bytes, bytes]] = []
    async with serving(answering(status_line, seen)) as url:
        status = await sender.post(url, b'{"id":"job_1"}', HEADERS, timeout_s=10)
    assert status == int(status_line.split()[0])
    [(head, body)] = seen  # one request: the 302's Location was not followed
    assert head.startswith(b"POST /hooks/done HTTP/1.1\r\n")
    assert b"\r\nX-Tokenyard-Signature: t=1,v1=ab\r\n" in head
    assert body == b'{"id":"job_1"}'


async def test_a_refused_connection_is_an_upstream_connect_error_in_words(sender: WebhookSender) -> None:
    with pytest.raises(UpstreamConnectError) as caught:
        await sender.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", HEADERS, timeout_s=10)
    assert caught.value.message.startswith("cannot connect to the upstream")
    assert "refused" in caught.value.message.lower()


async def test_a_receiver_that_hangs_up_is_an_upstream_connect_error(sender: WebhookSender) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with serving(hang_up) as url:
        with pytest.raises(UpstreamConnectError, match="closed the connection"):
            await sender.post(url, b"{}", HEADERS, timeout_s=10)


async def test_a_receiver_that_never_answers_is_an_upstream_timeout(sender: WebhookSender) -> None:
    released = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await released.wait()  # set only after the sender gave up: only its timeout can end the wait

    async with serving(hold) as url:
        with pytest.raises(UpstreamTimeout, match=r"not answered within 0\.05 s"):
            await sender.post(url, b"{}", HEADERS, timeout_s=0.05)
        released.set()


async def test_a_malformed_answer_is_an_upstream_error_in_words(sender: WebhookSender) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async with serving(garbage) as url:
        with pytest.raises(UpstreamError, match="malformed"):
            await sender.post(url, b"{}", HEADERS, timeout_s=10)
