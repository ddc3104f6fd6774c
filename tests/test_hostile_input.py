"""Input nobody should send, and upstreams that all say "later": a clear OpenAI-shaped answer, never a 500.

Nesting deeper than tokenyard will re-encode is a 400 at parse time; a body that names a field tokenyard
reads twice is a 400 naming it (tokenyard would act on one value, an upstream perhaps on the other); a body
tokenyard must change reaches the upstream as the client's bytes with only those fields spliced; and when
every deployment answers 429, the client gets 429 with the shortest Retry-After, during that request and
for the requests that follow while the deployments are held out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.harness import (
    CLIENT_KEY,
    ProxyProcess,
    backend,
    keys_section,
    reset,
    set_faults,
    sim_stats,
    simulators,
    start_proxy,
)
from tokenyard.router.breaker import CircuitBreaker
from tokenyard.router.routing import DeploymentView, NoChoice, choose_deployment
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

UPSTREAM_NAME = "upstream-name"
FAST: dict[str, Any] = {"ttft_ms": 1, "ttft_jitter": 0, "tokens_per_s": 5000, "default_max_tokens": 3}
# Retry-After far above any pause a busy machine can add between two requests of one test.
SHORT_WAIT_S, LONG_WAIT_S = 600, 900


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, SimulatorServer]]]:
    async with simulators(
        up=SimulatorConfig(**FAST), a=SimulatorConfig(**FAST), b=SimulatorConfig(**FAST)
    ) as sims:
        tmp = tmp_path_factory.mktemp("hostile")
        url = sims["up"].base_url
        config = {
            "meter": {"store": f"sqlite:///{tmp}/meter.sqlite3"},
            "routing": {"failure_threshold": 5, "cooldown_s": 1.0, "max_cooldown_s": 3600.0},
            "backends": {
                "plain": backend("serverless", url),
                "renamer": backend("serverless", url, model=UPSTREAM_NAME),
                "a-limited": backend("serverless", sims["a"].base_url),
                "b-limited": backend("serverless", sims["b"].base_url),
            },
            "models": {
                "small": {"deployments": ["plain"]},
                "big": {"deployments": ["plain"]},
                "renamed": {"deployments": ["renamer"]},
                "limited": {"deployments": ["a-limited", "b-limited"]},
            },
            "keys": keys_section(),  # team-b may use only `small`
            "async_track": {},  # service_tier flex is read (and not forwarded)
        }
        proxy = await start_proxy(config, tmp)
        try:
            yield proxy, sims
        finally:
            proxy.stop()


@pytest_asyncio.fixture
async def proxy(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> ProxyProcess:
    await reset(stack[1]["up"])
    return stack[0]


@pytest.fixture
def up(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> SimulatorServer:
    return stack[1]["up"]


async def post(proxy: ProxyProcess, body: bytes, key: str = CLIENT_KEY) -> httpx.Response:
    """POST raw bytes to the chat endpoint (the SDK cannot send duplicate keys or exact spacing)."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{proxy.base_url}/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )


def nested(levels: int) -> str:
    """A JSON array nested ``levels`` deep."""
    return "[" * levels + "]" * levels


# The three paths that change the client's body before forwarding it, and the plain one that does not.
PATHS = {
    "plain": '{"model":"small","messages":[{"role":"user","content":"hi"}],"deep":%s}',
    "stream without include_usage": (
        '{"model":"small","messages":[{"role":"user","content":"hi"}],"stream":true,"deep":%s}'
    ),
    "service_tier flex": (
        '{"model":"small","messages":[{"role":"user","content":"hi"}],"stream":true,'
        '"service_tier":"flex","deep":%s}'
    ),
    "renamed model": '{"model":"renamed","messages":[{"role":"user","content":"hi"}],"deep":%s}',
}


def assert_invalid_request(resp: httpx.Response, text: str, param: str | None = None) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert text in error["message"]
    assert error["param"] == param


# -- every deployment answers 429 -----------------------------------------------------------------------


async def test_when_every_deployment_answers_429_the_client_gets_429_with_the_shortest_wait(
    stack: tuple[ProxyProcess, dict[str, SimulatorServer]],
) -> None:
    proxy, sims = stack
    # The first deployment asks for the shorter wait, so "the last one's Retry-After" would be the longer.
    await set_faults(sims["a"], fail_next=100, error_status=429, retry_after_s=SHORT_WAIT_S)
    await set_faults(sims["b"], fail_next=100, error_status=429, retry_after_s=LONG_WAIT_S)
    body = b'{"model":"limited","messages":[{"role":"user","content":"hi"}]}'
    first = await post(proxy, body)
    later = [await post(proxy, body) for _ in range(3)]
    answers = [(r.status_code, r.json()["error"]["type"]) for r in (first, *later)]
    assert answers == [(429, "rate_limit_error")] * 4
    # The soonest deployment back (less the time this test took, which a busy machine may stretch).
    waits = [int(r.headers["retry-after"]) for r in (first, *later)]
    assert all(SHORT_WAIT_S - 60 <= wait <= SHORT_WAIT_S for wait in waits), waits
    for sim in (sims["a"], sims["b"]):  # each asked once, then left alone for its Retry-After
        assert (await sim_stats(sim))["requests_total"] == 1


# -- pure parts -----------------------------------------------------------------------------------------


def view(name: str, cooling_s: float = 0.0, *, failed: bool = False, limit: bool = False) -> DeploymentView:
    return DeploymentView(name, 0, None, False, cooling_s, failed, limit)


def test_deployments_held_out_by_429s_are_a_429_with_the_soonest_wait() -> None:
    held = choose_deployment([view("a", 40.0, limit=True), view("b", 12.5, limit=True)])
    assert held == NoChoice(True, 12.5, "a cooling down; b cooling down", rate_limited=True)
    # Tried in this request and held out since: their waits still count.
    tried = choose_deployment(
        [view("a", 40.0, failed=True, limit=True), view("b", 12.5, failed=True, limit=True)]
    )
    assert isinstance(tried, NoChoice)
    assert (tried.rate_limited, tried.retry_after_s) == (True, 12.5)
    # The deployment back soonest says why: out after failures is still a 503's cool-down.
    broken_first = choose_deployment([view("a", 40.0, limit=True), view("b", 5.0)])
    assert broken_first == NoChoice(True, 5.0, "a cooling down; b cooling down", rate_limited=False)


def test_a_circuit_a_429_opened_is_held_by_a_rate_limit_until_it_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10.0, max_cooldown_s=60.0)
    assert breaker.on_failure(0.0, breaker.on_dispatch(0.0), 30.0, rate_limited=True)
    assert breaker.rate_limited
    probe = breaker.on_dispatch(30.0)
    assert breaker.on_failure(30.0, probe)  # the probe failed otherwise: out for failures now
    assert not breaker.rate_limited
    assert breaker.on_failure(90.0, breaker.on_dispatch(90.0), 5.0, rate_limited=True)
    assert breaker.on_success(breaker.on_dispatch(95.0))
    assert not breaker.rate_limited
