"""A stream cut by killing the real upstream mid-stream: the client gets an error, the meter what was sent.

llama-server generates token by token, so the relay can act at an exact point of the stream: after it has
forwarded the third content chunk it SIGKILLs the server. Nothing is timed; the count is the relay's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.real_upstream.conftest import llama_upstream, need_llama
from tests.real_upstream.relay import Relayed
from tests.real_upstream.yard import new_marker, open_yard

KILL_AFTER_CHUNKS = 3


async def read_into(stream: AsyncIterator[ChatCompletionChunk], chunks: list[ChatCompletionChunk]) -> None:
    """Read a stream to its end, keeping each chunk as it arrives (what came before an error stays)."""
    async for chunk in stream:
        chunks.append(chunk)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_cut_by_killing_the_upstream(tmp_path: Path, include_usage: bool) -> None:
    need_llama()
    upstream = llama_upstream(tmp_path)  # its own server: this test kills it
    await upstream.start()
    try:
        async with open_yard(
            "cut",
            tmp_path,
            {"llama": (upstream.port, None)},
            {"smollm2": "llama"},
            chat_model="smollm2",
            embed_model="smollm2",
        ) as yard:

            def kill_mid_stream(exchange: Relayed) -> None:
                if exchange.content_chunks() >= KILL_AFTER_CHUNKS:
                    upstream.kill()

            yard.chat_relay.after_forward = kill_mid_stream
            marker = new_marker()
            extra = {"stream_options": {"include_usage": True}} if include_usage else {}
            received: list[ChatCompletionChunk] = []
            async with yard.proxy.client(timeout=120) as client:
                raw = await client.chat.completions.with_raw_response.create(
                    model="smollm2",
                    messages=[{"role": "user", "content": f"Tell a long story about {marker}."}],
                    max_tokens=400,
                    temperature=0,
                    stream=True,
                    **extra,
                )
                with pytest.raises((openai.APIError, httpx.TransportError)):  # an error, not a clean end
                    await read_into(raw.parse(), received)  # type: ignore[arg-type]
            sent = yard.chat_relay.find(marker)
            assert not sent.complete, "the upstream finished before it was killed: nothing was cut"
            assert sent.usage() is None
            assert sent.content_chunks() >= KILL_AFTER_CHUNKS
            text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
            assert text == sent.text()  # everything the upstream sent reached the client
            assert all(c.usage is None for c in received)
            record = await yard.record(raw.headers["x-request-id"])
    finally:
        upstream.stop()
    assert record.status == 502
    assert record.estimated
    assert record.completion_tokens == sent.content_chunks(), (
        f"metered {record.completion_tokens}; the upstream streamed {sent.content_chunks()} content chunks"
    )
    assert record.prompt_tokens > 0
