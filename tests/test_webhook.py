"""The webhook adapter (a job's callback POST) against real sockets: the receiver's status comes back as it
is, and every way the receiver can fail arrives as a tokenyard error that says what happened, in words."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.support.net import free_port
from tests.support.raw_server import Answer, serving
from tokenyard.adapters.webhook import WebhookSender
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

HEADERS = {"Content-Type": "application/json", "X-Tokenyard-Signature": "t=1,v1=ab"}


@contextlib.asynccontextmanager
async def hook(answer: Answer) -> AsyncIterator[str]:
    """A receiver's callback URL, answered by ``answer``."""
    async with serving(answer) as root:
        yield root + "/hooks/done"


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


@pytest.mark.parametrize("status_line", [b"204 No Content", b"500 Internal Server Error", b"302 Found"])
async def test_the_receivers_status_comes_back_and_a_redirect_is_not_followed(
    webhook: WebhookSender, status_line: bytes
) -> None:
    seen: list[tuple[bytes, bytes]] = []
    async with hook(answering(status_line, seen)) as url:
        status = await webhook.post(url, b'{"id":"job_1"}', HEADERS, timeout_s=10)
    assert status == int(status_line.split()[0])
    [(head, body)] = seen  # one request: the 302's Location was not followed
    assert head.startswith(b"POST /hooks/done HTTP/1.1\r\n")
    assert b"\r\nX-Tokenyard-Signature: t=1,v1=ab\r\n" in head
    assert body == b'{"id":"job_1"}'


async def test_a_refused_connection_is_an_upstream_connect_error_in_words(webhook: WebhookSender) -> None:
    with pytest.raises(UpstreamConnectError) as caught:
        await webhook.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", HEADERS, timeout_s=10)
    assert caught.value.message.startswith("cannot connect to the upstream")
    assert "refused" in caught.value.message.lower()


async def test_a_receiver_that_hangs_up_is_an_upstream_connect_error(webhook: WebhookSender) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with hook(hang_up) as url:
        with pytest.raises(UpstreamConnectError, match="closed the connection"):
            await webhook.post(url, b"{}", HEADERS, timeout_s=10)


async def test_a_receiver_that_never_answers_is_an_upstream_timeout(webhook: WebhookSender) -> None:
    released = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await released.wait()  # set only after the sender gave up: only its timeout can end the wait

    async with hook(hold) as url:
        with pytest.raises(UpstreamTimeout, match=r"not answered within 0\.05 s"):
            await webhook.post(url, b"{}", HEADERS, timeout_s=0.05)
        released.set()


async def test_a_malformed_answer_is_an_upstream_error_in_words(webhook: WebhookSender) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async with hook(garbage) as url:
        with pytest.raises(UpstreamError, match="malformed"):
            await webhook.post(url, b"{}", HEADERS, timeout_s=10)
