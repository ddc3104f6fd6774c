"""The engine-metrics client's failures, mapped at the boundary: a closed port, silence, a status, a body
cut short, one too large; and a chunked page read whole."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.net import free_port
from tests.support.raw_server import Answer, serving
from tokenyard.adapters import engine_metrics
from tokenyard.adapters.engine_metrics import EngineMetricsClient
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStatusError, UpstreamTimeout

PAGE = "vllm:num_requests_waiting 0\n" * 2000


async def get(url: str, timeout_s: float = 5.0) -> str:
    client = EngineMetricsClient()
    try:
        return await client.get_text(url + "/metrics", timeout_s)
    finally:
        await client.aclose()


def answer(raw: bytes) -> Answer:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()

    return send


async def test_a_closed_port_is_unreachable() -> None:
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await get(f"http://127.0.0.1:{free_port()}")


async def test_silence_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # until the client gives up and closes

    async with serving(silent) as url:
        with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.2 s"):
            await get(url, 0.2)


async def test_a_status_other_than_200() -> None:
    async with serving(answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")) as url:
        with pytest.raises(UpstreamStatusError, match="answered 503") as caught:
            await get(url)
    assert caught.value.status == 503


async def test_a_body_cut_short() -> None:
    async with serving(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nvllm:num")) as url:
        with pytest.raises(UpstreamError, match="mid-body"):
            await get(url)


async def test_a_chunked_page_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    body = PAGE.encode()
    chunks = b"".join(
        f"{len(body[i : i + 1000]):x}\r\n".encode() + body[i : i + 1000] + b"\r\n"
        for i in range(0, len(body), 1000)
    )
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    async with serving(answer(raw)) as url:
        assert await get(url) == PAGE
        monkeypatch.setattr(engine_metrics, "_MAX_BYTES", 10_000)
        with pytest.raises(UpstreamError, match="sent more than 10000 bytes"):
            await get(url)
