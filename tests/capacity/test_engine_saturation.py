"""Saturation from the engine's own metrics, end to end: the real proxy scrapes a simulator's /metrics; when
the engine says "queue" or "KV cache full" (two scrapes in a row), real-time traffic spills over and async
idle-filling stops with in-flight counts far below the cap; stale or missing metrics fall back to
tokenyard's own count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.async_track import HELLO, MODEL, config_for, poll, post, sims
from tests.support.config import ADMIN_KEY
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import set_faults, sim_stats
from tests.support.stores import sqlite_url
from tokenyard.simulator.server import SimulatorServer

ENGINE = {"interval_s": 0.5, "stale_after_s": 3.0}


def with_engine_metrics(config: dict[str, Any], **engine: Any) -> dict[str, Any]:
    config["backends"]["ded"].update(metrics_url="auto", engine={**ENGINE, **engine})
    return config


async def engine_view(proxy: ProxyProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        got = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    ded = next(item for item in got.json()["data"] if item["name"] == "ded")
    view: dict[str, Any] = ded["capacity"]["engine"]
    assert ded["in_flight"] == 0
    return view


async def until_engine(proxy: ProxyProcess, **expected: Any) -> dict[str, Any]:
    """Poll /admin/backends until the engine view shows ``expected``."""
    seen: dict[str, Any] = {}

    async def check() -> None:
        seen.update(await engine_view(proxy))
        assert {k: seen.get(k) for k in expected} == expected

    await eventually(check, timeout_s=30)
    return seen


async def chat(proxy: ProxyProcess) -> httpx.Response:
    got = await post(proxy, {"model": MODEL, "messages": HELLO, "max_tokens": 2})
    assert got.status_code == 200, got.text
    return got


async def metrics_text(proxy: ProxyProcess) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        got = await http.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return got.text


async def test_a_queue_or_a_full_kv_cache_moves_real_time_traffic(tmp_path: Path) -> None:
    async with sims() as s:
        config = with_engine_metrics(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3")))
        async with running_proxy(config, tmp_path) as proxy:
            view = await until_engine(proxy, fresh=True, saturated=False, profile="vllm")
            assert view["url"] == f"{s['ded'].base_url.removesuffix('/v1')}/metrics"
            assert {"running", "waiting", "kv_cache_usage"} <= set(view["signals"])
            assert (await chat(proxy)).headers["x-tokenyard-route"] == "primary"

            await set_faults(s["ded"], metrics_waiting=3)
            view = await until_engine(proxy, saturated=True, why="queue 3")
            assert view["waiting"] == 3
            assert view["saturated_scrapes"] >= 2  # two scrapes in a row said so, not one
            got = await chat(proxy)
            assert (got.headers["x-tokenyard-backend"], got.headers["x-tokenyard-route"]) == (
                "api",
                "spillover",
            )
            assert got.headers["x-tokenyard-route-detail"] == "ded saturated (queue 3)"
            text = await metrics_text(proxy)
            assert 'tokenyard_engine_saturated{backend="ded"} 1.0' in text
            assert 'tokenyard_engine_requests_waiting{backend="ded"} 3.0' in text
            assert 'tokenyard_engine_scrapes_total{backend="ded",outcome="ok"}' in text

            await set_faults(s["ded"], metrics_kv_cache_usage=0.95)
            await until_engine(proxy, saturated=True, why="KV cache 95%")
            got = await chat(proxy)
            assert got.headers["x-tokenyard-backend"] == "api"
            assert got.headers["x-tokenyard-route-detail"] == "ded saturated (KV cache 95%)"

            await set_faults(s["ded"])
            view = await until_engine(proxy, saturated=False, fresh=True)
            assert view["saturated_scrapes"] == 0  # one scrape saying not cleared it
            assert (await chat(proxy)).headers["x-tokenyard-backend"] == "ded"
        assert (await sim_stats(s["api"]))["requests_total"] == 2


async def test_stale_or_missing_metrics_fall_back_to_the_in_flight_count(tmp_path: Path) -> None:
    async with sims() as s:
        config = with_engine_metrics(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3")))
        async with running_proxy(config, tmp_path) as proxy:
            # Frozen at "queue 3" and stamped then: saturated until the stamp is older than stale_after_s.
            await set_faults(s["ded"], metrics_stale=True, metrics_waiting=3)
            view = await until_engine(proxy, fresh=False, saturated=False, waiting=3)
            assert view["last_error"] is None  # the page answers: it is only old
            assert (await chat(proxy)).headers["x-tokenyard-route"] == "primary"
            assert 'tokenyard_engine_saturated{backend="ded"} 0.0' in await metrics_text(proxy)

            await set_faults(s["ded"], metrics_waiting=3)
            await until_engine(proxy, saturated=True)
            await set_faults(s["ded"], metrics_missing=True)  # the last snapshot ("queue 3") ages out
            view = await until_engine(proxy, fresh=False, saturated=False)
            assert "answered 404" in view["last_error"]
            assert view["consecutive_failures"] >= 1
            assert (await chat(proxy)).headers["x-tokenyard-route"] == "primary"

            await set_faults(s["ded"], metrics_wrong=True)
            view = await until_engine(proxy, saturated=False)
            await eventually(lambda: _says_invalid(proxy), timeout_s=30)
            assert 'outcome="invalid"' in await metrics_text(proxy)


async def _says_invalid(proxy: ProxyProcess) -> None:
    view = await engine_view(proxy)
    assert "not valid Prometheus text" in (view["last_error"] or "")


async def test_a_saturated_engine_gets_no_async_idle_filling(tmp_path: Path) -> None:
    async with sims() as s:
        config = with_engine_metrics(
            config_for(s, store=sqlite_url(tmp_path / "m.sqlite3"), idle_fill_cap=1.0)
        )
        ded: SimulatorServer = s["ded"]
        async with running_proxy(config, tmp_path) as proxy, httpx.AsyncClient(timeout=10) as http:
            await set_faults(ded, metrics_waiting=1)
            await until_engine(proxy, saturated=True, why="queue 1")
            accepted = await post(
                proxy, {"model": MODEL, "messages": HELLO, "max_tokens": 2}, Prefer="respond-async"
            )
            assert accepted.status_code == 202

            async def claimed_and_waiting() -> None:
                queue = (
                    await http.get(
                        f"{proxy.url}/admin/queue", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                    )
                ).json()
                assert queue["claimed"] == 1

            await eventually(claimed_and_waiting, timeout_s=30)
            # Claimed, its replica idle by tokenyard's count (0 of 2 in flight), and not placed: the engine
            # says it is full.
            still = await poll(proxy, accepted.headers["location"], timeout_s=0)
            assert still.status_code == 202
            assert (await sim_stats(ded))["requests_total"] == 0
            assert (await sim_stats(s["api"]))["requests_total"] == 0

            await set_faults(ded)
            done = await poll(proxy, accepted.headers["location"], timeout_s=30)
            assert done.status_code == 200
            assert done.headers["x-tokenyard-path"] == "idle_dedicated"
