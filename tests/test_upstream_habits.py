"""Upstreams with habits OpenAI does not have are relayed and metered as well as OpenAI itself.

The simulator puts on the habits of real servers (llama-cpp-python's spaced JSON and missing usage,
LiteLLM's usage chunk with a choice, a server that keeps a stream open after ``[DONE]``, one that ignores
``stream: true``); the official SDK streams through the real proxy, with and without ``include_usage``, and
each test checks what the client received and what was metered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tests.support.config import CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import reset, set_faults, sim_stats, simulators
from tests.support.stores import metered_records, sqlite_url
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.usage import StreamTap
from tokenyard.proxy.whole_as_stream import whole_answer_as_stream
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MESSAGES: list[Any] = [{"role": "user", "content": "name five colours please"}]
PROMPT = "name five colours please"
TOKENS = 5  # max_tokens: the simulator generates exactly this many, one "word " a chunk


class Upstream:
    """The proxy in front of one simulator, metering into its own SQLite store."""

    def __init__(self, proxy: ProxyProcess, sim: SimulatorServer, store_url: str) -> None:
        self.proxy, self.sim, self.store_url = proxy, sim, store_url

    async def record(self, request_id: str) -> UsageRecord:
        """The metered record of one request (once the meter has flushed it)."""
        [record] = await metered_records(self.store_url, request_id)
        return record


@pytest_asyncio.fixture(scope="module")
async def upstream(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Upstream]:
    tmp = tmp_path_factory.mktemp("habits")
    store_url = sqlite_url(tmp / "meter.sqlite3")
    async with simulators(sim=SimulatorConfig(ttft_ms=1, tokens_per_s=2000)) as sims:
        config = {
            "meter": {"store": store_url, "flush_interval_s": 0.2},
            "backends": {"sim": backend("serverless", sims["sim"].base_url)},
            "models": {"m": {"deployments": ["sim"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        async with running_proxy(config, Path(tmp)) as proxy:
            yield Upstream(proxy, sims["sim"], store_url)


@pytest_asyncio.fixture
async def sim(upstream: Upstream) -> AsyncIterator[SimulatorServer]:
    await reset(upstream.sim)
    yield upstream.sim
    await reset(upstream.sim)


async def stream_chat(proxy: ProxyProcess, *, include_usage: bool) -> tuple[list[Any], str]:
    """Every chunk the SDK yields for a streamed chat completion of ``TOKENS`` tokens, and its request id."""
    options: Any = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with proxy.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, max_tokens=TOKENS, stream=True, **options
        )
        return [chunk async for chunk in raw.parse()], raw.headers["x-request-id"]


async def stream_completion(proxy: ProxyProcess, *, include_usage: bool) -> tuple[list[Any], str]:
    """Every chunk the SDK yields for a streamed legacy completion, and its request id."""
    options: Any = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with proxy.client() as client:
        raw = await client.completions.with_raw_response.create(
            model="m", prompt=PROMPT, max_tokens=TOKENS, stream=True, **options
        )
        return [chunk async for chunk in raw.parse()], raw.headers["x-request-id"]


def chat_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def completion_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].text for c in chunks if c.choices)


# 1. Output counted however the upstream writes its JSON -------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_spaced_json_without_usage_is_metered_for_every_output_chunk(
    upstream: Upstream, sim: SimulatorServer, endpoint: str, include_usage: bool
) -> None:
    await set_faults(sim, json_style="spaced", no_usage=True)  # llama-cpp-python's server
    if endpoint == "chat":
        chunks, request_id = await stream_chat(upstream.proxy, include_usage=include_usage)
        text = chat_text(chunks)
    else:
        chunks, request_id = await stream_completion(upstream.proxy, include_usage=include_usage)
        text = completion_text(chunks)
    assert len(text.split()) == TOKENS
    assert all(chunk.usage is None for chunk in chunks)  # the upstream sent none: nothing to relay
    record = await upstream.record(request_id)
    assert (record.status, record.estimated, record.completion_tokens) == (200, True, TOKENS)


@pytest.mark.parametrize(
    ("event", "output_chunks"),
    [
        (b'{"choices": [{"index": 0, "delta": {"content": "hi"}}]}', 1),
        (b'{"choices":[{"delta":{"content" : "hi"},"index":0}]}', 1),
        (b'{"choices":[{"delta":{"content":"","role":"assistant"}}]}', 0),
        (b'{"choices":[{"delta":{"content": ""}}]}', 0),
        (b'{"choices":[{"delta":{"content":null,"reasoning_content":"hmm"}}]}', 1),
        (b'{"choices":[{"delta":{"reasoning":"hmm"}}]}', 1),
        (b'{"choices":[{"delta":{"reasoning":"hmm","reasoning_content":"hmm"}}]}', 1),
        (b'{"choices":[{"delta":{"refusal":"no"}}]}', 1),
        (b'{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a"}}]}}]}', 1),
        (b'{"choices":[{"delta":{"content":"say \\"content\\": \\"x\\" twice"}}]}', 1),
        (b'{"choices":[{"delta":{},"logprobs":{"content":[{"token":"a"}]},"finish_reason":"stop"}]}', 0),
        (b'{"choices":[{"index":0,"text":"hi"},{"index":1,"text":""}]}', 1),
    ],
)
def test_the_tap_counts_output_chunks_robustly_to_spacing_key_order_and_kind(
    event: bytes, output_chunks: int
) -> None:
    tap = StreamTap(strip_usage=False)
    stream = b"data: " + event + b"\n\ndata: [DONE]\n\n"
    assert tap.feed(stream) + tap.rest() == stream
    assert tap.content_chunks == output_chunks
    assert tap.done


# 2. A usage chunk the client did not ask for is stripped, whatever its shape ------------------------------


@pytest.mark.parametrize("json_style", ["compact", "spaced"])
@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_usage_chunk_carrying_a_choice_reaches_only_clients_that_asked(
    upstream: Upstream, sim: SimulatorServer, include_usage: bool, json_style: str
) -> None:
    await set_faults(sim, usage_chunk_with_choice=True, json_style=json_style)  # LiteLLM's proxy
    chunks, request_id = await stream_chat(upstream.proxy, include_usage=include_usage)
    assert len(chat_text(chunks).split()) == TOKENS
    with_usage = [chunk for chunk in chunks if chunk.usage is not None]
    if include_usage:
        [last] = with_usage
        assert last is chunks[-1]
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, TOKENS)
    else:
        assert with_usage == []
        # The emptied usage chunk is gone too: role, TOKENS contents, finish.
        assert len(chunks) == TOKENS + 2
        assert chunks[-1].choices[0].finish_reason == "length"
    record = await upstream.record(request_id)
    assert (record.status, record.estimated) == (200, False)
    assert (record.prompt_tokens, record.completion_tokens) == (4, TOKENS)


def test_stripping_usage_keeps_what_else_its_chunk_carries() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    finishing = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
    empty = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}], "usage": usage}
    stream = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in (finishing, empty)) + b"data: [DONE]\n\n"
    tap = StreamTap(strip_usage=True)
    out = tap.feed(stream) + tap.rest()
    assert out == b"data: " + orjson.dumps({"choices": finishing["choices"]}) + b"\n\ndata: [DONE]\n\n"
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (3, 1)


# 3. A stream delivered whole is a success, whenever the upstream closes -----------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_delivered_whole_is_a_success_though_the_upstream_lingers_after_done(
    upstream: Upstream, sim: SimulatorServer, include_usage: bool
) -> None:
    # The upstream keeps its response open long after [DONE]; the SDK hangs up once it has read [DONE].
    await set_faults(sim, linger_after_done_s=600)
    chunks, request_id = await stream_chat(upstream.proxy, include_usage=include_usage)
    assert len(chat_text(chunks).split()) == TOKENS
    assert (chunks[-1].usage is not None) is include_usage
    record = await upstream.record(request_id)
    assert record.status == 200  # not 499: the client left after the whole answer reached it
    assert (record.estimated, record.completion_tokens) == (False, TOKENS)

    async def upstream_released() -> None:
        stats = await sim_stats(sim)
        assert stats["streams_cancelled"] == 1  # tokenyard closed its side instead of waiting 600 s

    await eventually(upstream_released)


async def test_an_upstream_ending_its_body_just_after_done_is_not_cut_off(
    upstream: Upstream, sim: SimulatorServer
) -> None:
    # The end of the body comes in a write of its own, a moment after [DONE] (Starlette's StreamingResponse
    # ends with an empty write): tokenyard leaves the upstream time to send it (1 s, 20 times this moment),
    # so the connection goes back to the pool instead of being dropped.
    await set_faults(sim, linger_after_done_s=0.05)
    chunks, request_id = await stream_chat(upstream.proxy, include_usage=False)
    assert len(chat_text(chunks).split()) == TOKENS
    record = await upstream.record(request_id)
    assert record.status == 200

    async def upstream_finished() -> None:
        stats = await sim_stats(sim)
        assert (stats["streams_completed"], stats["streams_cancelled"]) == (1, 0)

    await eventually(upstream_finished)
    # The connection tokenyard dropped is not missed: the next stream goes through as well.
    await set_faults(sim)
    chunks, request_id = await stream_chat(upstream.proxy, include_usage=False)
    assert len(chat_text(chunks).split()) == TOKENS
    after = await upstream.record(request_id)
    assert after.status == 200


# 4. An upstream that ignores stream: true ----------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_a_whole_answer_to_a_stream_request_reaches_the_sdk_as_a_stream(
    upstream: Upstream, sim: SimulatorServer, endpoint: str, include_usage: bool
) -> None:
    await set_faults(sim, ignore_stream=True)
    if endpoint == "chat":
        chunks, request_id = await stream_chat(upstream.proxy, include_usage=include_usage)
        text = chat_text(chunks)
        assert chunks[0].object == "chat.completion.chunk"
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        chunks, request_id = await stream_completion(upstream.proxy, include_usage=include_usage)
        text = completion_text(chunks)
        assert chunks[0].object == "text_completion"
    assert len(text.split()) == TOKENS
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    with_usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    if include_usage:
        assert [u.completion_tokens for u in with_usage] == [TOKENS]
        assert chunks[-1].choices == []
    else:
        assert with_usage == []
    record = await upstream.record(request_id)
    assert (record.status, record.estimated, record.completion_tokens) == (200, False, TOKENS)


def test_a_whole_chat_answer_becomes_chunks_with_its_tool_calls_and_reasoning() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "why"}
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 9, "total_tokens": 11},
    }
    stream = whole_answer_as_stream(orjson.dumps(answer), chat=True, include_usage=True)
    assert stream is not None
    assert stream.endswith(b"data: [DONE]\n\n")
    events = [orjson.loads(e[6:]) for e in stream.split(b"\n\n") if e.startswith(b"data: {")]
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    delta = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "why",
        "tool_calls": [{"index": 0, **call}],
    }
    assert events == [
        {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": answer["usage"]},
    ]
    assert whole_answer_as_stream(b"<html>not json</html>", chat=True, include_usage=False) is None
    assert whole_answer_as_stream(b'{"data": []}', chat=True, include_usage=False) is None
