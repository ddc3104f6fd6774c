"""Provider-native upstreams: each provider's key goes in its own header and nowhere else, each path becomes
the provider's URL, and the key never shows in an error. The config names what is wrong with a provider
section by its path.

OpenAI and Anthropic are checked against the simulator (``/sim/requests`` keeps the path and headers it
got); Azure's URLs live outside the simulator's ``/v1``, so a loopback server keeps what it got there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.support.net import free_port
from tests.support.receiver import read_all, serving
from tests.support.simulators import USER_HELLO, sim_requests, start_sim
from tokenyard.adapters.openai_http import OpenAIHttpUpstream
from tokenyard.adapters.providers import AzureTarget, Provider
from tokenyard.config import parse_config
from tokenyard.errors import ConfigError, UpstreamConnectError
from tokenyard.simulator.server import SimulatorServer

KEY = "sk-provider-secret-4242"
CHAT = orjson.dumps({"model": "sim-model", "messages": USER_HELLO, "max_tokens": 2})
AUTH_HEADERS = {"authorization", "x-api-key", "api-key"}


def upstream(
    base_url: str, provider: Provider = "openai", azure: AzureTarget | None = None
) -> OpenAIHttpUpstream:
    return OpenAIHttpUpstream(
        base_url,
        api_key=KEY,
        connect_s=2,
        first_byte_s=10,
        idle_s=10,
        max_connections=4,
        provider=provider,
        azure=azure,
    )


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with start_sim() as server:
        yield server


def auth_of(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name in AUTH_HEADERS}


async def test_an_openai_upstream_sends_a_bearer_key_to_base_url_and_path(sim: SimulatorServer) -> None:
    client = upstream(sim.base_url)
    try:
        answer = await client.post("/chat/completions", CHAT)
        assert answer.status == 200
        await answer.read()
        stored = await client.request("GET", "/models/sim-model")
        assert (stored.status, orjson.loads(await stored.read())["id"]) == (200, "sim-model")
    finally:
        await client.aclose()
    posted, got = await sim_requests(sim)
    assert (posted["method"], posted["path"]) == ("POST", "/v1/chat/completions")
    assert auth_of(posted["headers"]) == {"authorization": f"Bearer {KEY}"}
    assert (got["method"], got["path"], auth_of(got["headers"])) == (
        "GET",
        "/v1/models/sim-model",
        {"authorization": f"Bearer {KEY}"},
    )


async def test_an_anthropic_upstream_sends_x_api_key_and_the_version_never_a_bearer(
    sim: SimulatorServer,
) -> None:
    client = upstream(sim.base_url, "anthropic")
    body = orjson.dumps({"model": "sim-model", "max_tokens": 2, "messages": USER_HELLO})
    try:
        (await client.post("/messages", body)).close()
        (await client.request("GET", "/messages/batches")).close()
    finally:
        await client.aclose()
    posted, listed = await sim_requests(sim)
    assert (posted["method"], posted["path"], posted["body"]) == ("POST", "/v1/messages", orjson.loads(body))
    assert (listed["method"], listed["path"]) == ("GET", "/v1/messages/batches")
    for seen in (posted, listed):
        assert auth_of(seen["headers"]) == {"x-api-key": KEY}
        assert seen["headers"]["anthropic-version"] == "2023-06-01"


Seen = list[tuple[str, str, str, dict[str, str]]]  # method, path, query, headers


async def test_an_azure_upstream_sends_api_key_to_the_deployment_or_beside_it_with_the_api_version() -> None:
    seen: Seen = []

    async def azure(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_all(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.append((scope["method"], scope["path"], scope["query_string"].decode(), headers))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async with serving(azure) as port:
        client = upstream(
            f"http://127.0.0.1:{port}", "azure", AzureTarget("gpt-4o-prod", "2025-03-01-preview")
        )
        try:
            for path in ("/chat/completions", "/embeddings", "/completions", "/responses"):
                await (await client.post(path, CHAT)).read()
            await (await client.request("GET", "/responses/resp_1/input_items?after=item_3")).read()
            await (await client.request("DELETE", "/responses/resp_1")).read()
        finally:
            await client.aclose()
    version = "api-version=2025-03-01-preview"
    assert [(method, path, query) for method, path, query, _ in seen] == [
        ("POST", "/openai/deployments/gpt-4o-prod/chat/completions", version),
        ("POST", "/openai/deployments/gpt-4o-prod/embeddings", version),
        ("POST", "/openai/deployments/gpt-4o-prod/completions", version),
        ("POST", "/openai/responses", version),  # the deployment is the body's model
        ("GET", "/openai/responses/resp_1/input_items", f"{version}&after=item_3"),
        ("DELETE", "/openai/responses/resp_1", version),
    ]
    assert all(auth_of(headers) == {"api-key": KEY} for *_, headers in seen)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "azure"])
async def test_the_key_never_shows_in_an_upstream_error(provider: Provider) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nobody listens: the connection is refused
    client = upstream(
        nowhere + "/v1", provider, AzureTarget("dep", "2024-10-21") if provider == "azure" else None
    )
    try:
        with pytest.raises(UpstreamConnectError) as caught:
            await client.post("/chat/completions", CHAT)
        with pytest.raises(UpstreamConnectError) as relayed:
            await client.request("GET", "/responses/resp_1")
    finally:
        await client.aclose()
    for error in (caught.value, relayed.value):
        assert KEY not in str(error)
        assert KEY not in repr(error)
        assert "cannot reach the upstream" in str(error)


# -- configuration --------------------------------------------------------------------------------------


def problems_of(backend: str) -> dict[str, str]:
    text = f"backends:\n  b:\n{backend}\nmodels:\n  m: {{deployments: [b]}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={})
    return dict(caught.value.problems)


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        (
            "    kind: serverless\n    base_url: https://r.openai.azure.com\n    provider: azure",
            "azure section",
        ),
        (
            "    kind: serverless\n    base_url: https://a/v1\n    azure: {deployment: d}",
            "only it takes one",
        ),
        (
            "    kind: batch\n    base_url: https://r.openai.azure.com\n    provider: azure\n"
            "    azure: {deployment: d}",
            "Azure's Batch API is not supported",
        ),
        (
            "    kind: dedicated_serverless\n    base_url: https://a/v1\n    provider: anthropic",
            "its provider is openai",
        ),
        (
            "    kind: serverless\n    base_url: https://a/v1\n    provider: anthropic\n    apis: [chat]",
            "speaks messages only",
        ),
        ("    kind: serverless\n    base_url: https://a/v1\n    apis: [chat, chat]", "lists an API twice"),
    ],
)
def test_provider_problems_are_named_by_the_backends_path(backend: str, says: str) -> None:
    problems = problems_of(backend)
    assert list(problems) == ["backends.b"]
    assert says in problems["backends.b"]


@pytest.mark.parametrize(
    ("backend", "path"),
    [
        ("    kind: serverless\n    base_url: https://a/v1\n    provider: mistral", "backends.b.provider"),
        (
            "    kind: serverless\n    base_url: https://r.openai.azure.com\n    provider: azure\n"
            "    azure: {deployment: 'has space'}",
            "backends.b.azure.deployment",
        ),
        ("    kind: serverless\n    base_url: https://a/v1\n    apis: [smoke]", "backends.b.apis.0"),
    ],
)
def test_bad_provider_values_are_named_by_their_own_path(backend: str, path: str) -> None:
    assert path in problems_of(backend)


def test_provider_sections_that_fit_load() -> None:
    config = parse_config(
        "backends:\n"
        "  claude: {kind: serverless, provider: anthropic, base_url: https://api.anthropic.com/v1}\n"
        "  claude-batch: {kind: batch, provider: anthropic, base_url: https://api.anthropic.com/v1}\n"
        "  az: {kind: serverless, provider: azure, base_url: https://r.openai.azure.com,"
        " azure: {deployment: gpt-4o-prod}}\n"
        "models:\n  claude: {deployments: [claude], batch: claude-batch}\n  gpt: {deployments: [az]}\n",
        env={},
    )
    az = config.backends["az"]
    assert az.azure is not None
    assert (az.azure.deployment, az.azure.api_version) == ("gpt-4o-prod", "2024-10-21")
    assert config.backends["claude-batch"].speaks == frozenset({"messages"})
