"""Bad input gets a clear OpenAI-shaped 4xx (never a 500 or a hung connection); secrets never leak."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.support.config import CLIENT_KEY, OTHER_KEY, UPSTREAM_SECRET, backend, keys_section
from tests.support.net import free_port
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import simulators
from tokenyard.simulator.config import FaultConfig, SimulatorConfig

MAX_BODY = 64 * 1024
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture(scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProxyProcess]:
    always_401 = SimulatorConfig(faults=FaultConfig(error_rate=1.0, error_status=401))
    async with simulators(
        upstream=SimulatorConfig(ttft_ms=1, tokens_per_s=5000, models=["small"]), locked=always_401
    ) as sims:
        url = sims["upstream"].base_url
        config = {
            "server": {"max_body_bytes": MAX_BODY},
            "backends": {
                "good": backend("serverless", url),
                "unknown-upstream-model": backend("serverless", url, model="not-served-upstream"),
                "nobody-listening": backend("serverless", f"http://127.0.0.1:{free_port()}/v1"),
                "refuses-our-key": backend("serverless", sims["locked"].base_url),
            },
            "models": {
                "small": {"deployments": ["good"]},
                "misnamed": {"deployments": ["unknown-upstream-model"]},
                "unreachable": {"deployments": ["nobody-listening"]},
                "locked": {"deployments": ["refuses-our-key"]},
            },
            "keys": keys_section(),
        }
        async with running_proxy(config, tmp_path_factory.mktemp("errors")) as proxy:
            yield proxy


async def post_raw(
    proxy: ProxyProcess, path: str, content: bytes, key: str | None = CLIENT_KEY
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{proxy.base_url}{path}", content=content, headers=headers)


def assert_openai_error(resp: httpx.Response, status: int, error_type: str, param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["param"] == param
    assert error["message"]


async def test_missing_or_wrong_key_is_401(proxy: ProxyProcess) -> None:
    async with proxy.client(key="sk-not-a-real-key-000") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="small", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert "sk-not-a-real-key-000" not in caught.value.message
    resp = await post_raw(proxy, "/chat/completions", b'{"model":"small","messages":[]}', key=None)
    assert_openai_error(resp, 401, "authentication_error")


async def test_unknown_model_and_model_outside_the_key_are_404(proxy: ProxyProcess) -> None:
    async with proxy.client() as client, proxy.client(key=OTHER_KEY) as team_b:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError) as forbidden:
            await team_b.chat.completions.create(model="misnamed", messages=MESSAGES)
    assert unknown.value.code == forbidden.value.code == "model_not_found"
    # A key that may not use a model cannot tell it from one that does not exist.
    assert forbidden.value.message.replace("misnamed", "X") == unknown.value.message.replace("gpt-nope", "X")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "small", "messages": [}', None),
        (b"[1, 2, 3]", None),
        (b'"just a string"', None),
        (b'{"messages": []}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"model": "small"}', "messages"),
        (b'{"model": "small", "messages": "hello"}', "messages"),
        (b'{"model": "small", "messages": [], "stream": "yes"}', "stream"),
        (b"\xff\xfe\x00garbage", None),
        (b"", None),
        (b'{"model": "small", "messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}', None),
        (b'{"model": "small", "messages": [], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ],
)
async def test_malformed_bodies_are_400_naming_the_param(
    proxy: ProxyProcess, body: bytes, param: str | None
) -> None:
    resp = await post_raw(proxy, "/chat/completions", body)
    assert_openai_error(resp, 400, "invalid_request_error", param)


async def test_each_endpoint_requires_its_own_field(proxy: ProxyProcess) -> None:
    completions = await post_raw(proxy, "/completions", b'{"model": "small"}')
    embeddings = await post_raw(proxy, "/embeddings", b'{"model": "small"}')
    assert_openai_error(completions, 400, "invalid_request_error", "prompt")
    assert_openai_error(embeddings, 400, "invalid_request_error", "input")


async def test_the_sdk_maps_bad_requests_to_bad_request_error(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="small", messages="not a list")  # type: ignore[arg-type]
    assert caught.value.param == "messages"


async def test_huge_bodies_are_413_whether_declared_or_chunked(proxy: ProxyProcess) -> None:
    huge = b'{"model": "small", "messages": [{"role": "user", "content": "' + b"x" * (MAX_BODY * 4) + b'"}]}'
    declared = await post_raw(proxy, "/chat/completions", huge)
    assert_openai_error(declared, 413, "invalid_request_error")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(huge), 16 * 1024):
            yield huge[i : i + 16 * 1024]

    async with httpx.AsyncClient(timeout=10) as http:
        chunked = await http.post(
            f"{proxy.base_url}/chat/completions",
            content=chunks(),
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        )
    assert_openai_error(chunked, 413, "invalid_request_error")
    async with proxy.client() as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "y" * MAX_BODY}]
            )
    assert caught.value.status_code == 413


async def test_unknown_path_is_404_and_wrong_method_405(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        unknown = await http.post(f"{proxy.base_url}/nothing/here", json={})
        wrong_method = await http.get(f"{proxy.base_url}/chat/completions")
    assert_openai_error(unknown, 404, "invalid_request_error")
    assert_openai_error(wrong_method, 405, "invalid_request_error")


async def test_an_upstream_client_error_is_relayed_as_is(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="misnamed", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


async def test_an_unreachable_upstream_is_502_without_its_secrets(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="unreachable", messages=MESSAGES)
    assert caught.value.status_code == 502
    text = caught.value.response.text
    assert UPSTREAM_SECRET not in text
    assert "127.0.0.1" not in text  # upstream addresses stay inside too
    assert UPSTREAM_SECRET not in proxy.log()


async def test_an_upstream_refusing_our_credentials_is_502_not_the_clients_401(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="locked", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "credentials" in caught.value.message
