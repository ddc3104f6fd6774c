"""The usage API and ``tokenyard report`` put a dedicated backend's engine figures beside tokenyard's own:
a real proxy meters real traffic into each store (SQLite, Redis) while this test, as the engine scraper
would, meters engine snapshots into the same store through ``capacity.truth.meter_engine``. The engine says
it processed everything tokenyard sent plus traffic that never came through it (a shared engine)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, run_cli, running_proxy
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import ProxyStore
from tokenyard.capacity.engine import EngineSnapshot
from tokenyard.capacity.truth import meter_engine
from tokenyard.config import MeterConfig
from tokenyard.meter.meter import Meter
from tokenyard.meter.open_store import open_store
from tokenyard.simulator.config import SimulatorConfig

UNSEEN = 1_000  # tokens other clients of the engine sent it, around tokenyard


@pytest.fixture
async def proxy(proxy_store: ProxyStore, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    async with simulators(ded=SimulatorConfig(mode="dedicated", max_concurrency=4, **FAST_UPSTREAM)) as sims:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": proxy_store.url, "redis_prefix": proxy_store.prefix, "flush_interval_s": 0.2},
            "backends": {"ded": backend("dedicated", sims["ded"].base_url, max_concurrency=4)},
            "models": {"llama": {"deployments": ["ded"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        async with running_proxy(config, tmp_path) as running:
            yield running


async def meter_snapshots(store: ProxyStore, *readings: tuple[float, EngineSnapshot]) -> None:
    """Meter engine snapshots taken at the given wall times into the proxy's store, as its scraper would."""
    opened = open_store(store.url, prefix=store.prefix, retention_s=86_400, records_max=1_000)
    meter = Meter(MeterConfig(store=store.url, redis_prefix=store.prefix), {}, opened)
    for wall, snapshot in readings:
        meter_engine(meter, "ded", snapshot, wall)
    assert await meter.flush()
    await opened.aclose()


def vllm(prompt: float, generated: float, busy_s: float) -> EngineSnapshot:
    figures = {
        "prompt_tokens_total": prompt,
        "generation_tokens_total": generated,
        "busy_seconds_total": busy_s,
    }
    return EngineSnapshot(
        "vllm", 0.0, frozenset(figures), running=1, waiting=0, kv_cache_usage=0.25, **figures
    )


async def usage(proxy: ProxyProcess, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(
            f"{proxy.url}/admin/usage", params=params, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_engine_tokens_beside_tokenyards_show_the_traffic_tokenyard_did_not_see(
    proxy: ProxyProcess, proxy_store: ProxyStore
) -> None:
    before = time.time() - 60  # a reading a minute before any traffic
    sent = 0
    async with proxy.client() as client:
        for i in range(6):
            answer = await client.chat.completions.create(
                model="llama", messages=[{"role": "user", "content": f"hello engine {i}"}], max_tokens=3
            )
            assert answer.usage is not None
            sent += answer.usage.total_tokens

    async def metered() -> None:
        assert (await usage(proxy, start="1h", granularity="total", group_by=""))["totals"]["requests"] == 6

    await eventually(metered, timeout_s=15)
    # The engine counted what tokenyard sent, and UNSEEN more from elsewhere, and was busy 2 s meanwhile.
    await meter_snapshots(
        proxy_store,
        (before, vllm(50_000, 9_000, 100.0)),
        (time.time(), vllm(50_000 + sent + UNSEEN - 30, 9_030, 102.0)),
    )
    got: dict[str, Any] = {}

    async def engine_utilization() -> None:
        # Busy time is set against the GPU time the proxy accrues in the same minutes: a minute just begun
        # may not have been accrued yet.
        got.update(await usage(proxy, start="1h", granularity="total", group_by=""))
        assert got["dedicated"][0]["utilization_source"] == "engine"

    await eventually(engine_utilization, timeout_s=15)
    [ded] = got["dedicated"]
    assert (ded["tokens"], ded["engine_tokens"], ded["unseen_tokens"]) == (sent, sent + UNSEEN, UNSEEN)
    assert (ded["source"], ded["tokens_source"]) == ("engine", "engine")
    assert ded["utilization"] == ded["engine"]["utilization"]
    assert ded["engine"]["busy_s"] == 2.0
    assert ded["engine"]["kv_cache_usage_mean"] == 0.25
    assert ded["engine"]["scrapes"] == 2
    [row] = got["engine"]
    assert (row["backend"], row["tokens"], row["tokenyard_tokens"], row["unseen_tokens"]) == (
        "ded",
        sent + UNSEEN,
        sent,
        UNSEEN,
    )

    # tokenyard report reads the same store and says the same.
    assert proxy.config_path is not None
    result = run_cli("report", "--config", str(proxy.config_path), "--since", "1h")
    assert result.returncode == 0, result.stderr
    assert "engines' own figures" in result.stdout
    engine_line = next(line for line in result.stdout.splitlines()[::-1] if line.lstrip().startswith("ded"))
    assert f"{sent + UNSEEN:,}" in engine_line
    assert f"{UNSEEN:,}" in engine_line
    assert "(engine)" in result.stdout
