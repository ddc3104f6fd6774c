"""Nothing is lost: a Redis outage under load, SIGTERM, and kill -9 (at most the last flush interval)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.support.clocks import FakeClock, GatedClock
from tests.support.config import CLIENT_KEY, backend, dedicated_config
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy, start_proxy
from tests.support.redis_servers import RedisServer
from tests.support.simulators import simulators
from tests.support.stores import ProxyStore
from tokenyard.config import MeterConfig
from tokenyard.meter.meter import Meter
from tokenyard.meter.open_store import open_store
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.queue.open_store import open_job_store
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MESSAGES: list[Any] = [{"role": "user", "content": "one two three"}]


@pytest_asyncio.fixture(scope="module")
async def upstream() -> AsyncIterator[SimulatorServer]:
    async with simulators(svl=SimulatorConfig(ttft_ms=1, tokens_per_s=5000)) as sims:
        yield sims["svl"]


def config(upstream: SimulatorServer, store: str, prefix: str, flush_interval_s: float) -> dict[str, Any]:
    return {
        "server": {"public_metrics": True},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": flush_interval_s},
        "backends": {"svl": backend("serverless", upstream.base_url, prices={"output_per_1m": 1.0})},
        "models": {"m": {"deployments": ["svl"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
    }


async def stored_totals(store_url: str, prefix: str) -> tuple[int, int, int]:
    """(requests, completion tokens, records) in a store, read directly."""
    store = open_store(store_url, prefix=prefix, retention_s=86400, records_max=100_000)
    try:
        now = int(time.time())
        rows = await store.aggregates(now // 60 * 60 - 3600, now // 60 * 60 + 120)
        records = await store.records(now - 3600, now + 60)
    finally:
        await store.aclose()
    return (
        sum(f.get("requests", 0) for _, f in rows),
        sum(f.get("completion_tokens", 0) for _, f in rows),
        len(records),
    )


async def send(proxy: ProxyProcess, n: int, max_tokens: int = 3) -> int:
    """n requests, 8 at a time; returns the completion tokens the clients received."""
    semaphore = asyncio.Semaphore(8)

    async def one() -> int:
        async with semaphore:
            completion = await client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=max_tokens
            )
            assert completion.usage is not None
            return completion.usage.completion_tokens

    async with proxy.client() as client:
        return sum(await asyncio.gather(*(one() for _ in range(n))))


async def test_a_redis_outage_under_load_loses_nothing(upstream: SimulatorServer, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    proxy = await start_proxy(config(upstream, redis_server.url, "outage", 0.2), tmp_path)
    sent = tokens = 0
    try:
        stop_at = time.monotonic() + 1.5
        while time.monotonic() < stop_at:
            tokens += await send(proxy, 10)
            sent += 10
        redis_server.stop()
        down_until = time.monotonic() + 3.0
        while time.monotonic() < down_until:  # the proxy keeps answering while its store is gone
            tokens += await send(proxy, 10)
            sent += 10
        metrics = await metrics_text(proxy)
        assert "tokenyard_meter_store_up 0.0" in metrics
        assert "tokenyard_meter_pending_records 0.0" not in metrics
        redis_server.start()
        tokens += await send(proxy, 10)
        sent += 10

        async def all_written() -> None:
            assert await stored_totals(redis_server.url, "outage") == (sent, tokens, sent)

        await eventually(all_written, timeout_s=15)
        assert "tokenyard_meter_store_up 1.0" in await metrics_text(proxy)
    finally:
        proxy.stop()
        redis_server.stop()


async def metrics_text(proxy: ProxyProcess) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{proxy.url}/metrics")).text


async def test_sigterm_flushes_everything(
    upstream: SimulatorServer, tmp_path: Path, proxy_store: ProxyStore
) -> None:
    url, prefix = proxy_store.url, proxy_store.prefix
    # A flush interval longer than the test: only the shutdown flush can have written anything.
    proxy = await start_proxy(config(upstream, url, prefix, 60), tmp_path)
    try:
        tokens = await send(proxy, 40)
        assert await stored_totals(url, prefix) == (0, 0, 0)
    finally:
        code = proxy.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM)
    assert await stored_totals(url, prefix) == (40, tokens, 40)


async def test_sigterm_finishes_streams_in_flight_and_cuts_them_at_the_drain_bound(
    tmp_path: Path, proxy_store: ProxyStore
) -> None:
    """SIGTERM mid-stream: a stream that ends within ``drain_timeout_s`` is delivered whole; one that would
    not is cut at the bound; both are metered by the shutdown flush; the process exits."""
    url, prefix = proxy_store.url, proxy_store.prefix
    async with simulators(slow=SimulatorConfig(ttft_ms=1, ttft_jitter=0, tokens_per_s=10)) as sims:
        cfg = config(sims["slow"], url, prefix, 60)  # only the shutdown flush writes
        cfg["server"].update(unready_s=0, drain_timeout_s=3)
        async with running_proxy(cfg, tmp_path) as proxy, proxy.client() as client:

            async def stream(max_tokens: int) -> AsyncIterator[Any]:
                chunks = await client.chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    max_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in chunks:
                    yield chunk

            # About 0.4 s and 60 s at 10 tokens/s: the short one ends well inside the 3 s drain.
            short, long = stream(4), stream(600)
            await anext(short)
            await anext(long)
            proxy.proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            rest = [chunk async for chunk in short]
            assert rest[-1].usage is not None
            assert rest[-1].usage.completion_tokens == 4
            with pytest.raises(openai.APIConnectionError):  # cut: no clean end, the client knows
                async for _ in long:
                    pass
            code = await asyncio.to_thread(proxy.proc.wait, 30)
            assert code in (0, -signal.SIGTERM)
            # The drain is bounded (3 s), not held open by the 60 s stream; 20 s tells them apart.
            assert time.monotonic() - stopped < 20, "the drain is bounded"
    requests, tokens, records = await stored_totals(url, prefix)
    assert requests == records == 2  # the cut stream too, with the tokens it had sent
    assert 4 + 1 < tokens < 4 + 600


async def test_kill_9_loses_at_most_the_last_flush_interval(
    upstream: SimulatorServer, tmp_path: Path, proxy_store: ProxyStore
) -> None:
    url, prefix = proxy_store.url, proxy_store.prefix
    interval = 0.2
    proxy = await start_proxy(config(upstream, url, prefix, interval), tmp_path)
    try:
        tokens = await send(proxy, 30)
        await asyncio.sleep(interval * 5)  # older than the last flush interval: must be stored
    finally:
        proxy.stop(signal.SIGKILL)
    assert await stored_totals(url, prefix) == (30, tokens, 30)
    # A new process on the same store carries on from there.
    async with running_proxy(config(upstream, url, prefix, interval), tmp_path) as again:
        more = await send(again, 10)
    assert await stored_totals(url, prefix) == (40, tokens + more, 40)


async def test_a_store_outage_longer_than_the_gpu_gap_is_still_accrued_in_full(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    wall = FakeClock(float(int(time.time()) // 60 * 60))
    ded = dedicated_config(gpus_per_replica=1, replicas=1, gpu_hour_price=1.0, max_concurrency=4)
    store = RedisMeterStore(
        redis_server.url, prefix="gap", retention_s=86400, records_max=100, socket_timeout_s=0.5, clock=wall
    )
    meter = Meter(MeterConfig(store=redis_server.url, max_gpu_gap_s=300), {"ded": ded}, store, wall=wall)
    try:
        assert await meter.flush()  # the watermark
        redis_server.stop()
        for _ in range(20):  # 20 minutes without a store, four times the gap
            wall.advance(60)
            assert not await meter.flush()
        redis_server.start()
        wall.advance(30)
        assert await meter.flush()
        assert await meter.flush()
        rows = await store.gpu(int(wall()) - 3600, int(wall()) + 60)
        assert sum(fields["wall_ms"] for _, fields in rows) == (20 * 60 + 30) * 1000
    finally:
        await store.aclose()
        redis_server.stop()


async def test_an_async_answer_the_store_refused_is_stored_later_and_never_run_twice(tmp_path: Path) -> None:
    """The store dies while an async job runs upstream: its answer is kept and stored when the store is
    back, so the job is answered once, run once and billed once (before, it stayed claimed in the queue,
    unanswered, and ran again when its claim went stale)."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    upstream_clock = GatedClock()  # the job stays at the upstream until the store is down
    held = SimulatorServer(SimulatorConfig(name="held", ttft_ms=1, ttft_jitter=0), clock=upstream_clock)
    async with held, httpx.AsyncClient(timeout=30) as http:
        cfg = config(held, redis_server.url, "refused", 0.2)
        proxy = await start_proxy(cfg, tmp_path)
        stats_url = held.base_url.removesuffix("/v1") + "/sim/stats"
        try:
            accepted = await http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": "m", "messages": MESSAGES, "max_tokens": 3},
                headers={"Authorization": f"Bearer {CLIENT_KEY}", "Prefer": "respond-async"},
            )
            assert accepted.status_code == 202

            async def at_the_upstream() -> None:
                assert (await http.get(stats_url)).json()["in_flight"] == 1

            await eventually(at_the_upstream, timeout_s=30)
            redis_server.stop()
            upstream_clock.gate.set()  # the answer arrives while the store is gone

            async def kept() -> None:
                assert "answered but not stored" in proxy.log()

            await eventually(kept, timeout_s=30)
            redis_server.start()
            poll = proxy.url + accepted.headers["location"]

            async def answered() -> None:
                got = await http.get(poll, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
                assert got.status_code == 200

            await eventually(answered, timeout_s=30)  # (served from the replica's memory, perhaps)
            jobs = open_job_store(MeterConfig(store=redis_server.url, redis_prefix="refused"))

            async def stored() -> None:  # as the job's answer: the queue no longer holds it to hand out
                assert await jobs.result(accepted.json()["id"]) is not None
                stats = await jobs.stats()
                assert (stats.waiting, stats.claimed, stats.in_batches) == (0, 0, 0)

            try:
                await eventually(stored, timeout_s=30)
            finally:
                await jobs.aclose()
            assert (await http.get(stats_url)).json()["requests_total"] == 1

            async def billed_once() -> None:
                assert (await stored_totals(redis_server.url, "refused"))[0] == 1

            await eventually(billed_once)
        finally:
            proxy.stop()
            redis_server.stop()
