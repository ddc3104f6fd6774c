"""Metered tokens equal what a real upstream really reported, and clients get what it really sent.

Each request carries a unique marker so the relay's recording of it can be found; tokenyard's meter
record is found by the ``x-request-id`` tokenyard answered with. Where the upstream reported usage the
record must carry exactly that usage (not estimated); where it reported none, the record is estimated with
one completion token per content chunk the upstream really streamed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.real_upstream.relay import Relayed
from tests.real_upstream.yard import INPUT_PUSD, OUTPUT_PUSD, Yard, new_marker
from tokenyard.meter.model import UsageRecord

MAX_TOKENS = 12  # SmolLM2 on one thread: a few tokens are enough to count, and quick
STREAM_MODES = ["plain", "stream", "stream+usage"]


def request_options(mode: str) -> dict[str, Any]:
    """The SDK arguments for a non-streaming, streaming, or streaming-with-usage request."""
    if mode == "plain":
        return {}
    if mode == "stream":
        return {"stream": True}
    return {"stream": True, "stream_options": {"include_usage": True}}


def assert_metered_as_reported(record: UsageRecord, upstream: Relayed) -> None:
    """The record carries the upstream's usage, or (none reported) its streamed content chunks, estimated."""
    assert upstream.status == 200, upstream.body[:500]
    usage = upstream.usage()
    if usage is not None:
        details = usage.get("prompt_tokens_details") or {}
        reported = (
            usage.get("prompt_tokens") or 0,
            details.get("cached_tokens") or 0,
            usage.get("completion_tokens") or 0,
        )
        metered = (record.prompt_tokens, record.cached_tokens, record.completion_tokens)
        assert metered == reported, (
            f"metered {metered} (prompt, cached, completion); the upstream reported {usage}"
        )
        assert not record.estimated
    else:
        assert upstream.streamed, "a whole answer without usage is estimated from its text, not checked here"
        assert record.completion_tokens == upstream.content_chunks(), (
            f"metered {record.completion_tokens} completion tokens; "
            f"the upstream streamed {upstream.content_chunks()} content chunks and no usage"
        )
        assert record.estimated
    assert record.cost_pusd == record.prompt_tokens * INPUT_PUSD + record.completion_tokens * OUTPUT_PUSD


def assert_usage_reached_only_who_asked(mode: str, client_usage: list[Any], record: UsageRecord) -> None:
    """A client that did not ask for usage got none; one that did (or did not stream) got what was metered."""
    if mode == "stream":
        assert client_usage == [], "the client did not ask for usage, yet got it"
        return
    [usage] = client_usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (record.prompt_tokens, record.completion_tokens)


@pytest.mark.parametrize("mode", STREAM_MODES)
async def test_chat_is_metered_as_the_upstream_reported(yard: Yard, mode: str) -> None:
    marker = new_marker()
    messages: Any = [{"role": "user", "content": f"Say hello to {marker}."}]
    async with yard.proxy.client(timeout=120) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=yard.chat_model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,
            **request_options(mode),
        )
        if mode == "plain":
            answer = raw.parse()
            text = answer.choices[0].message.content or ""
            client_usage = [answer.usage]
        else:
            chunks = [chunk async for chunk in raw.parse()]  # type: ignore[union-attr]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            client_usage = [c.usage for c in chunks if c.usage is not None]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    upstream = await yard.chat_relay.find(marker)
    if mode != "plain":
        assert finish == upstream.finish_reasons()  # stripping usage must not lose the chunk that ends it
    sent = upstream.request_json()
    assert (sent["model"], sent["messages"]) == (yard.chat_model, messages)  # forwarded as the client sent it
    if mode != "plain":
        assert sent["stream_options"] == {"include_usage": True}  # tokenyard asks for usage on every stream
    assert text == upstream.text()  # relayed as sent
    record = await yard.record(raw.headers["x-request-id"])
    assert record.status == 200
    assert_metered_as_reported(record, upstream)
    assert_usage_reached_only_who_asked(mode, client_usage, record)


@pytest.mark.parametrize("mode", STREAM_MODES)
async def test_completions_are_metered_as_the_upstream_reported(yard: Yard, mode: str) -> None:
    marker = new_marker()
    async with yard.proxy.client(timeout=120) as client:
        raw = await client.completions.with_raw_response.create(
            model=yard.chat_model,
            prompt=f"The names {marker} and",
            max_tokens=MAX_TOKENS,
            temperature=0,
            **request_options(mode),
        )
        if mode == "plain":
            answer = raw.parse()
            text = answer.choices[0].text
            client_usage = [answer.usage]
        else:
            chunks = [chunk async for chunk in raw.parse()]  # type: ignore[union-attr]
            text = "".join(c.choices[0].text or "" for c in chunks if c.choices)
            client_usage = [c.usage for c in chunks if c.usage is not None]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    upstream = await yard.chat_relay.find(marker)
    if mode != "plain":
        assert finish == upstream.finish_reasons()  # stripping usage must not lose the chunk that ends it
    assert text == upstream.text()
    record = await yard.record(raw.headers["x-request-id"])
    assert record.status == 200
    assert_metered_as_reported(record, upstream)
    assert_usage_reached_only_who_asked(mode, client_usage, record)


async def test_embeddings_are_metered_as_the_upstream_reported(yard: Yard) -> None:
    marker = new_marker()
    async with yard.proxy.client(timeout=120) as client:
        raw = await client.embeddings.with_raw_response.create(
            model=yard.embed_model, input=[f"first {marker}", "second text"], encoding_format="float"
        )
        answer = raw.parse()
    upstream = await yard.embed_relay.find(marker)
    sent = upstream.request_json()
    assert sent["input"] == [f"first {marker}", "second text"]
    assert [d.embedding for d in answer.data] == [
        pytest.approx(d["embedding"]) for d in json.loads(upstream.body)["data"]
    ]
    record = await yard.record(raw.headers["x-request-id"])
    assert record.status == 200
    assert upstream.usage() is not None, "both upstreams report usage for embeddings"
    assert_metered_as_reported(record, upstream)
    assert record.completion_tokens == 0


async def test_streams_delivered_in_full_are_successes(yard: Yard) -> None:
    """The SDK hangs up after ``[DONE]``; whether the upstream has closed yet must not matter."""
    ids = []
    async with yard.proxy.client(timeout=120) as client:
        for _ in range(20):
            marker = new_marker()
            raw = await client.chat.completions.with_raw_response.create(
                model=yard.chat_model,
                messages=[{"role": "user", "content": f"Hi {marker}"}],
                max_tokens=4,
                stream=True,
            )
            async for _chunk in raw.parse():  # type: ignore[union-attr]
                pass
            ids.append((marker, raw.headers["x-request-id"]))
    for marker, request_id in ids:
        upstream = await yard.chat_relay.find(marker)
        assert upstream.saw_done()
        record = await yard.record(request_id)
        assert record.status == 200, f"a stream delivered in full was recorded as {record.status}"
        assert_metered_as_reported(record, upstream)


async def test_a_stream_whose_upstream_has_not_closed_after_done_is_a_success(yard: Yard) -> None:
    """The client has ``[DONE]`` and hangs up before the upstream ends its answer: a success, not 499."""
    marker = new_marker()
    await yard.chat_relay.command(hold_after_done=True)
    try:
        async with yard.proxy.client(timeout=120) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model=yard.chat_model,
                messages=[{"role": "user", "content": f"Hi {marker}"}],
                max_tokens=4,
                stream=True,
            )
            chunks = [chunk async for chunk in raw.parse()]  # type: ignore[union-attr]
    finally:
        # The upstream's answer ends only now, after the client has gone. The pause is only extra time for
        # tokenyard to notice the client left (it must not matter whether it did).
        await asyncio.sleep(0.5)
        await yard.chat_relay.command(release=True)
        await yard.chat_relay.command(hold_after_done=False)
    upstream = await yard.chat_relay.find(marker)
    assert upstream.saw_done()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == upstream.text()
    record = await yard.record(raw.headers["x-request-id"])
    assert record.status == 200, f"a stream delivered in full was recorded as {record.status}"
    assert_metered_as_reported(record, upstream)
