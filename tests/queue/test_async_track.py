"""The async track end to end: real ``tokenyard serve``, the openai SDK, simulators as upstreams.

Each delivery path (202 + poll, held connection), each classification signal through HTTP, the paths a
job takes (idle dedicated capacity, a provider batch, real time near its deadline), provider partial
failure and expiry, tenants kept apart, callbacks (signed, allow-listed), and a proxy killed with -9
mid-batch whose jobs are resumed and answered — and billed — exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.async_track import (
    HELLO,
    MODEL,
    config_for,
    no_idle_dedicated,
    poll,
    post,
    sims,
    sqlite_proxy,
    usage,
)
from tests.support.clocks import FakeClock, GatedClock
from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import running_proxy, start_proxy
from tests.support.simulators import FAST_UPSTREAM, set_faults, sim_stats, simulators
from tests.support.stores import ProxyStore, sqlite_url
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

# -- delivery -----------------------------------------------------------------------------------------


async def test_prefer_respond_async_answers_202_then_the_openai_response_on_poll(tmp_path: Path) -> None:
    async with (
        sims() as s,
        running_proxy(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3")), tmp_path) as proxy,
    ):
        accepted = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async, wait=0")
        assert accepted.status_code == 202
        assert accepted.headers["preference-applied"] == "respond-async"
        assert accepted.headers["x-tokenyard-mode"] == "async"
        assert accepted.headers["x-tokenyard-mode-reason"] == "Prefer: respond-async"
        job = accepted.json()
        assert job["object"] == "async.job"
        assert job["status"] == "queued"
        assert accepted.headers["location"] == job["url"] == f"/v1/async/jobs/{job['id']}"
        done = await poll(proxy, accepted.headers["location"])
        assert done.status_code == 200
        assert done.headers["x-tokenyard-path"] == "idle_dedicated"  # the replica was idle
        completion = openai.types.chat.ChatCompletion.model_validate(done.json())
        assert completion.object == "chat.completion"
        assert completion.usage is not None
        # Another tenant cannot see it; an unknown id is not found either.
        assert (await poll(proxy, accepted.headers["location"], key=OTHER_KEY)).status_code == 404
        missing = await poll(proxy, "/v1/async/jobs/job_nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"

        async def metered_async() -> None:
            rows = (await usage(proxy, group_by="mode,backend"))["data"]
            assert [(r["mode"], r["backend"], r["requests"]) for r in rows] == [("async", "ded", 1)]

        await eventually(metered_async)

        async def on_the_metrics() -> None:
            async with httpx.AsyncClient() as http:
                text = (
                    await http.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                ).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            # A gauge missing yet (the queue's state is read every few seconds) is retried, not an error.
            assert (
                samples.get(("tokenyard_async_jobs_answered_total", (("path", "idle_dedicated"),)), -1) == 1
            )
            assert (
                samples.get(("tokenyard_async_job_wait_seconds_total", (("path", "idle_dedicated"),)), -1) > 0
            )
            assert samples.get(("tokenyard_async_jobs", (("state", "waiting"),)), -1) == 0
            assert samples.get(("tokenyard_async_oldest_job_age_seconds", ()), -1) == 0
            assert samples.get(("tokenyard_async_duplicate_answers_total", ()), -1) == 0

        await eventually(on_the_metrics)


async def test_a_held_connection_gets_the_normal_response_through_the_sdk(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy:
        async with proxy.client() as client:
            flex = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=HELLO, service_tier="flex"
            )
            header = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=HELLO, extra_headers={"x-tokenyard-mode": "async"}
            )
            # "batch" is tokenyard's signal, no OpenAI tier: the upstream (which refuses it, as OpenAI
            # does) never sees it, nor flex, served in real time when streamed.
            batch_tier = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=HELLO, extra_body={"service_tier": "batch"}
            )
            batch_streamed = await client.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, extra_body={"service_tier": "batch"}
            )
            assert [c async for c in batch_streamed]
        async with proxy.client(key=OTHER_KEY) as client:  # team-b's key makes everything async
            by_key = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
            streamed = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            chunks = [c async for c in streamed]
        for raw, reason in (
            (flex, "service_tier: flex"),
            (batch_tier, "service_tier: batch"),
            (header, "x-tokenyard-mode: async"),
            (by_key, "key team-b: async"),
        ):
            assert raw.http_response.status_code == 200
            assert raw.headers["x-tokenyard-mode"] == "async"
            assert raw.headers["x-tokenyard-mode-reason"] == reason
            assert raw.parse().choices[0].message.content
        assert chunks, "a stream is served in real time even for an async key"


async def test_signals_that_cannot_be_honoured_are_400s(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy:
        streamed = await post(
            proxy, {"model": MODEL, "messages": HELLO, "stream": True}, Prefer="respond-async"
        )
        assert streamed.status_code == 400
        assert streamed.json()["error"]["param"] == "stream"
        bad_mode = await post(proxy, {"model": MODEL, "messages": HELLO}, **{"x-tokenyard-mode": "soon"})
        assert bad_mode.status_code == 400
        callback = await post(
            proxy,
            {"model": MODEL, "messages": HELLO},
            Prefer="respond-async",
            **{"x-tokenyard-callback": "http://169.254.169.254/latest/meta-data"},
        )
        assert callback.status_code == 400
        assert "not in async_track.callbacks.allow_hosts" in callback.json()["error"]["message"]


# -- paths ----------------------------------------------------------------------------------------------


async def test_async_work_yields_to_real_time_on_the_dedicated_replica(tmp_path: Path) -> None:
    ded_clock = GatedClock()  # what reaches the replica stays there until the test opens the gate
    ded = SimulatorServer(
        SimulatorConfig(name="ded", mode="dedicated", max_concurrency=4, **FAST_UPSTREAM), clock=ded_clock
    )
    async with (
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        ded,
        httpx.AsyncClient(timeout=10) as http,
    ):
        config = config_for(
            {**s, "ded": ded},
            store=sqlite_url(tmp_path / "m.sqlite3"),
            realtime_margin_s=1,
            idle_fill_cap=0.5,
        )
        async with running_proxy(config, tmp_path) as proxy:
            async with proxy.client() as client:
                # One real-time request holds the replica's one async-fillable slot (cap 2 × 0.5).
                busy = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HELLO))

                async def at_the_replica() -> None:
                    assert (await sim_stats(ded))["in_flight"] == 1

                await eventually(at_the_replica, timeout_s=30)
                accepted = await post(
                    proxy, {"model": MODEL, "messages": HELLO, "max_tokens": 2}, Prefer="respond-async"
                )

                async def claimed_and_waiting() -> None:  # the dispatcher has it and placed it nowhere
                    queue = (
                        await http.get(
                            f"{proxy.url}/admin/queue", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                        )
                    ).json()
                    assert queue["claimed"] == 1

                await eventually(claimed_and_waiting, timeout_s=30)
                still = await poll(proxy, accepted.headers["location"], timeout_s=0)
                assert still.status_code == 202, "the job waits while real-time traffic uses the replica"
                assert (await sim_stats(ded))["requests_total"] == 1
                assert (await sim_stats(s["api"]))["requests_total"] == 0
                ded_clock.gate.set()
                await busy
            done = await poll(proxy, accepted.headers["location"])
            assert done.status_code == 200
            assert done.headers["x-tokenyard-path"] == "idle_dedicated"


async def test_a_job_waits_for_a_busy_replica_only_until_its_deadline_comes_close(tmp_path: Path) -> None:
    async with sims() as s:
        # One slot per replica and async may fill half of it: the replica is never idle for async work.
        # It must go real time 1 s after it is queued (deadline 6 s, margin 5 s): the margin, far above a
        # dispatcher tick, is what a slow machine may take to get it there by its deadline.
        config = config_for(
            s, store=sqlite_url(tmp_path / "m.sqlite3"), realtime_margin_s=5, idle_fill_cap=0.5
        )
        config["backends"]["ded"]["max_concurrency"] = 1
        config["keys"]["team-a"]["deadline_s"] = 6
        async with running_proxy(config, tmp_path) as proxy:
            sent_at = time.time()  # the proxy's wall clock too: it queues the job after this
            accepted = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
            done = await poll(proxy, accepted.headers["location"])
            waited_s = time.time() - sent_at
            assert done.status_code == 200
            assert done.headers["x-tokenyard-path"] == "realtime"
            assert 1 <= waited_s < 6, "not before it had to, not after its deadline"


async def test_with_no_cheaper_path_at_all_a_job_runs_in_real_time_at_once(tmp_path: Path) -> None:
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s:
        config = {
            "meter": {"store": sqlite_url(tmp_path / "m.sqlite3"), "flush_interval_s": 0.2},
            "backends": {"api": backend("serverless", s["api"].base_url)},
            "models": {MODEL: {"deployments": ["api"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},  # a 24 h deadline: waiting would gain nothing
        }
        async with running_proxy(config, tmp_path) as proxy:
            accepted = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
            # Waiting would last until its deadline came close, a day from now: 10 s tells them apart.
            done = await poll(proxy, accepted.headers["location"], timeout_s=10)
            assert done.status_code == 200
            assert done.headers["x-tokenyard-path"] == "realtime"


async def test_a_provider_batch_answers_jobs_at_the_batch_price(tmp_path: Path) -> None:
    async with sims(batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM)) as s:
        proxy = await start_proxy(
            no_idle_dedicated(tmp_path, s, sqlite_url(tmp_path / "m.sqlite3")), tmp_path
        )
        try:
            accepted = [
                await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
                for _ in range(3)
            ]
            answers = [await poll(proxy, a.headers["location"]) for a in accepted]
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert {a.headers["x-tokenyard-path"] for a in answers} == {"provider_batch"}

            async def billed_once_at_batch_prices() -> None:
                rows = (await usage(proxy, group_by="mode,backend"))["data"]
                assert [(r["mode"], r["backend"], r["requests"]) for r in rows] == [("async", "prov", 3)]
                row = rows[0]
                expected = (row["prompt_tokens"] * 0.5 + row["completion_tokens"] * 1.0) / 1e6
                assert row["token_cost_usd"] == pytest.approx(expected)

            await eventually(billed_once_at_batch_prices)
            saved = (await usage(proxy))["async_savings_usd"]
            assert saved > 0  # against the serverless price
        finally:
            proxy.stop()


async def test_failed_and_expired_batch_lines_are_answered_another_way(tmp_path: Path) -> None:
    async with sims(batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM)) as s:
        await set_faults(s["batch"], batch_error_rate=1.0, error_status=500)
        config = no_idle_dedicated(tmp_path, s, sqlite_url(tmp_path / "m.sqlite3"))
        config["keys"]["team-a"]["deadline_s"] = 6  # batch turnaround 1 s + margin 2 s fits: batch first
        async with running_proxy(config, tmp_path) as proxy:
            failed = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
            answer = await poll(proxy, failed.headers["location"])
            assert answer.status_code == 200
            assert answer.headers["x-tokenyard-path"] == "realtime"
            await set_faults(s["batch"], batch_expire_after_s=0.2)
            expired = await post(proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
            answer = await poll(proxy, expired.headers["location"])
            assert answer.status_code == 200
            assert answer.headers["x-tokenyard-path"] == "realtime"

            async def only_the_real_time_answers_are_billed() -> None:
                stats = (await usage(proxy, group_by="mode,backend"))["data"]
                assert [(r["backend"], r["requests"]) for r in stats] == [("api", 2)]

            await eventually(only_the_real_time_answers_are_billed)


# -- kill -9 mid-batch -----------------------------------------------------------------------------------


async def test_a_proxy_killed_mid_batch_is_resumed_by_the_next_one_and_nothing_is_billed_twice(
    tmp_path: Path, proxy_store: ProxyStore
) -> None:
    # The provider's batches move only when the test advances its clock: the batch is still open when the
    # first proxy dies, however slow the machine.
    provider_clock = FakeClock()
    provider = SimulatorServer(
        SimulatorConfig(name="batch", batch_turnaround_s=3, **FAST_UPSTREAM), clock=provider_clock
    )
    async with sims() as s, provider:
        config = no_idle_dedicated(tmp_path, {**s, "batch": provider}, proxy_store.url, proxy_store.prefix)
        # The gather is submitted when it holds the five jobs, not when a time window closes.
        config["async_track"]["batches"].update(max_requests=5, max_wait_s=3600)
        first = await start_proxy(config, tmp_path)
        try:
            accepted = [
                await post(first, {"model": MODEL, "messages": HELLO}, Prefer="respond-async")
                for _ in range(5)
            ]

            async def batches() -> list[dict[str, Any]]:
                async with httpx.AsyncClient() as http:
                    listed: list[dict[str, Any]] = (await http.get(f"{provider.base_url}/batches")).json()[
                        "data"
                    ]
                    return listed

            async def submitted() -> None:
                assert len(await batches()) == 1

            await eventually(submitted, timeout_s=30)
            provider_clock.elapsed_s += 1  # past validating (0.3 s), not done (3 s): its lines are counted
            assert [(b["request_counts"]["total"], b["status"]) for b in await batches()] == [
                (5, "in_progress")
            ]
        finally:
            first.stop(signal.SIGKILL)  # mid-batch: nothing flushed, no lock released
        provider_clock.elapsed_s += 4  # past its 3 s turnaround: the batch completes
        async with running_proxy(config, tmp_path) as second:
            answers = [await poll(second, a.headers["location"], timeout_s=30) for a in accepted]
            assert [a.status_code for a in answers] == [200] * 5
            assert {a.headers["x-tokenyard-path"] for a in answers} == {"provider_batch"}
            async with httpx.AsyncClient() as http:
                batches = (await http.get(f"{provider.base_url}/batches")).json()["data"]
            assert len(batches) == 1, "the batch was resumed, not submitted again"

            async def billed_once() -> None:
                rows = (await usage(second, group_by="mode,backend"))["data"]
                assert [(r["mode"], r["backend"], r["requests"]) for r in rows] == [("async", "prov", 5)]

            await eventually(billed_once)


# -- callbacks -----------------------------------------------------------------------------------------


async def test_a_finished_job_is_posted_to_its_allow_listed_callback_signed(
    tmp_path: Path, receiver: tuple[int, list[tuple[dict[str, str], bytes]]]
) -> None:
    port, got = receiver
    secret = "whsec-0123456789"
    async with sims() as s:
        config = config_for(
            s,
            store=sqlite_url(tmp_path / "m.sqlite3"),
            callbacks={"allow_hosts": ["127.0.0.1"], "secret": secret},
        )
        async with running_proxy(config, tmp_path) as proxy:
            url = f"http://127.0.0.1:{port}/hooks/done"
            accepted = await post(
                proxy,
                {"model": MODEL, "messages": HELLO},
                Prefer="respond-async",
                **{"x-tokenyard-callback": url},
            )
            assert accepted.status_code == 202

            async def called() -> None:
                assert len(got) == 1

            await eventually(called)
            headers, body = got[0]
            payload = json.loads(body)
            assert payload["id"] == accepted.json()["id"]
            assert payload["status_code"] == 200
            assert payload["body"]["object"] == "chat.completion"
            stamp, signature = (part.split("=", 1)[1] for part in headers["x-tokenyard-signature"].split(","))
            expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(signature, expected)


async def test_a_held_request_is_served_in_real_time_when_no_dispatcher_answers_it(tmp_path: Path) -> None:
    async with sims() as s:
        store = sqlite_url(tmp_path / "m.sqlite3")
        config = config_for(s, store=store, max_hold_s=0.5)
        # Another "replica" holds the dispatcher's lead and never dispatches (as if hung).
        squatter = SqliteMeterStore(f"{tmp_path}/m.sqlite3", retention_s=86400, records_max=10)
        assert await squatter.try_lock("dispatcher", "hung-replica", 3600)
        await squatter.aclose()
        async with running_proxy(config, tmp_path) as proxy:
            async with proxy.client() as client:
                started = asyncio.get_running_loop().time()
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=HELLO, service_tier="flex"
                )
                waited = asyncio.get_running_loop().time() - started
            assert raw.http_response.status_code == 200
            assert raw.headers["x-tokenyard-path"] == "realtime"
            assert raw.parse().choices[0].message.content
            assert 0.5 < waited < 10  # its deadline (max_hold_s) and the grace, then real time

            async def billed_once() -> None:
                rows = (await usage(proxy, group_by="mode"))["data"]
                assert [(r["mode"], r["requests"]) for r in rows] == [("async", 1)]

            await eventually(billed_once)
