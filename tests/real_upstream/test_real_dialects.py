"""The Responses and Messages APIs against real upstreams nobody here wrote: llama-server and LiteLLM's proxy
speak both natively, and either can also be reached through tokenyard's translation to chat completions.

Each request carries a unique marker so the relay's recording of it can be found. The meter's record must
carry exactly the usage the upstream reported in the API it answered in (Responses' ``input_tokens`` with
their cached part, Anthropic's ``input_tokens`` without its cache reads and writes, chat's
``prompt_tokens``), and the client must get the shape its SDK reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
import pytest_asyncio

from tests.real_upstream.relay import Relay, Relayed
from tests.real_upstream.upstreams import LITELLM_KEY, Upstream
from tests.real_upstream.yard import INPUT_PUSD, OUTPUT_PUSD, PRICES, new_marker
from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.stores import metered_records, sqlite_url
from tokenyard.meter.model import UsageRecord

DIALECTS = ["chat", "responses", "messages"]
MAX_TOKENS = 8


@dataclass
class DialectYard:
    """A proxy with, per real upstream, a backend that speaks Responses and Messages natively and one that
    speaks only chat (so both reach it through translation), and a relay recording each upstream."""

    proxy: ProxyProcess
    store_url: str
    relays: dict[str, Relay]

    async def record(self, request_id: str) -> UsageRecord:
        return (await metered_records(self.store_url, request_id))[0]


@pytest_asyncio.fixture(scope="module")
async def dialect_yard(
    litellm: Upstream, llama: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DialectYard]:
    tmp = tmp_path_factory.mktemp("yard-dialects")
    async with AsyncExitStack() as stack:
        relays = {
            "llama": await stack.enter_async_context(Relay(llama.port, tmp)),
            "litellm": await stack.enter_async_context(Relay(litellm.port, tmp)),
        }
        backends: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for up, key, upstream_model in (("llama", "sk-none", None), ("litellm", LITELLM_KEY, "mock-chat")):
            for how, apis in (("native", DIALECTS), ("chat", ["chat"])):
                section = backend("serverless", relays[up].base_url, prices=PRICES, apis=apis)
                section.update(api_key=key, timeouts={"first_byte_s": 120})
                if upstream_model:
                    section["model"] = upstream_model
                backends[f"{up}-{how}"] = section
                models[f"{up}-{how}"] = {"deployments": [f"{up}-{how}"]}
        store_url = sqlite_url(tmp / "meter.sqlite3")
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": store_url, "flush_interval_s": 0.2},
            "backends": backends,
            "models": models,
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        proxy = await start_proxy(config, tmp)
        stack.callback(proxy.stop)
        yield DialectYard(proxy, store_url, relays)


def reported(upstream: Relayed) -> tuple[int, int, int, int]:
    """(prompt, cached, cache-write, completion) tokens as the upstream reported them, in its own API's words,
    whole or streamed."""
    assert upstream.status == 200, upstream.body[:500]
    path = upstream.path.split("?")[0]
    objects = upstream.events() if upstream.streamed else [json.loads(upstream.body)]
    if path.endswith("/chat/completions"):
        usage = upstream.usage()
        assert usage is not None, "asked for usage, the chat upstream sent none"
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return usage["prompt_tokens"], cached, 0, usage["completion_tokens"]
    if path.endswith("/responses"):
        [response] = [o.get("response", o) for o in objects if o.get("type", "") != "response.created"][-1:]
        usage = response["usage"]
        cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
        return usage["input_tokens"], cached, 0, usage["output_tokens"]
    merged: dict[str, Any] = {}
    for obj in objects:  # message_start's usage, then message_delta's cumulative one (or a whole message's)
        usage = (
            obj.get("message", obj).get("usage") if obj.get("type") != "message_delta" else obj.get("usage")
        )
        merged.update({k: v for k, v in (usage or {}).items() if v is not None})
    read, write = merged.get("cache_read_input_tokens", 0), merged.get("cache_creation_input_tokens", 0)
    return merged["input_tokens"] + read + write, read, write, merged["output_tokens"]


async def check_metered(yard: DialectYard, upstream: str, marker: str, request_id: str) -> Relayed:
    exchange = await yard.relays[upstream].find(marker)
    prompt, cached, cache_write, completion = reported(exchange)
    record = await yard.record(request_id)
    metered = (
        record.prompt_tokens,
        record.cached_tokens,
        record.cache_write_tokens,
        record.completion_tokens,
    )
    assert metered == (prompt, cached, cache_write, completion), (
        f"the upstream reported {exchange.body[-600:]!r}"
    )
    assert not record.estimated
    # PRICES have no cached or cache-write price of their own: they cost as input.
    assert record.cost_pusd == prompt * INPUT_PUSD + completion * OUTPUT_PUSD
    return exchange


# LiteLLM's mock model fails a streamed /v1/responses itself (500: "'async for' requires an object with
# __aiter__ method, got ResponsesAPIResponse"): that one case is left out, not hidden.
RESPONSES_CASES = [
    ("llama-native", False), ("llama-native", True), ("llama-chat", False), ("llama-chat", True),
    ("litellm-native", False), ("litellm-chat", False), ("litellm-chat", True),
]  # fmt: skip


@pytest.mark.parametrize(("model", "stream"), RESPONSES_CASES)
async def test_responses_are_metered_as_the_real_upstream_reported(
    dialect_yard: DialectYard, model: str, stream: bool
) -> None:
    marker = new_marker()
    async with dialect_yard.proxy.client() as client:
        raw = await client.responses.with_raw_response.create(
            model=model, input=f"Say hello. {marker}", max_output_tokens=MAX_TOKENS, stream=stream
        )
        if stream:
            events = [event async for event in raw.parse()]
            assert events[-1].type in ("response.completed", "response.incomplete")
            response = events[-1].response
        else:
            response = raw.parse()
    assert response.output_text
    exchange = await check_metered(dialect_yard, model.split("-")[0], marker, raw.headers["x-request-id"])
    translated = model.endswith("-chat")
    assert exchange.path.endswith("/chat/completions" if translated else "/responses")
    assert response.usage is not None
    prompt, _, _, completion = reported(exchange)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (prompt, completion)


@pytest.mark.parametrize("model", ["llama-native", "llama-chat", "litellm-native", "litellm-chat"])
@pytest.mark.parametrize("stream", [False, True])
async def test_messages_are_metered_as_the_real_upstream_reported(
    dialect_yard: DialectYard, model: str, stream: bool
) -> None:
    marker = new_marker()
    async with anthropic.AsyncAnthropic(
        base_url=dialect_yard.proxy.url, api_key=CLIENT_KEY, max_retries=0, timeout=120
    ) as client:
        messages: Any = [{"role": "user", "content": f"Say hello. {marker}"}]
        if stream:
            async with client.messages.stream(
                model=model, max_tokens=MAX_TOKENS, messages=messages
            ) as events:
                message = await events.get_final_message()
            request_id = events.response.headers["x-request-id"]
        else:
            raw = await client.messages.with_raw_response.create(
                model=model, max_tokens=MAX_TOKENS, messages=messages
            )
            message, request_id = await raw.parse(), raw.headers["x-request-id"]
    assert message.content
    assert message.content[0].type == "text"
    exchange = await check_metered(dialect_yard, model.split("-")[0], marker, request_id)
    translated = model.endswith("-chat")
    assert exchange.path.endswith("/chat/completions" if translated else "/messages")
    prompt, _, _, completion = reported(exchange)
    usage = message.usage
    client_saw = (
        usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    )
    assert (client_saw, usage.output_tokens) == (prompt, completion)


async def test_count_tokens_is_the_real_upstreams_count(dialect_yard: DialectYard) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=dialect_yard.proxy.url, api_key=CLIENT_KEY, max_retries=0, timeout=120
    ) as client:
        counted = await client.messages.count_tokens(
            model="llama-native", messages=[{"role": "user", "content": "Count me."}]
        )
    assert counted.input_tokens > 0
    [exchange] = [x for x in dialect_yard.relays["llama"].exchanges() if x.path.endswith("/count_tokens")]
    assert json.loads(exchange.body)["input_tokens"] == counted.input_tokens
