"""OpenAI's Responses API through tokenyard: the openai SDK's ``client.responses`` works unchanged, natively
on a backend that speaks it and translated to chat completions on one that does not, metered exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, UPSTREAM_SECRET, backend
from tests.support.metered import gained, totals
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, reset, set_faults, sim_requests, simulators
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

PRICES = {"input_per_1m": 1.0, "cached_input_per_1m": 0.5, "output_per_1m": 4.0}
NATIVE_APIS = ["chat", "completions", "embeddings", "responses"]


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, SimulatorServer]]]:
    sim = SimulatorConfig.model_validate(FAST_UPSTREAM)
    async with simulators(native=sim, chat=sim, ded=sim) as sims:
        tmp = tmp_path_factory.mktemp("responses")
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": f"sqlite:///{tmp / 'meter.sqlite3'}", "flush_interval_s": 0.1},
            "backends": {
                "native": backend("serverless", sims["native"].base_url, apis=NATIVE_APIS, prices=PRICES),
                "chat-only": backend("serverless", sims["chat"].base_url, prices=PRICES),
                "ded-chat": backend("dedicated", sims["ded"].base_url, max_concurrency=4),
            },
            "models": {
                "native": {"deployments": ["native"]},
                "translated": {"deployments": ["chat-only"]},
                "either": {"deployments": ["native", "chat-only"]},
                "on-dedicated": {"deployments": ["ded-chat"]},
            },
            "keys": {"team-a": {"key": CLIENT_KEY}, "team-b": {"key": OTHER_KEY}},
            "async_track": {},
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


@pytest.mark.parametrize("model", ["native", "translated"])
async def test_a_response_comes_back_and_is_metered_as_the_sdk_saw_it(
    proxy: ProxyProcess, model: str
) -> None:
    before = await totals(proxy, model)
    async with proxy.client() as client:
        raw = await client.responses.with_raw_response.create(
            model=model, input="say something short", instructions="be brief", max_output_tokens=8
        )
    response = raw.parse()
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.usage is not None
    assert raw.headers["x-tokenyard-backend"] == ("native" if model == "native" else "chat-only")
    metered = await gained(proxy, model, before)
    usage = response.usage
    assert metered["prompt_tokens"] == usage.input_tokens
    assert metered["completion_tokens"] == usage.output_tokens
    assert metered["cached_tokens"] == usage.input_tokens_details.cached_tokens
    assert metered["reasoning_tokens"] == usage.output_tokens_details.reasoning_tokens
    assert metered["estimated"] == 0
    cached = usage.input_tokens_details.cached_tokens
    expected_usd = ((usage.input_tokens - cached) * 1.0 + cached * 0.5 + usage.output_tokens * 4.0) / 1e6
    assert metered["token_cost_usd"] == pytest.approx(expected_usd, rel=1e-9, abs=1e-15)


async def test_translated_request_reaches_the_chat_backend_as_chat(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    async with proxy.client() as client:
        await client.responses.create(
            model="translated",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
            instructions="answer in one word",
            max_output_tokens=5,
            temperature=0.5,
        )
    [seen] = [r for r in await sim_requests(sims["chat"]) if r["path"].endswith("/chat/completions")]
    body = seen["body"]
    assert body["model"] == "translated"
    assert body["messages"][0] == {"role": "system", "content": "answer in one word"}
    assert body["messages"][-1]["role"] == "user"
    assert body["max_completion_tokens"] == 5
    assert body["temperature"] == 0.5
    assert seen["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"


@pytest.mark.parametrize("model", ["native", "translated"])
async def test_a_streamed_response_ends_completed_with_the_usage_metered(
    proxy: ProxyProcess, model: str
) -> None:
    before = await totals(proxy, model)
    async with (
        proxy.client() as client,
        # No max_output_tokens: an answer cut at it ends in response.incomplete, which the SDK's stream
        # helper does not take as a final response.
        client.responses.stream(model=model, input="stream me a few words") as stream,
    ):
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.usage is not None
    metered = await gained(proxy, model, before)
    assert metered["prompt_tokens"] == final.usage.input_tokens
    assert metered["completion_tokens"] == final.usage.output_tokens
    assert metered["estimated"] == 0


async def test_function_tools_come_back_as_function_calls(proxy: ProxyProcess) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    async with proxy.client() as client:
        response = await client.responses.create(
            model="native", input="weather in Paris?", tools=tools, tool_choice="required"
        )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls
    assert calls[0].name == "get_weather"


async def test_what_translation_cannot_carry_is_a_400_naming_it(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model="translated",
                input="search the web",
                tools=[{"type": "web_search"}],
                previous_response_id="resp_123",
            )
        assert "web_search" in refused.value.message
        assert "previous_response_id" in refused.value.message
        # What translation can carry still goes through.
        still = await client.responses.create(model="translated", input="plain text is fine")
    assert still.output_text


async def test_bad_input_is_a_clear_400_and_the_proxy_keeps_serving(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as http:
        no_model = await http.post(f"{proxy.base_url}/responses", json={"input": "hi"})
        not_json = await http.post(f"{proxy.base_url}/responses", content=b"{not json")
        bad_stream = await http.post(
            f"{proxy.base_url}/responses", json={"model": "native", "input": "hi", "stream": "yes"}
        )
    for answer in (no_model, not_json, bad_stream):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert no_model.json()["error"]["param"] == "model"
    async with proxy.client() as client:
        assert (await client.responses.create(model="native", input="still here?")).output_text


async def test_failover_from_a_native_backend_to_a_translated_one(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["native"], fail_next=1, error_status=503)
    async with proxy.client() as client:
        raw = await client.responses.with_raw_response.create(model="either", input="fail over please")
    assert raw.headers["x-tokenyard-backend"] == "chat-only"
    assert raw.headers["x-tokenyard-route"] == "failover"
    assert raw.headers["x-tokenyard-attempts"] == "2"
    assert raw.parse().output_text


async def test_a_stored_response_is_read_back_from_the_backend_that_made_it(proxy: ProxyProcess) -> None:
    async with proxy.client() as client, proxy.client(OTHER_KEY) as other:
        made = await client.responses.create(model="native", input="remember this")
        again = await client.responses.retrieve(made.id)
        assert again.id == made.id
        assert again.output_text == made.output_text
        items = await client.responses.input_items.list(made.id)
        assert items.data
        with pytest.raises(openai.NotFoundError):  # another tenant's response is not found
            await other.responses.retrieve(made.id)
        await client.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)


@pytest.mark.parametrize("model", ["on-dedicated", "native"])
async def test_background_runs_on_the_async_track_and_is_retrieved_when_done(
    proxy: ProxyProcess, model: str
) -> None:
    before = await totals(proxy, model)
    async with proxy.client() as client:
        raw = await client.responses.with_raw_response.create(
            model=model, input="take your time", background=True, max_output_tokens=5
        )
        queued = raw.parse()
        assert queued.status == "queued"
        assert queued.background is True
        assert raw.headers["x-tokenyard-mode"] == "async"
        assert raw.headers["x-tokenyard-mode-reason"] == "background: true"
        done: dict[str, Any] = {}

        async def completed() -> None:
            got = await client.responses.retrieve(queued.id)
            # The answer ran to max_output_tokens: a finished response, cut at the limit.
            assert got.status == "incomplete", got.status
            assert got.incomplete_details is not None
            assert got.incomplete_details.reason == "max_output_tokens"
            done["response"] = got

        await eventually(completed, timeout_s=20)
    response = done["response"]
    assert response.id == queued.id
    assert response.output_text
    assert response.usage is not None
    metered = await gained(proxy, model, before)
    assert metered["completion_tokens"] == response.usage.output_tokens
    assert metered["prompt_tokens"] == response.usage.input_tokens


async def test_background_is_tenant_scoped_and_streaming_it_is_refused(proxy: ProxyProcess) -> None:
    async with proxy.client() as client, proxy.client(OTHER_KEY) as other:
        queued = await client.responses.create(model="on-dedicated", input="mine", background=True)
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(queued.id)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="native", input="x", background=True, stream=True)
    assert refused.value.body is not None
    assert "poll" in refused.value.message


@pytest.mark.parametrize("model", ["on-dedicated", "native"])
async def test_service_tier_flex_waits_on_the_connection_as_for_chat(proxy: ProxyProcess, model: str) -> None:
    before = await totals(proxy, model)
    async with proxy.client() as client:
        raw = await client.responses.with_raw_response.create(
            model=model, input="flex me", service_tier="flex"
        )
    assert raw.headers["x-tokenyard-mode"] == "async"
    assert raw.headers["x-tokenyard-mode-reason"] == "service_tier: flex"
    response = raw.parse()
    assert response.object == "response"
    assert response.output_text
    assert response.usage is not None
    metered = await gained(proxy, model, before)
    assert metered["completion_tokens"] == response.usage.output_tokens
