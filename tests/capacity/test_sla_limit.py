"""The SLA-driven limit against a real proxy and a simulated engine of known capacity.

The dedicated simulator shares 600 tokens/s among its streams (at most 400 each): with an SLA of 30 tokens/s
per stream, the true limit is 20 concurrent streams. More clients than that stream through the proxy; what
does not fit spills over to a serverless simulator. Everything is counted in answers, not in seconds.

The verdict rests on the dedicated simulator's pacing, so it runs in a process of its own (the clients' work
in the test's loop would delay its timers: a slower engine than its model); the serverless one answers each
stream whole (the proxy turns it into a short stream), so spilled traffic costs the machine little.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.load import pressing
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, USER_HELLO, set_faults, simulator_process, simulators
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama"
TRUE_LIMIT = 20  # 600 tokens/s ÷ 30 tokens/s per stream
CLIENTS = 32


def _config(ded: str, svl: str) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "backends": {
            "gpu": backend(
                "dedicated", ded, max_concurrency=64, sla={"min_stream_tokens_per_s": 30, "percentile": 95}
            ),
            "api": backend("serverless", svl),
        },
        "models": {MODEL: {"deployments": ["gpu", "api"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
    }


async def _limit(proxy: ProxyProcess, http: httpx.AsyncClient) -> dict[str, Any]:
    got = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    (gpu,) = [item for item in got.json()["data"] if item["name"] == "gpu"]
    limit: dict[str, Any] = gpu["capacity"]["limit"]
    return limit


async def _after(proxy: ProxyProcess, http: httpx.AsyncClient, samples: int) -> dict[str, Any]:
    """The limit once the limiter has seen at least ``samples`` answers."""
    seen: dict[str, Any] = {}

    async def enough() -> None:
        seen.update(await _limit(proxy, http))
        assert seen["latencies"]["samples"] >= samples

    await eventually(enough, timeout_s=120)
    return seen


def _mean_limit(limit: dict[str, Any], start: int, end: int) -> float:
    """The limit in force from answer ``start`` to answer ``end``, averaged answer by answer (its history
    says after how many answers each change came)."""
    total, in_force, at = 0.0, limit["ceiling"], start
    for change in limit["history"]:
        if change["samples"] > at and at < end:
            upto = min(change["samples"], end)
            total += in_force * (upto - at)
            at = upto
        in_force = change["limit"]
    total += in_force * (end - at)
    return total / (end - start)


@contextlib.asynccontextmanager
async def _load(proxy: ProxyProcess, routes: list[str]) -> AsyncIterator[None]:
    """CLIENTS streaming clients, each asking again as soon as it is answered; ``routes`` gets the route
    header of every answer, in order."""

    async def one_request(client: openai.AsyncOpenAI) -> None:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=USER_HELLO, max_tokens=12, stream=True
        )
        async for _ in raw.parse():
            pass
        routes.append(f"{raw.headers['x-tokenyard-backend']}:{raw.headers['x-tokenyard-route']}")

    async with pressing(proxy.client(max_retries=0, timeout=60), CLIENTS, one_request):
        yield


async def test_the_limit_learns_the_sla_concurrency_and_follows_a_capacity_drop(tmp_path: Path) -> None:
    engine = ("--mode", "dedicated", "--max-concurrency", "64", "--ttft-ms", "20")
    async with (
        simulator_process(*engine, "--aggregate-tokens-per-s", "600", "--tokens-per-s", "400") as ded,
        simulators(
            svl=SimulatorConfig(ttft_ms=50, ttft_jitter=0, tokens_per_s=40, faults={"ignore_stream": True})
        ) as sims,
        running_proxy(_config(ded.base_url, sims["svl"].base_url), tmp_path) as proxy,
        httpx.AsyncClient() as http,
    ):
        routes: list[str] = []
        async with _load(proxy, routes):
            # Converged, then a steady state of ten windows: within 15 % of 20, under the 5 % allowance.
            settled = await _after(proxy, http, 300)
            steady = await _after(proxy, http, settled["latencies"]["samples"] + 300)
            start, end = settled["latencies"]["samples"], steady["latencies"]["samples"]
            mean = _mean_limit(steady, start, end)
            assert 0.85 * TRUE_LIMIT <= mean <= 1.15 * TRUE_LIMIT, (mean, json.dumps(steady))
            breached = steady["latencies"]["breached"] - settled["latencies"]["breached"]
            assert breached / (end - start) < 0.05, (breached, json.dumps(steady))
            before = Counter(routes)

            # Half the engine's capacity: the limit follows to about 10 and more traffic spills over.
            await set_faults(ded, capacity_scale=0.5)
            await _after(proxy, http, end + 300)
            halved = await _after(proxy, http, end + 500)
            mean = _mean_limit(halved, end + 300, halved["latencies"]["samples"])
            assert 0.8 * TRUE_LIMIT / 2 <= mean <= 1.2 * TRUE_LIMIT / 2, (mean, json.dumps(halved))
            after = Counter(routes) - before
        share_before = before["api:spillover"] / before.total()
        share_after = after["api:spillover"] / after.total()
        assert share_after > share_before, (before, after)
        assert set(after) == {"gpu:primary", "api:spillover"}

        # The load has stopped: /metrics shows what /admin/backends shows. The streams still in flight when
        # the clients stopped go on being answered and counted for a moment, so the two are compared once
        # no answer came in between them (the same sample count on either side of the /metrics read).
        read: dict[str, Any] = {}

        async def quiet_reading() -> None:
            read["shown"] = await _limit(proxy, http)
            metrics = await http.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            read["text"] = metrics.text
            again = await _limit(proxy, http)
            assert again["latencies"]["samples"] == read["shown"]["latencies"]["samples"]

        await eventually(quiet_reading)
        shown, text = read["shown"], read["text"]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    gpu = (("backend", "gpu"),)
    assert samples["tokenyard_backend_concurrency_limit", gpu] == shown["current"]
    assert samples["tokenyard_backend_max_concurrency", gpu] == shown["current"]  # one proxy replica
    latencies = shown["latencies"]
    assert samples["tokenyard_backend_ttft_p95_seconds", gpu] * 1000 == pytest.approx(
        latencies["ttft_p95_ms"], abs=0.01
    )
    low_tail = samples["tokenyard_backend_stream_tokens_per_second", (*gpu, ("quantile", "0.05"))]
    assert low_tail == pytest.approx(latencies["stream_tokens_per_s_p5"], abs=0.01)
    assert ("tokenyard_backend_concurrency_limit", (("backend", "api"),)) not in samples  # no sla: no limit


async def test_chats_and_overload_failures_are_measured_embeddings_are_not(tmp_path: Path) -> None:
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", max_concurrency=8, **FAST_UPSTREAM),
            svl=SimulatorConfig(**FAST_UPSTREAM),
        ) as sims,
        running_proxy(
            {**_config(sims["ded"].base_url, sims["svl"].base_url), "routing": {"failure_threshold": 100}},
            tmp_path,
        ) as proxy,
        httpx.AsyncClient() as http,
    ):
        client = proxy.client(max_retries=0)
        # The engine sheds three requests with a 503 (each fails over to the serverless backend): its SLA
        # limit counts them as breached answers.
        await set_faults(sims["ded"], fail_next=3, error_status=503)
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=USER_HELLO)
            assert raw.headers["x-tokenyard-backend"] == "api"
        await client.chat.completions.create(model=MODEL, messages=USER_HELLO)
        stream = await client.chat.completions.create(model=MODEL, messages=USER_HELLO, stream=True)
        async for _ in stream:
            pass
        for _ in range(3):  # an embedding's latency says nothing of decode capacity: not a sample
            raw_embedding = await client.embeddings.with_raw_response.create(model=MODEL, input="hello")
            assert raw_embedding.headers["x-tokenyard-backend"] == "gpu"
        await client.close()
        limit = await _limit(proxy, http)
        assert (limit["latencies"]["samples"], limit["latencies"]["breached"]) == (5, 3)
        got = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        (gpu,) = [item for item in got.json()["data"] if item["name"] == "gpu"]
        assert round(gpu["capacity"]["envelope"]["samples"]) == 2  # the envelope's rates: answers only
