"""The async track's answers say who served them and why, as the README's header table promises.

A job's final answer — polled, or on a held connection — carries the headers a real-time answer has
(``x-tokenyard-backend``, ``-backend-kind``, ``-route``, ``-attempts``) with ``x-tokenyard-mode: async``,
its reason and path, and the ``x-request-id`` its 202 had. A 202 (and a poll while the job waits) has
mode, reason and request id: no backend has been chosen yet.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.async_track import (
    HELLO,
    MODEL,
    config_for,
    no_idle_dedicated,
    poll,
    post,
    sims,
    sqlite_proxy,
)
from tests.support.config import CLIENT_KEY
from tests.support.polling import eventually
from tests.support.proxy import running_proxy, start_proxy
from tests.support.simulators import FAST_UPSTREAM
from tests.support.stores import sqlite_url
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.simulator.config import SimulatorConfig

ROUTING = ("x-tokenyard-backend", "x-tokenyard-backend-kind", "x-tokenyard-route", "x-tokenyard-attempts")


async def test_a_polled_answer_says_who_served_it_and_keeps_the_request_id_of_its_202(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy:
        accepted = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
        assert accepted.status_code == 202
        request_id = accepted.headers["x-request-id"]
        assert request_id.startswith("req_")
        assert accepted.headers["x-tokenyard-mode"] == "async"
        assert accepted.headers["x-tokenyard-mode-reason"] == "Prefer: respond-async"
        assert not any(name in accepted.headers for name in ROUTING)  # nobody has served it yet
        done = await poll(proxy, accepted.headers["location"])
        assert done.status_code == 200
        assert done.headers["content-type"] == "application/json"
        assert [done.headers.get(name) for name in ROUTING] == ["ded", "dedicated", "primary", "1"]
        assert done.headers["x-tokenyard-mode"] == "async"
        assert done.headers["x-tokenyard-mode-reason"] == "Prefer: respond-async"
        assert done.headers["x-tokenyard-path"] == "idle_dedicated"
        assert done.headers["x-request-id"] == request_id

        async def metered_under_that_id() -> None:
            meter = SqliteMeterStore(f"{tmp_path}/m.sqlite3", retention_s=86400, records_max=10)
            try:
                records = await meter.records(0, 1e12)
            finally:
                await meter.aclose()
            assert [(r.request_id, r.mode) for r in records] == [(request_id, "async")]

        await eventually(metered_under_that_id)


async def test_a_held_answer_says_who_served_it(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy, proxy.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, service_tier="flex"
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["x-tokenyard-backend"] in ("ded", "api")
        assert raw.headers["x-tokenyard-backend-kind"] in ("dedicated", "serverless")
        assert raw.headers["x-tokenyard-route"]
        assert raw.headers["x-tokenyard-attempts"] == "1"
        assert raw.headers["x-tokenyard-mode"] == "async"
        assert raw.headers["x-tokenyard-mode-reason"] == "service_tier: flex"
        assert raw.headers["x-tokenyard-path"] in ("idle_dedicated", "realtime")
        assert raw.headers["x-request-id"].startswith("req_")


async def test_a_poll_while_the_job_waits_says_async_why_and_its_request_id(tmp_path: Path) -> None:
    async with sims() as s:
        # Another "replica" holds the dispatcher's lead and never dispatches: the job stays queued.
        squatter = SqliteMeterStore(f"{tmp_path}/m.sqlite3", retention_s=86400, records_max=10)
        assert await squatter.try_lock("dispatcher", "hung-replica", 3600)
        await squatter.aclose()
        async with running_proxy(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3")), tmp_path) as proxy:
            accepted = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
            async with httpx.AsyncClient(timeout=10) as http:
                waiting = await http.get(
                    proxy.url + accepted.headers["location"],
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                )
            assert waiting.status_code == 202
            assert waiting.headers["x-tokenyard-mode"] == "async"
            assert waiting.headers["x-tokenyard-mode-reason"] == "Prefer: respond-async"
            assert waiting.headers["x-request-id"] == accepted.headers["x-request-id"]


async def test_a_provider_batch_answer_names_the_batch_backend(tmp_path: Path) -> None:
    async with sims(batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM)) as s:
        proxy = await start_proxy(
            no_idle_dedicated(tmp_path, s, sqlite_url(tmp_path / "m.sqlite3")), tmp_path
        )
        try:
            accepted = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
            done = await poll(proxy, accepted.headers["location"])
            assert done.status_code == 200
            assert done.headers["x-tokenyard-path"] == "provider_batch"
            assert done.headers["x-tokenyard-backend"] == "prov"
            assert done.headers["x-tokenyard-backend-kind"] == "batch"
            assert done.headers["x-request-id"] == accepted.headers["x-request-id"]
        finally:
            proxy.stop()
