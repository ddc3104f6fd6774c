"""The dashboard's capacity panel in real headless Chromium: a dedicated backend's measured envelope, drawn
from ``/admin/backends`` as traffic fills it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.dashboard import ARTIFACTS, browser_page, needs_chromium, sign_in
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import sqlite_url
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama-3.1-8b-instruct"
REQUESTS = 12

pytestmark = needs_chromium


async def envelope_of(proxy: ProxyProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    (ded,) = got.json()["data"]
    shown: dict[str, Any] = ded["capacity"]["envelope"]
    return shown


async def test_the_capacity_panel_draws_each_measured_envelope(tmp_path: Path) -> None:
    async with (
        simulators(ded=SimulatorConfig(mode="dedicated", max_concurrency=16, **FAST_UPSTREAM)) as sims,
    ):
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": sqlite_url(tmp_path / "meter.sqlite3"), "flush_interval_s": 0.2},
            "backends": {
                "ded": backend(
                    "dedicated", sims["ded"].base_url, max_concurrency=16, sla={"ttft_p95_ms": 5000}
                )
            },
            "models": {MODEL: {"deployments": ["ded"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        async with running_proxy(config, tmp_path) as proxy, proxy.client() as client:

            async def ask() -> None:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async for _ in stream:
                    pass

            await asyncio.gather(*(ask() for _ in range(REQUESTS)))

            async def counted() -> None:
                assert (await envelope_of(proxy))["samples"] == REQUESTS

            await eventually(counted)
            async with browser_page(1600) as (page, errors):
                await sign_in(page, proxy)
                panel = page.locator('[data-testid="capacity-ded"]')
                await panel.wait_for(timeout=15_000)
                assert f"{REQUESTS} samples" in await panel.inner_text()
                assert await panel.locator("canvas").count() == 1, "the envelope is drawn"
                await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
                await panel.screenshot(path=str(ARTIFACTS / "dashboard-capacity.png"))
                assert errors == []
