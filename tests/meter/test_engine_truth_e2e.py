"""Metered engine truth end to end: a real proxy scrapes a dedicated simulator's own ``/metrics`` while
clients reach that engine both through tokenyard and around it (straight at its ``/v1``). The usage API then
says the engine processed every token tokenyard metered plus, exactly, the tokens it never saw; with an
engine that measures its busy time (SGLang's names), utilization is the engine's. Two proxy replicas on one
Redis, both scraping the same engine, count its tokens once.

Nothing is timed: each step polls the usage API until the figure it waits for is there. Work done before
the engine's first stored reading has no reading to be measured from, so every test waits for that first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.redis_servers import REDIS_URL
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import ProxyStore, open_proxy_store
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MODEL = "llama"


def engine_sim(profile: Literal["vllm", "sglang"] = "vllm") -> SimulatorConfig:
    """A dedicated engine serving ``/metrics`` in vLLM's (or SGLang's) names."""
    return SimulatorConfig(mode="dedicated", max_concurrency=8, metrics_profile=profile, **FAST_UPSTREAM)


def proxy_config(sim: SimulatorServer, store: ProxyStore) -> dict[str, Any]:
    """One dedicated backend whose engine is scraped twice a second (``metrics_url: auto``: its /metrics)."""
    ded = backend("dedicated", sim.base_url, max_concurrency=8)
    ded.update(metrics_url="auto", engine={"interval_s": 0.5})
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store.url, "redis_prefix": store.prefix, "flush_interval_s": 0.2},
        "backends": {"ded": ded},
        "models": {MODEL: {"deployments": ["ded"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {"enabled": False},
        "async_track": {"enabled": False},
    }


async def usage(proxy: ProxyProcess) -> dict[str, Any]:
    """The last hour's usage, one period, no grouping."""
    body: dict[str, Any] = await proxy.admin("/admin/usage", start="1h", granularity="total", group_by="")
    return body


async def dedicated(proxy: ProxyProcess) -> dict[str, Any]:
    """The usage API's summary of the dedicated backend (there once the meter has flushed any of it)."""
    summaries = (await usage(proxy))["dedicated"]
    assert len(summaries) == 1, summaries
    summary: dict[str, Any] = summaries[0]
    return summary


async def until_engine_read(proxy: ProxyProcess) -> None:
    """Poll until the engine's first reading is stored: the counters all later work is measured from."""

    async def read() -> None:
        rows = [row for row in (await usage(proxy))["engine"] if row["backend"] == "ded"]
        assert rows, "no engine reading stored yet"
        assert rows[0]["scrapes"] >= 1

    await eventually(read, timeout_s=30)


async def through_tokenyard(proxy: ProxyProcess, requests: int) -> int:
    """Chat completions through tokenyard with the SDK, streamed and not; the tokens their usage says."""
    tokens = 0
    async with proxy.client() as sdk:
        for i in range(requests):
            messages: Any = [{"role": "user", "content": f"through tokenyard, request {i} of {requests}"}]
            if i % 2:
                stream = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    max_tokens=3 + i,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        tokens += chunk.usage.total_tokens
            else:
                answer = await sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=3 + i)
                assert answer.usage is not None
                tokens += answer.usage.total_tokens
    return tokens


async def around_tokenyard(sim: SimulatorServer, requests: int) -> int:
    """Chat completions sent straight to the engine (another client sharing it); the tokens it reported."""
    tokens = 0
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(requests):
            got = await http.post(
                f"{sim.base_url}/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"around tokenyard, a longer prompt {i}"}],
                    "max_tokens": 7,
                },
            )
            assert got.status_code == 200, got.text
            tokens += got.json()["usage"]["total_tokens"]
    return tokens


async def until_counted(proxy: ProxyProcess, through: int, around: int) -> dict[str, Any]:
    """Poll until the usage API's dedicated backend holds every token: tokenyard's ``through`` and, in the
    engine's figures, ``around`` more. Returns that backend's summary."""
    got: dict[str, Any] = {}

    async def counted() -> None:
        ded = await dedicated(proxy)
        got.clear()
        got.update(ded)
        assert (ded["tokens"], ded["engine_tokens"]) == (through, through + around)

    await eventually(counted, timeout_s=30)
    return got


async def test_the_engine_counts_what_tokenyard_metered_plus_the_traffic_it_did_not_see(
    proxy_store: ProxyStore, tmp_path: Path
) -> None:
    async with (
        simulators(ded=engine_sim()) as sims,
        running_proxy(proxy_config(sims["ded"], proxy_store), tmp_path) as proxy,
    ):
        await until_engine_read(proxy)
        through = await through_tokenyard(proxy, 4)
        around = await around_tokenyard(sims["ded"], 3)
        ded = await until_counted(proxy, through, around)
    assert through > 0
    assert around > 0
    assert ded["unseen_tokens"] == around
    assert (ded["tokens_source"], ded["source"]) == ("engine", "engine")
    engine = ded["engine"]
    assert (engine["tokens"], engine["tokenyard_tokens"], engine["unseen_tokens"]) == (
        through + around,
        through,
        around,
    )
    # vLLM has no busy-time counter: utilization stays tokenyard's busy slot-time.
    assert (engine["busy_s"], ded["utilization_source"]) == (None, "tokenyard")
    assert ded["utilization"] == ded["slot_utilization"]


async def test_an_engine_that_measures_busy_time_gives_the_utilization(tmp_path: Path) -> None:
    async with (
        simulators(ded=engine_sim("sglang")) as sims,
        open_proxy_store("sqlite", tmp_path) as store,
        running_proxy(proxy_config(sims["ded"], store), tmp_path) as proxy,
    ):
        await until_engine_read(proxy)
        through = await through_tokenyard(proxy, 4)
        around = await around_tokenyard(sims["ded"], 2)
        await until_counted(proxy, through, around)
        ded: dict[str, Any] = {}

        async def engine_utilization() -> None:
            # Busy time is set against the GPU time accrued in the same minutes, which a flush brings.
            got = await dedicated(proxy)
            ded.update(got)
            assert got["utilization_source"] == "engine"

        await eventually(engine_utilization, timeout_s=30)
    assert (ded["unseen_tokens"], ded["tokens_source"], ded["source"]) == (around, "engine", "engine")
    assert ded["engine"]["busy_s"] > 0
    assert ded["utilization"] == ded["engine"]["utilization"]
    assert 0 < ded["utilization"] <= 1


@contextlib.asynccontextmanager
async def two_replicas(sim: SimulatorServer, tmp_path: Path) -> AsyncIterator[list[ProxyProcess]]:
    """Two proxy replicas metering into one Redis prefix, both scraping ``sim``."""
    async with open_proxy_store("redis", tmp_path) as store:
        assert store.url == REDIS_URL
        config = proxy_config(sim, store)
        async with running_proxy(config, tmp_path) as first, running_proxy(config, tmp_path) as second:
            yield [first, second]


async def scraping(proxy: ProxyProcess) -> None:
    """Poll until the replica has read the engine itself (its own scraper, fresh)."""

    async def fresh() -> None:
        items = (await proxy.admin("/admin/backends"))["data"]
        [ded] = [item for item in items if item["name"] == "ded"]
        assert ded["capacity"]["engine"]["fresh"] is True

    await eventually(fresh, timeout_s=30)


async def test_two_replicas_scraping_one_engine_count_its_tokens_once(tmp_path: Path) -> None:
    async with simulators(ded=engine_sim()) as sims, two_replicas(sims["ded"], tmp_path) as fleet:
        for proxy in fleet:
            await scraping(proxy)
        await until_engine_read(fleet[0])
        through = await through_tokenyard(fleet[0], 3) + await through_tokenyard(fleet[1], 2)
        around = await around_tokenyard(sims["ded"], 3)
        seen = [await until_counted(proxy, through, around) for proxy in fleet]
    for ded in seen:
        assert (ded["tokens"], ded["engine_tokens"], ded["unseen_tokens"]) == (
            through,
            through + around,
            around,
        )
