"""Dedicated first, spill over at the cap, fail over before the first byte, cool down and come back; near a
dedicated backend's cap, lower key priorities spill over first (the last part pure, without a proxy)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from tests.support.config import CLIENT_KEY, backend, dedicated_config
from tests.support.net import free_port
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, leave_after, running_proxy
from tests.support.simulators import reset, set_faults, sim_stats, simulators
from tokenyard.config import BackendConfig, PriorityHeadroom, TokenyardConfig
from tokenyard.proxy.backends import open_backends
from tokenyard.proxy.routing import Choice, DeploymentView, NoChoice, choose_deployment, reserved_slots
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
COOLDOWN_S = 1.0


def _config(sims: dict[str, SimulatorServer]) -> dict[str, Any]:
    url = {name: sim.base_url for name, sim in sims.items()}
    backends: dict[str, Any] = {
        "dedicated": backend("dedicated", url["ded"], max_concurrency=2),
        "dedicated-serverless": backend("dedicated_serverless", url["dser"], max_concurrency=2),
        "serverless": backend("serverless", url["svl"]),
        "solo": backend("dedicated", url["ded"], max_concurrency=1),
        "closed-port": backend("serverless", f"http://127.0.0.1:{free_port()}/v1"),
        "impatient": backend("serverless", url["a"], timeouts={"first_byte_s": 0.3}),
        "drowsy": backend("serverless", url["a"], timeouts={"idle_s": 0.3}),
        "slow": backend("serverless", url["slow"]),
        "two-per-minute": backend("serverless", url["a"], rpm=2),
        "thousand-tokens-per-minute": backend("serverless", url["a"], tpm=1000),
        "b-limits": backend("serverless", url["b"]),
    }
    models: dict[str, Any] = {
        "llama": {"deployments": ["dedicated", "dedicated-serverless", "serverless"]},
        "solo": {"deployments": ["solo"]},
        "refused": {"deployments": ["closed-port", "b-refused"]},
        "first-byte": {"deployments": ["impatient", "b-first-byte"]},
        "idle": {"deployments": ["drowsy", "b-first-byte"]},
        "slow": {"deployments": ["slow"]},
        "rpm": {"deployments": ["two-per-minute", "b-limits"]},
        "tpm": {"deployments": ["thousand-tokens-per-minute", "b-limits"]},
    }
    # One pair of backends per scenario, so one test's circuit state never leaks into another's.
    for scenario in ("5xx", "429", "cool", "all", "cut"):
        backends[f"a-{scenario}"] = backend("serverless", url["a"])
        backends[f"b-{scenario}"] = backend("serverless", url["b"])
        models[f"pair-{scenario}"] = {"deployments": [f"a-{scenario}", f"b-{scenario}"]}
    backends["b-refused"] = backend("serverless", url["b"])
    backends["b-first-byte"] = backend("serverless", url["b"])
    return {
        "routing": {"failure_threshold": 2, "cooldown_s": COOLDOWN_S},
        "backends": backends,
        "models": models,
        "keys": {"team-a": {"key": CLIENT_KEY}},
    }


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, SimulatorServer]]]:
    slowish = {"ttft_ms": 5, "tokens_per_s": 40}
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", max_concurrency=8, **slowish),
            dser=SimulatorConfig(**slowish),
            svl=SimulatorConfig(**slowish),
            a=SimulatorConfig(ttft_ms=1, tokens_per_s=5000),
            b=SimulatorConfig(ttft_ms=1, tokens_per_s=5000),
            slow=SimulatorConfig(ttft_ms=1, tokens_per_s=20),
        ) as sims,
        running_proxy(_config(sims), tmp_path_factory.mktemp("routing")) as proxy,
    ):
        yield proxy, sims


@pytest_asyncio.fixture
async def proxy(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> ProxyProcess:
    await reset(*stack[1].values())
    return stack[0]


@pytest.fixture
def sims(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> dict[str, SimulatorServer]:
    return stack[1]


async def chat(client: openai.AsyncOpenAI, model: str, max_tokens: int = 2) -> httpx.Headers:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=max_tokens
    )
    raw.parse()
    return raw.headers


async def stream_text(client: openai.AsyncOpenAI, model: str, received: list[str]) -> None:
    """Stream a 10-token chat completion, adding each piece of text to ``received`` as it arrives."""
    stream = await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, stream=True)
    async for chunk in stream:
        received.append(chunk.choices[0].delta.content or "")


async def test_dedicated_first_then_spillover_down_the_chain(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    async with proxy.client() as client:
        served = await asyncio.gather(*(chat(client, "llama", max_tokens=12) for _ in range(6)))
        after_the_burst = await chat(client, "llama")
    by_backend = Counter(h["x-tokenyard-backend"] for h in served)
    assert by_backend == {"dedicated": 2, "dedicated-serverless": 2, "serverless": 2}
    routes = {h["x-tokenyard-backend"]: h["x-tokenyard-route"] for h in served}
    assert routes == {"dedicated": "primary", "dedicated-serverless": "spillover", "serverless": "spillover"}
    details = {h["x-tokenyard-route-detail"] for h in served if h["x-tokenyard-backend"] == "serverless"}
    assert details == {"dedicated at capacity (2/2); dedicated-serverless at capacity (2/2)"}
    assert (await sim_stats(sims["ded"]))["max_in_flight"] <= 2
    assert after_the_burst["x-tokenyard-backend"] == "dedicated"


async def test_streams_hold_their_dedicated_slot_until_they_end(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        first = await client.chat.completions.with_raw_response.create(
            model="solo", messages=MESSAGES, max_tokens=30, stream=True
        )
        try:
            with pytest.raises(openai.RateLimitError) as caught:
                await chat(client, "solo")
        finally:
            [chunk async for chunk in first.parse()]
        after = await chat(client, "solo")
    assert first.headers["x-tokenyard-backend"] == "solo"
    assert caught.value.status_code == 429
    assert caught.value.code == "capacity_exhausted"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert after["x-tokenyard-backend"] == "solo"


async def test_local_rate_limits_spill_over_before_the_provider_says_429(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        by_rpm = [await chat(client, "rpm") for _ in range(3)]
        by_tpm = [await chat(client, "tpm", max_tokens=600) for _ in range(2)]
    assert [h["x-tokenyard-backend"] for h in by_rpm] == ["two-per-minute", "two-per-minute", "b-limits"]
    assert by_rpm[2]["x-tokenyard-route"] == "spillover"
    assert by_rpm[2]["x-tokenyard-route-detail"] == "two-per-minute rate-limited"
    assert [h["x-tokenyard-backend"] for h in by_tpm] == ["thousand-tokens-per-minute", "b-limits"]


async def test_a_5xx_fails_over_to_the_next_deployment(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["a"], fail_next=1, error_status=503)
    async with proxy.client() as client:
        headers = await chat(client, "pair-5xx")
    assert headers["x-tokenyard-backend"] == "b-5xx"
    assert headers["x-tokenyard-route"] == "failover"
    assert headers["x-tokenyard-attempts"] == "2"
    assert (await sim_stats(sims["a"]))["requests_total"] == 1


async def test_a_429_fails_over_and_retry_after_keeps_the_backend_out(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["a"], fail_next=1, error_status=429, retry_after_s=30)
    async with proxy.client() as client:
        first = await chat(client, "pair-429")
        later = [await chat(client, "pair-429") for _ in range(3)]
    assert first["x-tokenyard-backend"] == "b-429"
    assert first["x-tokenyard-route"] == "failover"
    assert {h["x-tokenyard-backend"] for h in later} == {"b-429"}
    assert {h["x-tokenyard-route"] for h in later} == {"fallback"}
    assert (await sim_stats(sims["a"]))["requests_total"] == 1  # not asked again within Retry-After


async def test_connection_refused_fails_over(proxy: ProxyProcess) -> None:
    async with proxy.client() as client:
        headers = await chat(client, "refused")
    assert headers["x-tokenyard-backend"] == "b-refused"
    assert headers["x-tokenyard-route"] == "failover"


async def test_a_slow_first_byte_fails_over(proxy: ProxyProcess, sims: dict[str, SimulatorServer]) -> None:
    await set_faults(sims["a"], first_byte_delay_ms=3000)
    async with proxy.client() as client:
        headers = await chat(client, "first-byte")
    assert headers["x-tokenyard-backend"] == "b-first-byte"
    assert headers["x-tokenyard-route"] == "failover"


async def test_a_failing_backend_cools_down_then_is_probed_back_in(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["a"], fail_next=2, error_status=500)
    async with proxy.client() as client:
        failures = [await chat(client, "pair-cool") for _ in range(2)]
        while_cooling = await chat(client, "pair-cool")
        assert (await sim_stats(sims["a"]))["requests_total"] == 2  # out: not even tried
        await asyncio.sleep(COOLDOWN_S + 0.2)
        probe = await chat(client, "pair-cool")
        back = await chat(client, "pair-cool")
    assert [h["x-tokenyard-route"] for h in failures] == ["failover", "failover"]
    assert while_cooling["x-tokenyard-backend"] == "b-cool"
    assert while_cooling["x-tokenyard-route"] == "fallback"
    assert probe["x-tokenyard-backend"] == "a-cool"
    assert back["x-tokenyard-backend"] == "a-cool"
    assert back["x-tokenyard-route"] == "primary"


async def test_when_every_deployment_fails_the_client_gets_502(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["a"], fail_next=1, error_status=500)
    await set_faults(sims["b"], fail_next=1, error_status=502)
    async with proxy.client() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await chat(client, "pair-all")
    assert caught.value.status_code == 502
    assert "pair-all" in caught.value.message


async def test_no_retry_once_bytes_reached_the_client(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["a"], cut_stream_after_chunks=2)
    async with proxy.client() as client:
        received: list[str] = []
        with pytest.raises(openai.APIError, match="stream"):
            await stream_text(client, "pair-cut", received)
    assert received  # part of the answer arrived before the cut
    assert (await sim_stats(sims["b"]))["requests_total"] == 0


async def test_a_client_leaving_mid_stream_cancels_the_upstream(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 200, "stream": True}
    await leave_after(proxy, body, chunks=3)

    async def upstream_stopped() -> None:
        stats = await sim_stats(sims["slow"])
        assert stats["streams_cancelled"] == 1
        assert stats["in_flight"] == 0
        assert stats["streams_completed"] == 0

    await eventually(upstream_stopped, timeout_s=5)


async def test_a_client_giving_up_on_a_non_streaming_request_cancels_it(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    async with proxy.client(timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="slow", messages=MESSAGES, max_tokens=200)

    async def upstream_stopped() -> None:
        stats = await sim_stats(sims["slow"])
        assert stats["in_flight"] == 0
        assert stats["requests_total"] == 1
        assert stats["requests_cancelled"] == 1

    await eventually(upstream_stopped, timeout_s=5)


async def test_a_stream_gone_silent_ends_with_a_timeout_error_not_a_hang(
    proxy: ProxyProcess, sims: dict[str, SimulatorServer]
) -> None:
    await set_faults(sims["a"], stall_stream_after_chunks=2, stall_s=30)
    async with proxy.client() as client:
        received: list[str] = []
        with pytest.raises(openai.APIError, match="silent"):
            await stream_text(client, "idle", received)
    assert "".join(received).split()  # the tokens before the silence arrived
    assert (await sim_stats(sims["b"]))["requests_total"] == 0  # bytes went out: no failover


# -- who yields first: a key's priority near a dedicated backend's cap (pure) ----------------------------

PRIORITIES = ("high", "normal", "low")  # highest first
DEFAULT_HEADROOM = PriorityHeadroom()  # low leaves 0.2 of the cap, normal and high none


def seen_by(
    priority: str,
    in_flight: int,
    cap: int | None,
    headroom: PriorityHeadroom = DEFAULT_HEADROOM,
    name: str = "ded",
) -> DeploymentView:
    """A dedicated deployment as ``Backend.view`` shows it to a request of ``priority``."""
    share = headroom.shares().get(priority, 0.0)
    reserved = reserved_slots(cap, share) if cap else 0
    return DeploymentView(name, in_flight, cap, False, 0.0, reserved=reserved)


def plain(in_flight: int, cap: int | None, name: str = "ded") -> DeploymentView:
    """The same deployment as routing saw it before keys had a priority."""
    return DeploymentView(name, in_flight, cap, False, 0.0)


def route(
    priority: str, deployments: list[tuple[int, int | None]], headroom: PriorityHeadroom = DEFAULT_HEADROOM
) -> Choice | NoChoice:
    """The choice for a request of ``priority`` over deployments given as (in flight, cap), d0, d1, …"""
    views = [seen_by(priority, n, cap, headroom, name=f"d{i}") for i, (n, cap) in enumerate(deployments)]
    return choose_deployment(views, priority)


def route_as_before(deployments: list[tuple[int, int | None]]) -> Choice | NoChoice:
    return choose_deployment([plain(n, cap, name=f"d{i}") for i, (n, cap) in enumerate(deployments)])


@pytest.mark.parametrize(
    ("cap", "share", "reserved"),
    [
        (0, 0.2, 0),  # scaled to no replicas: nothing to keep
        (1, 0.2, 0),  # one slot: an idle backend serves every priority
        (1, 0.9, 0),
        (2, 0.2, 1),  # rounded up: a headroom keeps a slot on a small cap...
        (4, 0.2, 1),
        (5, 0.2, 1),
        (6, 0.2, 2),
        (10, 0.2, 2),
        (10, 0.7, 7),  # ...computed exactly: 0.7 × 10 is 7, not 7.000000000000001 rounded up to 8
        (10, 0.15, 2),
        (3, 0.9, 2),  # ...but never the last slot
        (10, 0.9, 9),
        (100, 0.01, 1),
        (100, 0.0, 0),
    ],
)
def test_headroom_is_the_share_of_the_cap_rounded_up_but_never_the_last_slot(
    cap: int, share: float, reserved: int
) -> None:
    assert reserved_slots(cap, share) == reserved


@given(st.integers(0, 100_000), st.integers(0, 900_000), st.integers(0, 900_000))
def test_reserved_slots_is_the_exact_ceiling_kept_below_the_cap_and_grows_with_the_share(
    cap: int, millionths: int, more: int
) -> None:
    share, larger = millionths / 1_000_000, max(millionths, more) / 1_000_000
    exact = math.ceil(Fraction(millionths, 1_000_000) * cap)
    assert reserved_slots(cap, share) == max(0, min(cap - 1, exact))
    assert cap - reserved_slots(cap, share) >= min(cap, 1), "a backend with a slot serves every priority"
    assert reserved_slots(cap, share) <= reserved_slots(cap, larger)


def test_near_the_cap_low_spills_over_while_normal_and_high_still_land() -> None:
    near = [(8, 10), (0, None)]
    assert route("low", near) == Choice(1, "spillover", "d0 at capacity for low priority (8/10)")
    assert route("normal", near) == Choice(0, "primary", "")
    assert route("high", near) == Choice(0, "primary", "")
    assert route("low", [(7, 10), (0, None)]) == Choice(0, "primary", "")


def test_at_the_whole_cap_every_priority_hears_the_plain_reason() -> None:
    for priority in PRIORITIES:
        assert route(priority, [(10, 10), (0, None)]) == Choice(1, "spillover", "d0 at capacity (10/10)")


def test_with_nowhere_to_spill_to_low_is_refused_while_slots_stay_for_the_others() -> None:
    refused = route("low", [(8, 10)])
    assert isinstance(refused, NoChoice)
    assert refused.detail == "d0 at capacity for low priority (8/10)"
    assert route("normal", [(8, 10)]) == Choice(0, "primary", "")


headroom_configs = st.tuples(st.integers(0, 900), st.integers(0, 900)).map(
    lambda shares: PriorityHeadroom(low=max(shares) / 1000, normal=min(shares) / 1000)
)
capped_deployments = st.lists(
    st.tuples(st.integers(0, 40), st.one_of(st.none(), st.integers(0, 30))), min_size=1, max_size=5
)


@given(capped_deployments, st.sampled_from(PRIORITIES))
def test_with_no_headroom_every_priority_routes_as_before(
    deployments: list[tuple[int, int | None]], priority: str
) -> None:
    none = PriorityHeadroom(low=0, normal=0)
    assert route(priority, deployments, none) == route_as_before(deployments)


@given(capped_deployments, headroom_configs)
def test_high_is_never_held_back_whatever_the_headroom(
    deployments: list[tuple[int, int | None]], headroom: PriorityHeadroom
) -> None:
    assert route("high", deployments, headroom) == route_as_before(deployments)


@given(capped_deployments, headroom_configs, st.sampled_from([(0, 1), (0, 2), (1, 2)]))
def test_a_lower_priority_never_gets_a_slot_a_higher_one_is_refused(
    deployments: list[tuple[int, int | None]], headroom: PriorityHeadroom, ranks: tuple[int, int]
) -> None:
    higher, lower = (PRIORITIES[rank] for rank in ranks)
    for n, cap in deployments:
        if cap is not None and n >= cap - seen_by(higher, n, cap, headroom).reserved:
            assert n >= cap - seen_by(lower, n, cap, headroom).reserved, (
                "full for the higher: for the lower too"
            )
    for_higher, for_lower = route(higher, deployments, headroom), route(lower, deployments, headroom)
    if isinstance(for_higher, NoChoice):
        assert isinstance(for_lower, NoChoice)
    elif isinstance(for_lower, Choice):
        assert for_lower.position >= for_higher.position, "never earlier than a higher priority's"


async def test_only_dedicated_kinds_hold_slots_back_for_higher_priorities() -> None:
    capped_serverless = BackendConfig(kind="serverless", base_url="http://127.0.0.1:9/v1", max_concurrency=10)
    dedicated_serverless = capped_serverless.model_copy(update={"kind": "dedicated_serverless"})
    config = TokenyardConfig.model_validate(
        {
            "routing": {"priority_headroom": {"low": 0.5, "normal": 0.1}},
            "backends": {
                "ded": dedicated_config(max_concurrency=10),
                "dser": dedicated_serverless,
                "api": capped_serverless,
            },
            "models": {"m": {"deployments": ["ded", "dser", "api"]}},
        }
    )
    async with open_backends(config) as backends:
        for running in backends.values():
            running.in_flight = 8
        reserved = {
            (name, priority): b.view(0.0, 10, already_failed=False, priority=priority).reserved
            for name, b in backends.items()
            for priority in ("high", "normal", "low")
        }
    assert reserved == {
        ("ded", "high"): 0,
        ("ded", "normal"): 1,
        ("ded", "low"): 5,
        ("dser", "high"): 0,
        ("dser", "normal"): 1,
        ("dser", "low"): 5,
        ("api", "high"): 0,  # a serverless provider's cap is not the dedicated capacity priorities share
        ("api", "normal"): 0,
        ("api", "low"): 0,
    }
