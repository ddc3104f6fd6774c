"""The dashboard's capacity panel in real headless Chromium: a dedicated backend's measured envelope, drawn
from ``/admin/backends`` as traffic fills it."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import sqlite_url
from tokenyard.simulator.config import SimulatorConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM = CHROMIUM if Path(CHROMIUM).exists() else None
ARTIFACTS = Path(os.environ.get("TOKENYARD_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
MODEL = "llama-3.1-8b-instruct"
REQUESTS = 12

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("TOKENYARD_REQUIRE_CHROMIUM"),
    reason="no Chromium on this machine (apt-get install chromium; .ci/run does)",
)


async def envelope_of(proxy: ProxyProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    (ded,) = got.json()["data"]
    shown: dict[str, Any] = ded["capacity"]["envelope"]
    return shown


async def test_the_capacity_panel_draws_each_measured_envelope(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

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
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                )
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 1600})
                    errors: list[str] = []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    await page.goto(f"{proxy.url}/dashboard")
                    await page.fill("#key", ADMIN_KEY)
                    await page.click("button[type=submit]")
                    panel = page.locator('[data-testid="capacity-ded"]')
                    await panel.wait_for(timeout=15_000)
                    assert f"{REQUESTS} samples" in await panel.inner_text()
                    assert await panel.locator("canvas").count() == 1, "the envelope is drawn"
                    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
                    await panel.screenshot(path=str(ARTIFACTS / "dashboard-capacity.png"))
                    assert errors == []
                finally:
                    await browser.close()
