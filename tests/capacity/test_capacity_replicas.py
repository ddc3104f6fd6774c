"""Closing the loop on real processes: two ``tokenyard serve`` replicas on one Redis, the leader's actuator
scales a dedicated backend, and both replicas' routing cap and GPU accrual follow; ``GET /admin/capacity``
and ``/metrics`` say the same on both.

The demand is planted in the shared store as the meter flushes it (real-time minutes of the model), so
the desired count is known without minutes of traffic; everything else is the real thing.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, sim_requests, simulators
from tests.support.stores import fresh_prefix
from tokenyard.meter.model import AGG_FIELDS, AggKey, FlushBatch
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.simulator.config import SimulatorConfig

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SCRIPT = 'import sys\nwith open(sys.argv[1], "a") as f:\n    f.write(" ".join(sys.argv[2:]) + "\\n")\n'
_ids = (f"planted-{n}" for n in itertools.count())


@pytest.fixture
def prefix() -> str:
    return fresh_prefix()


@pytest.fixture
async def fleet(prefix: str, tmp_path: Path) -> AsyncIterator[list[ProxyProcess]]:
    """Filled by the test; every proxy in it is stopped and the prefix's keys deleted at the end."""
    started: list[ProxyProcess] = []
    try:
        yield started
    finally:
        for proxy in started:
            proxy.stop()
        await delete_prefix(prefix)


def config(sims: dict[str, Any], prefix: str, actuator: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": REDIS_URL, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {
            # No catalog entry for "llama": capacity per replica is max_concurrency 4 × 50 tok/s = 200.
            "ded": backend(
                "dedicated", sims["ded"].base_url, max_concurrency=4, sla={"min_stream_tokens_per_s": 50}
            ),
            "api": backend("serverless", sims["api"].base_url),
        },
        "models": {"llama": {"deployments": ["ded", "api"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {"enabled": False},
        "async_track": {"enabled": False},
        "capacity": {"interval_s": 1, "window_minutes": 5, "actuator": actuator},
    }


async def plant_demand(prefix: str, tokens_per_s: float) -> None:
    """Real-time demand for llama in every minute around now, in the proxies' shared store."""
    store = RedisMeterStore(REDIS_URL, prefix=prefix, retention_s=86400, records_max=1000)
    now = int(time.time()) // 60 * 60
    fields = dict.fromkeys(AGG_FIELDS, 0) | {"requests": 100, "completion_tokens": round(tokens_per_s * 60)}
    rows = {
        AggKey(m, "team-a", "llama", "api", "serverless", "realtime"): fields
        for m in range(now - 240, now + 120, 60)
    }
    try:
        await store.write(FlushBatch(next(_ids), rows))
    finally:
        await store.aclose()


async def gpu_totals(prefix: str) -> tuple[int, int]:
    """The dedicated backend's provisioned wall-ms and GPU-ms so far, as the shared store accrued them."""
    store = RedisMeterStore(REDIS_URL, prefix=prefix, retention_s=86400, records_max=1000)
    try:
        rows = await store.gpu(int(time.time()) // 60 * 60 - 3600, int(time.time()) // 60 * 60 + 120)
    finally:
        await store.aclose()
    return sum(f["wall_ms"] for _, f in rows), sum(f["gpu_ms"] for _, f in rows)


async def gpus_accrued_from_now(prefix: str) -> float:
    """GPUs the store accrues per provisioned second from here on: the GPU-ms over the wall-ms that accrue
    while at least one more second is provisioned (counted, not slept: polled until it has)."""
    start = await gpu_totals(prefix)
    end = start

    async def a_second_more() -> None:
        nonlocal end
        end = await gpu_totals(prefix)
        assert end[0] - start[0] >= 1000

    await eventually(a_second_more, timeout_s=20)
    return (end[1] - start[1]) / (end[0] - start[0])


async def admin_get(http: httpx.AsyncClient, proxy: ProxyProcess, path: str) -> Any:
    got = await http.get(proxy.url + path, headers=ADMIN)
    assert got.status_code == 200, got.text
    return got.json() if path != "/metrics" else got.text


async def dedicated_state(http: httpx.AsyncClient, proxy: ProxyProcess) -> dict[str, Any]:
    items = (await admin_get(http, proxy, "/admin/backends"))["data"]
    return next(item for item in items if item["name"] == "ded")


async def test_a_successful_actuation_moves_routing_and_gpu_accrual_on_both_replicas(
    fleet: list[ProxyProcess], prefix: str, tmp_path: Path
) -> None:
    script, ran = tmp_path / "scale.py", tmp_path / "ran.txt"
    script.write_text(SCRIPT)
    actuator = {
        "kind": "command",
        "command": [sys.executable, str(script), str(ran), "{backend}", "{replicas}"],
        "dry_run": False,
        "max_step": 1,
        "cooldown_s": 0,
        "max_replicas": 5,
        "timeout_s": 2,  # under the planner's lead: interval_s 1 x 3
    }
    await plant_demand(prefix, 600)  # 3 replicas at 200 tok/s each
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", max_concurrency=32, **FAST_UPSTREAM),
            api=SimulatorConfig(**FAST_UPSTREAM),
        ) as sims,
        httpx.AsyncClient(timeout=30) as http,
    ):
        cfg = config(sims, prefix, actuator)
        fleet.append(await start_proxy(cfg, tmp_path))
        fleet.append(await start_proxy(cfg, tmp_path))

        async def scaled_to_three_everywhere() -> None:
            for proxy in fleet:
                state = await dedicated_state(http, proxy)
                assert state["proxy_replicas"] == 2
                assert state["replicas"] == 3  # the meter's count: GPU time accrues for 3 replicas
                assert state["max_concurrency"] == 4 * 3 // 2  # the routing cap: 3 replicas, half each

        await eventually(scaled_to_three_everywhere, timeout_s=30)
        await gpus_accrued_from_now(prefix)  # what either replica accrued before it applied the count
        assert await gpus_accrued_from_now(prefix) == 3.0  # 3 replicas × 1 GPU, whichever replica sent it
        assert ran.read_text().splitlines() == ["ded 2", "ded 3"]  # one replica at a time (max_step 1)

        documents = [await admin_get(http, proxy, "/admin/capacity") for proxy in fleet]
        assert sorted(d["leader"] for d in documents) == [False, True]  # one leader acts
        for document in documents:
            [item] = document["backends"]
            assert item["desired"] == {"now": 3, "next": 3}
            assert "max_concurrency (configured) 4 × SLA 50 tok/s per stream" in item["reasons"][0]
            assert [(d["from"], d["to"], d["ok"]) for d in document["decisions"]] == [
                (1, 2, True),
                (2, 3, True),
            ]
            assert document["here"]["ded"] == {"replicas": 3, "max_concurrency": 6}
        for proxy in fleet:
            metrics = await admin_get(http, proxy, "/metrics")
            assert 'tokenyard_desired_replicas{backend="ded",horizon="now"} 3.0' in metrics
            assert 'tokenyard_desired_replicas{backend="ded",horizon="next"} 3.0' in metrics
            assert 'tokenyard_backend_replicas{backend="ded"} 3.0' in metrics


async def test_replicas_set_through_the_admin_api_reach_every_replica(
    fleet: list[ProxyProcess], prefix: str, tmp_path: Path
) -> None:
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", max_concurrency=32, **FAST_UPSTREAM),
            api=SimulatorConfig(**FAST_UPSTREAM),
        ) as sims,
        httpx.AsyncClient(timeout=30) as http,
    ):
        cfg = config(sims, prefix, None)
        fleet.append(await start_proxy(cfg, tmp_path))
        fleet.append(await start_proxy(cfg, tmp_path))
        put = await http.put(
            f"{fleet[0].url}/admin/backends/ded/replicas", json={"replicas": 4}, headers=ADMIN
        )
        assert put.status_code == 200
        assert put.json()["shared"] is True

        async def four_everywhere() -> None:
            for proxy in fleet:
                state = await dedicated_state(http, proxy)
                assert (state["replicas"], state["max_concurrency"]) == (4, 4 * 4 // 2)

        await eventually(four_everywhere, timeout_s=20)


async def test_without_a_meter_store_the_capacity_api_says_why_and_needs_the_admin_key(
    fleet: list[ProxyProcess], prefix: str, tmp_path: Path
) -> None:
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", **FAST_UPSTREAM), api=SimulatorConfig(**FAST_UPSTREAM)
        ) as sims,
        httpx.AsyncClient(timeout=30) as http,
    ):
        cfg = config(sims, prefix, None) | {"meter": {"store": "off"}}
        fleet.append(await start_proxy(cfg, tmp_path))
        assert (await http.get(f"{fleet[0].url}/admin/capacity")).status_code == 401
        document = await admin_get(http, fleet[0], "/admin/capacity")
        assert document["enabled"] is False
        assert "meter store" in document["why"]
        assert "tokenyard_desired_replicas" not in await admin_get(http, fleet[0], "/metrics")


async def test_a_count_the_store_cannot_share_changes_nothing_and_zero_replicas_take_no_requests(
    fleet: list[ProxyProcess], prefix: str, tmp_path: Path
) -> None:
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", max_concurrency=32, **FAST_UPSTREAM),
            api=SimulatorConfig(**FAST_UPSTREAM),
        ) as sims,
        httpx.AsyncClient(timeout=30) as http,
    ):
        fleet.append(await start_proxy(config(sims, prefix, None), tmp_path))
        proxy = fleet[0]
        store = RedisMeterStore(REDIS_URL, prefix=prefix, retention_s=86400, records_max=1000)
        try:
            # Someone else holds the shared count's lock past the proxy's wait: the count cannot be shared.
            assert await store.try_lock("capacity:replicas", "someone-else", 60)
            put = await http.put(
                f"{proxy.url}/admin/backends/ded/replicas", json={"replicas": 3}, headers=ADMIN
            )
            assert put.status_code == 503, put.text
            assert put.json()["error"]["code"] == "store_unavailable"
            assert (await dedicated_state(http, proxy))["replicas"] == 1  # nothing changed here either
            await store.release_lock("capacity:replicas", "someone-else")
        finally:
            await store.aclose()

        put = await http.put(f"{proxy.url}/admin/backends/ded/replicas", json={"replicas": 0}, headers=ADMIN)
        assert put.status_code == 200, put.text
        assert (put.json()["shared"], put.json()["max_concurrency"]) == (True, 0)
        async with proxy.client() as client:
            for _ in range(3):
                answer = await client.chat.completions.create(
                    model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                assert answer.choices[0].message.content
        assert [r for r in await sim_requests(sims["ded"]) if "chat" in r["path"]] == []  # scaled to zero
        assert len([r for r in await sim_requests(sims["api"]) if "chat" in r["path"]]) == 3


async def test_a_malformed_capacity_document_in_the_store_does_not_break_metrics(
    fleet: list[ProxyProcess], prefix: str, tmp_path: Path
) -> None:
    store = RedisMeterStore(REDIS_URL, prefix=prefix, retention_s=86400, records_max=1000)
    try:  # another replica leads, and what it stored is not what this version writes
        assert await store.try_lock("capacity", "another-replica", 600)
        broken = {"object": "capacity", "backends": [{"backend": "ded"}, "junk", {"desired": None}]}
        await store.put_document("capacity:decisions", orjson.dumps(broken))
    finally:
        await store.aclose()
    async with (
        simulators(ded=SimulatorConfig(**FAST_UPSTREAM), api=SimulatorConfig(**FAST_UPSTREAM)) as sims,
        httpx.AsyncClient(timeout=30) as http,
    ):
        fleet.append(await start_proxy(config(sims, prefix, None), tmp_path))

        async def read_the_leaders_document() -> None:
            assert (await admin_get(http, fleet[0], "/admin/capacity"))["pending"] is False

        await eventually(read_the_leaders_document, timeout_s=20)
        metrics = await admin_get(http, fleet[0], "/metrics")
        assert "tokenyard_backend_replicas" in metrics
        assert 'tokenyard_desired_replicas{backend="ded"' not in metrics
