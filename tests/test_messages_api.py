"""Anthropic's Messages API through tokenyard: the anthropic SDK works unchanged (``x-api-key`` or a bearer
token), natively on an ``anthropic`` backend and translated to chat completions on an OpenAI-compatible one,
metered exactly — cache writes and reads at their own prices — with errors in Anthropic's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest
import pytest_asyncio

from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, UPSTREAM_SECRET, backend
from tests.support.metered import gained, totals
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, reset, set_faults, sim_requests, simulators
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

PRICES = {
    "input_per_1m": 3.0,
    "cached_input_per_1m": 0.3,
    "cache_write_input_per_1m": 3.75,
    "output_per_1m": 15.0,
}
HELLO: Any = [{"role": "user", "content": "say something short"}]


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, SimulatorServer]]]:
    sim = SimulatorConfig.model_validate(FAST_UPSTREAM)
    async with simulators(claude=sim, chat=sim) as sims:
        tmp = tmp_path_factory.mktemp("messages")
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": f"sqlite:///{tmp / 'meter.sqlite3'}", "flush_interval_s": 0.1},
            "backends": {
                "claude": backend("serverless", sims["claude"].base_url, provider="anthropic", prices=PRICES),
                "chat-only": backend("serverless", sims["chat"].base_url, prices=PRICES, max_concurrency=2),
            },
            "models": {
                "claude": {"deployments": ["claude"]},
                "translated": {"deployments": ["chat-only"]},
                "either": {"deployments": ["claude", "chat-only"]},
            },
            "keys": {"team-a": {"key": CLIENT_KEY}, "team-b": {"key": OTHER_KEY, "models": ["translated"]}},
        }
        async with running_proxy(config, tmp) as proxy:
            yield proxy, sims


@pytest_asyncio.fixture
async def proxy(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> ProxyProcess:
    await reset(*stack[1].values())
    return stack[0]


@pytest.fixture
def sims(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> dict[str, SimulatorServer]:
    return stack[1]


def claude(proxy: ProxyProcess, key: str = CLIENT_KEY, **options: Any) -> anthropic.AsyncAnthropic:
    """The anthropic SDK pointed at the proxy (it sends the key as ``x-api-key``), no retries."""
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key=key, max_retries=0, timeout=30, **options)


def cost_usd(usage: anthropic.types.Usage) -> float:
    """What a Messages answer costs at ``PRICES`` (Anthropic's input_tokens leave out cached ones)."""
    return (
        usage.input_tokens * 3.0
        + (usage.cache_read_input_tokens or 0) * 0.3
        + (usage.cache_creation_input_tokens or 0) * 3.75
        + usage.output_tokens * 15.0
    ) / 1e6


@pytest.mark.parametrize("model", ["claude", "translated"])
async def test_a_message_comes_back_and_is_metered_as_the_sdk_saw_it(proxy: ProxyProcess, model: str) -> None:
    before = await totals(proxy, model)
    async with claude(proxy) as client:
        raw = await client.messages.with_raw_response.create(
            model=model, max_tokens=8, system="be brief", messages=HELLO
        )
    message = await raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert raw.headers["x-tokenyard-backend"] == ("claude" if model == "claude" else "chat-only")
    metered = await gained(proxy, model, before)
    usage = message.usage
    cache_read, cache_write = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
    assert metered["prompt_tokens"] == usage.input_tokens + cache_read + cache_write
    assert metered["cached_tokens"] == cache_read
    assert metered["cache_write_tokens"] == cache_write
    assert metered["completion_tokens"] == usage.output_tokens
    assert metered["estimated"] == 0
    assert metered["token_cost_usd"] == pytest.approx(cost_usd(usage), rel=1e-9, abs=1e-15)


async def test_the_anthropic_upstream_gets_its_own_auth_and_never_the_clients_key(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    async with claude(proxy) as client:
        await client.messages.create(model="claude", max_tokens=4, messages=HELLO)
    [seen] = [r for r in await sim_requests(sims["claude"]) if r["path"] == "/v1/messages"]
    headers = seen["headers"]
    assert headers["x-api-key"] == UPSTREAM_SECRET
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert CLIENT_KEY not in str(seen)


async def test_cache_writes_and_reads_are_metered_at_their_own_prices(proxy: ProxyProcess) -> None:
    system: Any = [
        {
            "type": "text",
            "text": "a long and stable system prompt " * 40,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    async with claude(proxy) as client:
        before = await totals(proxy, "claude")
        first = await client.messages.create(model="claude", max_tokens=4, system=system, messages=HELLO)
        second = await client.messages.create(model="claude", max_tokens=4, system=system, messages=HELLO)
    assert (first.usage.cache_creation_input_tokens or 0) > 0
    assert (second.usage.cache_read_input_tokens or 0) > 0
    metered = await gained(proxy, "claude", before, requests=2)
    assert metered["cache_write_tokens"] == (first.usage.cache_creation_input_tokens or 0) + (
        second.usage.cache_creation_input_tokens or 0
    )
    assert metered["cached_tokens"] == (first.usage.cache_read_input_tokens or 0) + (
        second.usage.cache_read_input_tokens or 0
    )
    expected = cost_usd(first.usage) + cost_usd(second.usage)
    assert metered["token_cost_usd"] == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("model", ["claude", "translated"])
async def test_a_streamed_message_is_accumulated_by_the_sdk_and_metered(
    proxy: ProxyProcess, model: str
) -> None:
    before = await totals(proxy, model)
    async with (
        claude(proxy) as client,
        client.messages.stream(model=model, max_tokens=6, messages=HELLO) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    metered = await gained(proxy, model, before)
    assert metered["completion_tokens"] == final.usage.output_tokens
    assert metered["prompt_tokens"] == final.usage.input_tokens + (
        final.usage.cache_read_input_tokens or 0
    ) + (final.usage.cache_creation_input_tokens or 0)
    assert metered["estimated"] == 0


async def test_a_bearer_token_works_as_well_as_x_api_key(proxy: ProxyProcess) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=proxy.url, auth_token=CLIENT_KEY, max_retries=0, timeout=30
    ) as client:
        message = await client.messages.create(model="translated", max_tokens=4, messages=HELLO)
    assert message.content


@pytest.mark.parametrize("model", ["claude", "translated"])
async def test_count_tokens_answers_without_metering(proxy: ProxyProcess, model: str) -> None:
    before = await totals(proxy, model)
    async with claude(proxy) as client:
        counted = await client.messages.count_tokens(model=model, messages=HELLO, system="be brief")
        message = await client.messages.create(model=model, max_tokens=4, messages=HELLO, system="be brief")
    assert counted.input_tokens > 0
    if model == "claude":  # the backend counts; the estimate for a chat backend is ~4 characters a token
        assert counted.input_tokens == message.usage.input_tokens
    metered = await gained(proxy, model, before)  # the message only
    assert metered["requests"] == 1


async def test_errors_arrive_as_the_sdks_typed_exceptions(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    async with (
        claude(proxy) as client,
        claude(proxy, key="sk-not-a-key") as stranger,
        claude(proxy, key=OTHER_KEY) as team_b,
    ):
        with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
            await stranger.messages.create(model="claude", max_tokens=4, messages=HELLO)
        with pytest.raises(anthropic.NotFoundError) as not_found:
            await team_b.messages.create(model="claude", max_tokens=4, messages=HELLO)
        with pytest.raises(anthropic.BadRequestError) as untranslatable:
            await client.messages.create(
                model="translated",
                max_tokens=4,
                messages=HELLO,
                thinking={"type": "enabled", "budget_tokens": 1024},
            )
        await set_faults(sims["claude"], fail_next=1, error_status=500)
        with pytest.raises(anthropic.InternalServerError) as upstream_down:
            await client.messages.create(model="claude", max_tokens=4, messages=HELLO)
    assert unauthenticated.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": unauthenticated.value.body["error"]["message"]},
    }
    assert not_found.value.body["error"]["type"] == "not_found_error"
    assert untranslatable.value.body["error"]["type"] == "invalid_request_error"
    assert "thinking" in untranslatable.value.body["error"]["message"]
    assert upstream_down.value.body["type"] == "error"


async def test_bad_input_is_a_400_in_anthropics_shape_and_nothing_is_metered(proxy: ProxyProcess) -> None:
    before = await totals(proxy, "claude")
    headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(headers=headers) as http:
        answers = [
            await http.post(f"{proxy.url}/v1/messages", json={"model": "claude", "messages": HELLO}),
            await http.post(f"{proxy.url}/v1/messages", json={"model": "claude", "max_tokens": 4}),
            await http.post(f"{proxy.url}/v1/messages", content=b"{oops"),
            await http.post(
                f"{proxy.url}/v1/messages", json={"model": "claude", "max_tokens": 0, "messages": HELLO}
            ),
        ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in answers[0].json()["error"]["message"]
    async with claude(proxy) as client:  # still serving
        await client.messages.create(model="claude", max_tokens=4, messages=HELLO)
    assert (await gained(proxy, "claude", before))["requests"] == 1


async def test_failover_and_capacity_behave_as_on_chat(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["claude"], fail_next=1, error_status=529)
    async with claude(proxy) as client:
        raw = await client.messages.with_raw_response.create(model="either", max_tokens=4, messages=HELLO)
        assert raw.headers["x-tokenyard-backend"] == "chat-only"
        assert raw.headers["x-tokenyard-route"] == "failover"
        assert (await raw.parse()).content[0].type == "text"
        await set_faults(sims["chat"], fail_next=5, error_status=503)
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            await client.messages.create(model="translated", max_tokens=4, messages=HELLO)
    assert overloaded.value.status_code in (500, 529)
    assert overloaded.value.body["type"] == "error"
