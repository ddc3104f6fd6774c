"""The Batch API adapter against a provider that misbehaves: its errors say what happened, in words.

The far edge is faked here (a raw TCP server, as a broken gateway would behave): connection refused, the
connection closed before an answer, a body cut short, an HTML page where JSON was expected, an output
file with a line that is not JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.net import free_port
from tests.support.raw_server import serving
from tokenyard.adapters.openai_batch import OpenAIBatchUpstream, results
from tokenyard.errors import UpstreamConnectError, UpstreamError


async def _read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def html_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)
    )
    await writer.drain()
    writer.close()


async def cut_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id":')
    await writer.drain()
    writer.close()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.close()


BROKEN = [
    (html_page, "with text/html that is not a JSON object"),
    (cut_body, "the upstream closed the connection mid-body"),
    (hang_up, "the upstream closed the connection unexpectedly"),
]


@pytest.fixture(params=BROKEN, ids=["html", "cut", "hang-up"])
async def broken(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    answer, expected = request.param
    async with serving(answer) as root:
        yield expected, root + "/v1"


async def test_a_misbehaving_provider_is_described_in_words(broken: tuple[str, str]) -> None:
    expected, url = broken
    api = OpenAIBatchUpstream(url, api_key=None, timeout_s=10)
    try:
        with pytest.raises(UpstreamError) as failed:
            await api.retrieve("batch_1")
    finally:
        await api.aclose()
    message = failed.value.message
    assert expected in message
    assert "Error" not in message  # no aiohttp class name (ClientPayloadError, ServerDisconnectedError…)
    assert "127.0.0.1" not in message  # nor the upstream's address


async def test_a_provider_nobody_listens_on_is_a_connect_error_in_words() -> None:
    api = OpenAIBatchUpstream(f"http://127.0.0.1:{free_port()}/v1", api_key=None, timeout_s=10)
    try:
        with pytest.raises(UpstreamConnectError) as failed:
            await api.retrieve("batch_1")
    finally:
        await api.aclose()
    assert "cannot connect to the upstream (Connection refused)" in failed.value.message
    assert "Error" not in failed.value.message


def test_output_lines_that_cannot_be_read_are_left_out_not_raised() -> None:
    output = (
        b'{"custom_id": "a", "response": {"status_code": 200, "body": {"object": "chat.completion"}}}\n'
        b"<html>502 Bad Gateway</html>\n"
        b'{"response": {"status_code": 200, "body": {}}}\n'
        b'{"custom_id": "b", "response": {"status_code": "soon"}}\n'
    )
    got = results(output, b'{"custom_id": "c", "response": null, "error": "gone"}\n')
    assert sorted(got) == ["a", "c"]
    assert got["a"].status == 200
    assert got["c"].status == 500
