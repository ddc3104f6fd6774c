"""A client changes only base_url: every OpenAI endpoint keeps working through tokenyard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.support.config import CLIENT_KEY, UPSTREAM_SECRET, backend, keys_section
from tests.support.proxy import ProxyProcess, raw_stream, running_proxy
from tests.support.simulators import reset, set_faults, sim_requests, simulators
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MESSAGES: list[Any] = [{"role": "user", "content": "say something short"}]


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, SimulatorServer]]:
    async with simulators(upstream=SimulatorConfig(ttft_ms=1, tokens_per_s=5000)) as sims:
        url = sims["upstream"].base_url
        config = {
            "backends": {
                "serverless-a": backend("serverless", url),
                "renaming": backend("serverless", url, model="upstream-llama-3"),
            },
            "models": {"small": {"deployments": ["serverless-a"]}, "big": {"deployments": ["renaming"]}},
            "keys": keys_section(),
        }
        async with running_proxy(config, tmp_path_factory.mktemp("compat")) as proxy:
            yield proxy, sims["upstream"]


@pytest_asyncio.fixture
async def proxy(stack: tuple[ProxyProcess, SimulatorServer]) -> ProxyProcess:
    await reset(stack[1])
    return stack[0]


@pytest.fixture
def upstream(stack: tuple[ProxyProcess, SimulatorServer]) -> SimulatorServer:
    return stack[1]


async def test_chat_completion_comes_back_with_usage_and_says_who_served_it(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="small", messages=MESSAGES, max_tokens=5
        )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "small"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == 3
    assert raw.headers["x-tokenyard-backend"] == "serverless-a"
    assert raw.headers["x-tokenyard-backend-kind"] == "serverless"
    assert raw.headers["x-tokenyard-route"] == "primary"
    assert raw.headers["x-tokenyard-mode"] == "realtime"
    assert raw.headers["x-request-id"].startswith("req_")


async def test_stream_is_relayed_chunk_by_chunk_without_usage_unless_asked(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        stream = await client.chat.completions.create(
            model="small", messages=MESSAGES, max_tokens=6, stream=True
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks)


async def test_stream_with_include_usage_ends_with_the_usage_chunk(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        stream = await client.chat.completions.create(
            model="small",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 4, 7)


async def test_stream_arrives_progressively(proxy: ProxyProcess) -> None:
    """The proxy must not buffer a stream whole: the client reads SSE events one network chunk at a time."""
    body = {"model": "small", "messages": MESSAGES, "max_tokens": 8, "stream": True}
    async with raw_stream(proxy, body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        pieces = [piece async for piece in resp.aiter_raw()]
    assert len(pieces) > 3  # first chunk, several token chunks, [DONE]
    assert b"".join(pieces).endswith(b"data: [DONE]\n\n")


async def test_legacy_completions_stream_and_not(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        completion = await client.completions.create(model="small", prompt="once upon a time", max_tokens=3)
        stream = await client.completions.create(
            model="small",
            prompt="once upon",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert completion.object == "text_completion"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2


async def test_embeddings_float_and_base64(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        default = await client.embeddings.create(model="small", input=["one two", "three"])  # SDK asks base64
        floats = await client.embeddings.create(model="small", input="one two", encoding_format="float")
    assert [len(d.embedding) for d in default.data] == [8, 8]
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding)
    assert default.usage.prompt_tokens == 3


async def test_models_lists_what_the_key_may_use(proxy: ProxyProcess) -> None:
    async with proxy.client() as team_a, proxy.client(key="sk-test-team-b-0123456789") as team_b:
        all_models = sorted([m.id async for m in team_a.models.list()])
        b_models = [m.id async for m in team_b.models.list()]
        one = await team_a.models.retrieve("big")
        with pytest.raises(openai.NotFoundError):
            await team_b.models.retrieve("big")
    assert all_models == ["big", "small"]
    assert b_models == ["small"]
    assert one.id == "big"
    assert one.object == "model"


async def test_unknown_fields_pass_through_and_upstream_gets_its_own_key(
    proxy: ProxyProcess, upstream: SimulatorServer
) -> None:
    future_params = {"reasoning_effort": "low", "brand_new_param": {"nested": [1, 2.5, None]}, "seed": 2**70}
    async with proxy.client() as client:
        await client.chat.completions.create(
            model="small", messages=MESSAGES, max_tokens=2, extra_body=future_params
        )
    [seen] = await sim_requests(upstream, limit=1)
    for name, value in future_params.items():
        assert seen["body"][name] == value
    assert seen["body"]["model"] == "small"
    assert seen["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert CLIENT_KEY not in str(seen["headers"])


async def test_the_upstream_model_name_replaces_the_public_one(
    proxy: ProxyProcess, upstream: SimulatorServer
) -> None:
    async with proxy.client() as client:
        completion = await client.chat.completions.create(
            model="big", messages=MESSAGES, max_tokens=2, extra_body={"keep_me": True}
        )
    [seen] = await sim_requests(upstream, limit=1)
    assert seen["body"]["model"] == "upstream-llama-3"
    assert seen["body"]["keep_me"] is True
    assert completion.choices[0].message.content


async def test_health_endpoints(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient() as http:
        live = await http.get(f"http://127.0.0.1:{proxy.port}/health/live")
        ready = await http.get(f"http://127.0.0.1:{proxy.port}/health/ready")
    assert (live.status_code, ready.status_code) == (200, 200)
    assert ready.json() == {"status": "ready"}


async def test_an_upstream_answering_a_stream_request_whole_is_relayed_as_a_stream(
    proxy: ProxyProcess, upstream: SimulatorServer
) -> None:
    await set_faults(upstream, ignore_stream=True)
    body = {"model": "small", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(
            f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in resp.text  # the client did not ask for it (tests/test_upstream_habits.py: more)
    assert resp.headers["x-tokenyard-route"] == "primary"


async def test_a_rewritten_body_keeps_integers_past_64_bits_exact(
    proxy: ProxyProcess, upstream: SimulatorServer
) -> None:
    # A stream without include_usage and a renamed model: the body must be rewritten, not re-rounded.
    async with proxy.client() as client:
        stream = await client.chat.completions.create(
            model="big", messages=MESSAGES, max_tokens=2, stream=True, extra_body={"seed": 2**70 + 1}
        )
        [chunk async for chunk in stream]
    [seen] = await sim_requests(upstream, limit=1)
    assert f'"seed":{2**70 + 1}' in seen["raw"]
    assert seen["body"]["model"] == "upstream-llama-3"
    assert seen["body"]["stream_options"] == {"include_usage": True}
