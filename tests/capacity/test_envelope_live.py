"""The measured envelope fills from real traffic: two ``tokenyard serve`` replicas on one Redis stream
chat completions from a dedicated simulator through the SDK; every answered request lands in the shared
``capacity:envelope`` document exactly once, and ``/admin/backends`` shows the curve."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.redis_servers import REDIS_URL
from tests.support.simulators import simulators
from tests.support.stores import open_proxy_store
from tokenyard.capacity import envelope
from tokenyard.meter.open_store import open_store
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama-3.1-8b-instruct"
# 6,000 tok/s shared by the streams, at most 400 each: an SLA of 300 tok/s per stream holds up to 20.
ENGINE = SimulatorConfig(
    mode="dedicated",
    ttft_ms=2,
    tokens_per_s=400,
    aggregate_tokens_per_s=6000,
    max_concurrency=64,
    default_max_tokens=12,
)
# (concurrent clients, requests each) on each replica. The first wave's one client never overlaps itself:
# its requests run alone on their replica, at a level of at most the cluster's size (two replicas). Two
# clients there overlapped in every request of a run on a loaded machine, and the lowest level was 4.
WAVES = ((1, 6), (8, 3), (16, 2))


def config_for(sim_url: str, prefix: str) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": REDIS_URL, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {
            "ded": backend("dedicated", sim_url, max_concurrency=64, sla={"min_stream_tokens_per_s": 300}),
        },
        "models": {MODEL: {"deployments": ["ded"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {"enabled": False},
        "capacity": {"envelope": {"merge_interval_s": 1}},
    }


async def stream_waves(proxy: ProxyProcess) -> int:
    """Streamed chat completions in waves of concurrent clients; how many were answered."""
    answered = 0
    async with proxy.client() as client:

        async def one_client(requests: int) -> int:
            done = 0
            for _ in range(requests):
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True
                )
                async for _chunk in stream:
                    pass
                done += 1
            return done

        for clients, each in WAVES:
            answered += sum(await asyncio.gather(*(one_client(each) for _ in range(clients))))
    return answered


async def stored_envelope(url: str, prefix: str) -> dict[str, Any] | None:
    store = open_store(url, prefix=prefix, retention_s=86400, records_max=100)
    try:
        body = await store.get_document(envelope.DOCUMENT)
    finally:
        await store.aclose()
    return None if body is None else orjson.loads(body)


def total_samples(cells: envelope.Cells) -> float:
    return sum(sums[envelope.N] for sums in cells.values())


async def test_two_replicas_fill_one_envelope_exactly_once(tmp_path: Path) -> None:
    async with (
        simulators(ded=ENGINE) as sims,
        open_proxy_store("redis", tmp_path) as where,
        contextlib.AsyncExitStack() as stack,
    ):
        config = config_for(sims["ded"].base_url, where.prefix)
        proxies = [await stack.enter_async_context(running_proxy(config, tmp_path)) for _ in range(2)]
        sent = sum(await asyncio.gather(*(stream_waves(p) for p in proxies)))
        assert sent == 2 * sum(clients * each for clients, each in WAVES)

        found: dict[str, Any] = {}

        async def merged() -> None:
            document = await stored_envelope(where.url, where.prefix)
            assert document is not None
            found["cells"] = envelope.cells_from_json(document["backends"].get("ded"))
            assert total_samples(found["cells"]) == sent

        await eventually(merged, timeout_s=20)
        cells: envelope.Cells = found["cells"]
        # Every request asked for 12 tokens on a short prompt: one shape.
        assert {shape for shape, _ in cells} == {envelope.shape_of(10, 12)}
        levels = sorted(level for _, level in cells)
        assert levels[0] <= 2  # the first wave: one request at a time on a replica, times two replicas
        assert levels[-1] >= 16  # both replicas' waves overlap: up to 2 × 16 in flight, counted cluster-wide

        # Each replica's /admin/backends shows the whole cluster's curve (as last merged and read back).
        async def shown() -> None:
            for proxy in proxies:
                async with httpx.AsyncClient(timeout=30) as http:
                    resp = await http.get(
                        f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                    )
                (ded,) = resp.json()["data"]
                shown = ded["capacity"]["envelope"]
                assert shown["samples"] == sent
                assert shown["sla"] is True
                assert [p["concurrency"] for p in shown["curve"]] == levels
                for point in shown["curve"]:
                    rate, aggregate = point["stream_tokens_per_s"], point["aggregate_tokens_per_s"]
                    assert rate is not None
                    assert rate > 0
                    assert aggregate >= rate * (point["concurrency"] - 1) - 0.5

        await eventually(shown, timeout_s=20)
