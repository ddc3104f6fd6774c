"""Trace context and identity headers against real upstreams: LiteLLM's proxy and llama-server take the
headers tokenyard adds (``traceparent``, the caller's tenant and key id), as the relay records they were
sent, and the spans carry exactly the usage the upstream really reported."""

from __future__ import annotations

from typing import Any

import pytest

from tests.real_upstream.yard import Yard, new_marker
from tests.support.otlp import ReceivedSpan
from tests.support.polling import eventually

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
MAX_TOKENS = 8
# The SDK's arguments: whole, streamed, and streamed with usage.
STREAM_MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "stream": {"stream": True},
    "stream+usage": {"stream": True, "stream_options": {"include_usage": True}},
}


@pytest.mark.parametrize("mode", STREAM_MODES)
async def test_a_real_upstream_gets_the_trace_context_and_identity_and_the_span_its_usage(
    yard: Yard, mode: str
) -> None:
    marker = new_marker()
    trace_id = f"{int.from_bytes(marker.encode()[-8:], 'big'):032x}"  # one trace per test
    messages: Any = [{"role": "user", "content": f"Say hello to {marker}."}]
    client_context = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with yard.proxy.client(timeout=120, default_headers={"traceparent": client_context}) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=yard.chat_model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,
            extra_headers={"x-tokenyard-tenant": "forged"},
            **STREAM_MODES[mode],
        )
        if mode == "plain":
            raw.parse()
        else:
            [_ async for _ in raw.parse()]  # type: ignore[union-attr]
    upstream = await yard.chat_relay.find(marker)
    assert upstream.status == 200, upstream.body[:500]
    sent = upstream.request_headers
    assert sent["x-tokenyard-tenant"] == "team-a"  # the key's tenant, not what the client said
    assert sent["x-tokenyard-key-id"] == "team-a"

    spans: list[ReceivedSpan] = []

    async def traced() -> None:
        spans[:] = yard.collector.in_trace(trace_id)
        assert {span.kind for span in spans} == {SERVER, CLIENT}, spans

    await eventually(traced)
    [request] = [span for span in spans if span.kind == SERVER]
    [attempt] = [span for span in spans if span.kind == CLIENT]
    assert sent["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"  # the attempt that reached it
    usage = upstream.usage()
    record = await yard.record(raw.headers["x-request-id"])
    assert request.attributes["gen_ai.usage.input_tokens"] == record.prompt_tokens
    assert request.attributes["gen_ai.usage.output_tokens"] == record.completion_tokens
    assert request.attributes["tokenyard.usage.estimated"] == record.estimated
    assert request.attributes["tokenyard.cost_pusd"] == record.cost_pusd
    if usage is not None:  # what the upstream really reported (the metering tests check the estimates)
        assert request.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
