"""A stream cut by killing the real upstream mid-stream: the client gets an error, the meter what was sent.

The relay acts at an exact point of the stream: right after it has forwarded the third content chunk it
SIGKILLs the server and relays nothing more (what the dying server still had in flight never arrives).
Nothing is timed; the count is the relay's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.real_upstream.upstreams import (
    LITELLM,
    LITELLM_KEY,
    Upstream,
    litellm_upstream,
    llama_upstream,
    need,
    need_llama,
)
from tests.real_upstream.yard import new_marker, open_yard

KILL_AFTER_CHUNKS = 3


async def read_into(stream: AsyncIterator[ChatCompletionChunk], chunks: list[ChatCompletionChunk]) -> None:
    """Read a stream to its end, keeping each chunk as it arrives (what came before an error stays)."""
    async for chunk in stream:
        chunks.append(chunk)


def own_upstream(kind: str, folder: Path) -> tuple[Upstream, str | None, str]:
    """A server of its own for this test (it gets killed): the upstream, its API key, its model's name."""
    if kind == "llama":
        need_llama()
        return llama_upstream(folder), None, "smollm2"
    need(LITELLM, "LiteLLM's proxy", "tests/real_upstream/setup_litellm.sh")
    return litellm_upstream(folder), LITELLM_KEY, "mock-chat"


@pytest.mark.parametrize(("kind", "include_usage"), [("llama", False), ("llama", True), ("litellm", False)])
async def test_a_stream_cut_by_killing_the_upstream(tmp_path: Path, kind: str, include_usage: bool) -> None:
    upstream, key, model = own_upstream(kind, tmp_path)
    await upstream.start()
    try:
        async with open_yard(
            "cut", tmp_path, {kind: (upstream.port, key)}, {model: kind}, chat_model=model, embed_model=model
        ) as yard:
            assert upstream.proc is not None
            await yard.chat_relay.command(kill_after_chunks=KILL_AFTER_CHUNKS, kill_pgid=upstream.proc.pid)
            marker = new_marker()
            extra = {"stream_options": {"include_usage": True}} if include_usage else {}
            received: list[ChatCompletionChunk] = []
            async with yard.proxy.client(timeout=120) as client:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=[{"role": "user", "content": f"Tell a long story about {marker}."}],
                    max_tokens=400,
                    temperature=0,
                    stream=True,
                    **extra,
                )
                with pytest.raises((openai.APIError, httpx.TransportError)):  # an error, not a clean end
                    await read_into(raw.parse(), received)  # type: ignore[arg-type]
            sent = await yard.chat_relay.find(marker)
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
