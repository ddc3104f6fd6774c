"""The advisor inside the proxy: real traffic through the SDK, metered into Redis and SQLite, advised on.

The proxy runs as ``tokenyard serve``; the advice API, the gauges and ``tokenyard advise`` all read the
same evaluation. With several replicas on one Redis, one evaluates per interval and the others serve what
it stored.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, run_cli, running_proxy, start_proxy
from tests.support.redis_servers import REDIS_URL, RedisServer
from tests.support.simulators import simulators
from tests.support.stores import PROXY_STORES, open_proxy_store, sqlite_url
from tokenyard.advisor.live import LOCK, AdvisorLoop
from tokenyard.config import TokenyardConfig
from tokenyard.meter.open_store import open_store
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama-3.1-8b-instruct"  # in the catalog: dedicated capacities on H100 and H200, batch prices
REQUESTS = 12


def config_for(sims: dict[str, Any], store: str, prefix: str) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {
            "ded": backend("dedicated", sims["ded"].base_url, max_concurrency=2),
            "svl": backend(
                "serverless", sims["svl"].base_url, prices={"input_per_1m": 0.2, "output_per_1m": 0.6}
            ),
        },
        "models": {MODEL: {"deployments": ["ded", "svl"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {
            "interval_s": 10,
            "stable_evaluations": 1,
            "workloads": {MODEL: {"async_eligible_tenants": ["x"]}},
        },
    }


async def admin_get(
    proxy: ProxyProcess, path: str, key: str | None = ADMIN_KEY, **params: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(f"{proxy.url}{path}", params=params, headers=headers)


async def send_traffic(proxy: ProxyProcess) -> int:
    """Chat completions through the SDK; the completion tokens the clients were told about."""
    async with proxy.client() as client:
        answers = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "one two three"}]
                )
                for _ in range(REQUESTS)
            )
        )
    return sum(a.usage.completion_tokens for a in answers if a.usage)


@pytest_asyncio.fixture(scope="module", params=PROXY_STORES)
async def advised(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ProxyProcess, Path, int]]:
    tmp = tmp_path_factory.mktemp(f"advice-{request.param}")
    async with (
        open_proxy_store(request.param, tmp) as store,
        simulators(
            ded=SimulatorConfig(mode="dedicated", ttft_ms=2, tokens_per_s=2000, max_concurrency=4),
            svl=SimulatorConfig(ttft_ms=2, tokens_per_s=2000),
        ) as sims,
        running_proxy(config_for(sims, store.url, store.prefix), tmp) as proxy,
    ):
        completion_tokens = await send_traffic(proxy)
        yield proxy, tmp, completion_tokens


async def fresh_advice(proxy: ProxyProcess, expected_requests: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def metered_and_advised() -> None:
        response = await admin_get(proxy, "/admin/advice", fresh="1")
        assert response.status_code == 200, response.text
        document = response.json()
        assert [w["requests"] for w in document["workloads"]] == [expected_requests]  # every flush landed
        found.update(document)

    await eventually(metered_and_advised, timeout_s=15)
    return found


async def test_the_advice_api_replays_what_was_metered(advised: tuple[ProxyProcess, Path, int]) -> None:
    proxy, _, completion_tokens = advised
    document = await fresh_advice(proxy, REQUESTS)
    assert document["object"] == "advice"
    assert document["generated_by"].startswith("replica-")
    [workload] = document["workloads"]
    assert workload["workload"] == MODEL
    assert workload["tokens"] == REQUESTS * 3 + completion_tokens  # the simulator counts a token a word
    assert workload["confidence"] == "low"  # a few seconds of history
    assert workload["current"]["label"] == "current: 1 × 1×H100-80GB + serverless"
    assert workload["recommended"]["architecture"] == "serverless"  # a dozen requests do not pay for a GPU
    assert workload["saving_usd_per_month"] > 0
    kinds = {c["architecture"] for c in workload["candidates"]}
    assert {"serverless", "dedicated", "dedicated_autoscaled"} <= kinds
    assert any("observe a full week" in reason for reason in workload["reasons"])


async def test_the_advice_api_needs_the_admin_key(advised: tuple[ProxyProcess, Path, int]) -> None:
    proxy, _, _ = advised
    assert (await admin_get(proxy, "/admin/advice", key=None)).status_code == 401
    denied = await admin_get(proxy, "/admin/advice", key=CLIENT_KEY)
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == "This key may not use the admin API."


async def test_the_gauges_show_the_latest_advice(advised: tuple[ProxyProcess, Path, int]) -> None:
    proxy, _, _ = advised
    document = await fresh_advice(proxy, REQUESTS)
    [workload] = document["workloads"]
    text = (await admin_get(proxy, "/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("tokenyard_advisor_")
    }
    current = samples[("tokenyard_advisor_current_usd_per_day", (("workload", MODEL),))]
    assert current == pytest.approx(workload["current"]["cost_usd_per_month"] / 30.4375, rel=1e-6)
    best = samples[
        ("tokenyard_advisor_best_usd_per_day", (("architecture", "serverless"), ("workload", MODEL)))
    ]
    assert best == pytest.approx(workload["recommended"]["cost_usd_per_month"] / 30.4375, rel=1e-6)
    saving = samples[("tokenyard_advisor_potential_saving_usd_per_day", (("workload", MODEL),))]
    assert saving == pytest.approx(current - best, rel=1e-3)
    assert samples[("tokenyard_advisor_last_evaluation_timestamp_seconds", ())] == document["generated_at"]


async def test_tokenyard_advise_prints_the_table_from_the_store(
    advised: tuple[ProxyProcess, Path, int],
) -> None:
    proxy, _, _ = advised
    await fresh_advice(proxy, REQUESTS)
    assert proxy.config_path is not None
    result = await asyncio.to_thread(run_cli, "advise", "--config", str(proxy.config_path))
    assert result.returncode == 0, result.stderr
    assert "recommended" in result.stdout
    assert MODEL in result.stdout
    as_json = await asyncio.to_thread(run_cli, "advise", "--config", str(proxy.config_path), "--json")
    [workload] = json.loads(as_json.stdout)["workloads"]
    assert workload["requests"] == REQUESTS


async def test_with_metering_off_the_advisor_is_off(tmp_path: Path) -> None:
    async with simulators(svl=SimulatorConfig()) as sims:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": "off"},
            "backends": {"svl": backend("serverless", sims["svl"].base_url)},
            "models": {MODEL: {"deployments": ["svl"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        async with running_proxy(config, tmp_path) as proxy:
            response = await admin_get(proxy, "/admin/advice")
            assert response.status_code == 404
            assert "advisor is off" in response.json()["error"]["message"]


async def test_replicas_on_one_redis_evaluate_once_and_serve_the_same_advice(
    tmp_path: Path, redis_prefix: str
) -> None:
    prefix = redis_prefix
    async with simulators(
        ded=SimulatorConfig(mode="dedicated", ttft_ms=2, max_concurrency=4), svl=SimulatorConfig(ttft_ms=2)
    ) as sims:
        config = config_for(sims, REDIS_URL, prefix)
        config["advisor"]["interval_s"] = 60  # one evaluation in this test's lifetime: the first tick's
        replicas = [await start_proxy(config, tmp_path) for _ in range(3)]
        try:
            await send_traffic(replicas[0])

            async def every_replica_has_advice() -> None:
                for proxy in replicas:
                    text = (await admin_get(proxy, "/metrics")).text
                    assert "tokenyard_advisor_last_evaluation_timestamp_seconds" in text

            await eventually(every_replica_has_advice, timeout_s=20)
            documents = [(await admin_get(p, "/admin/advice")).json() for p in replicas]
            assert len({d["generated_by"] for d in documents}) == 1, "one replica evaluated for all"
            assert len({d["generated_at"] for d in documents}) == 1
            logs = [p.log() for p in replicas]
            assert sum("advisor: 1 workload(s) evaluated" in log or "advisor: 0 workload(s) evaluated" in log
                       for log in logs) == 1  # fmt: skip
        finally:
            for proxy in replicas:
                proxy.stop()


async def test_a_replica_stopped_mid_evaluation_hands_the_interval_to_another(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path / "meter.db"), prefix="ty", retention_s=86400, records_max=10_000)
    settings = config_for({"ded": _Nowhere(), "svl": _Nowhere()}, "sqlite:///:memory:", "ty")
    settings["advisor"]["interval_s"] = 600
    config = TokenyardConfig.model_validate(settings)
    loop = AdvisorLoop(store, lambda: config, replica="replica-a")
    try:
        ticking = asyncio.create_task(loop.tick())

        async def evaluating() -> None:
            assert loop._evaluating.locked()  # it holds the interval's lock and its worker is starting

        await eventually(evaluating, timeout_s=10)
        ticking.cancel()  # as on SIGTERM
        with pytest.raises(asyncio.CancelledError):
            await ticking
        assert await store.try_lock(LOCK, "replica-b", 600), "the unfinished interval is free at once"
    finally:
        await store.aclose()


class _Nowhere:
    base_url = "http://127.0.0.1:9/v1"  # never called: the advisor reads only the store


async def test_with_the_store_down_the_advice_api_says_so_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    async with simulators(
        ded=SimulatorConfig(mode="dedicated", ttft_ms=2, max_concurrency=4), svl=SimulatorConfig(ttft_ms=2)
    ) as sims:
        proxy = await start_proxy(config_for(sims, redis_server.url, "down"), tmp_path)
        try:
            redis_server.stop()
            response = await admin_get(proxy, "/admin/advice", fresh="1")
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["message"].startswith("the evaluation failed: the meter store failed")
            assert await send_traffic(proxy) > 0  # requests are still served
        finally:
            proxy.stop(signal.SIGKILL)  # a graceful stop would spend its drain time on the dead store
