"""The live dashboard in real headless Chromium: sign in with the admin key, watch the numbers appear and
change, and check they agree with the usage API. Screenshots go to ``test-artifacts/`` (or
``$TOKENYARD_TEST_ARTIFACTS``).

Chromium is Debian's (``.ci/run`` installs it); the test is skipped, saying so, only where it is absent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.dashboard import ARTIFACTS, browser_page, needs_chromium, sign_in
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import sqlite_url
from tokenyard.capacity.engine import EngineSnapshot
from tokenyard.capacity.truth import meter_engine
from tokenyard.config import MeterConfig
from tokenyard.meter.meter import Meter
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama-3.1-8b-instruct"  # in the catalog: the advisor can draw its cost against replicas

pytestmark = needs_chromium


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    async with simulators(
        ded=SimulatorConfig(mode="dedicated", max_concurrency=4, **FAST_UPSTREAM),
        api=SimulatorConfig(**FAST_UPSTREAM),
    ) as sims:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": sqlite_url(tmp_path / "meter.sqlite3"), "flush_interval_s": 0.2},
            "backends": {
                "ded": backend(
                    "dedicated", sims["ded"].base_url, max_concurrency=2, sla={"min_stream_tokens_per_s": 30}
                ),
                "api": backend(
                    "serverless", sims["api"].base_url, prices={"input_per_1m": 1.0, "output_per_1m": 2.0}
                ),
            },
            "models": {MODEL: {"deployments": ["ded", "api"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        async with running_proxy(config, tmp_path) as started:
            yield started


async def chat(proxy: ProxyProcess, n: int, **headers: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(n):
            got = await http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": f"hello {i}"}]},
                headers={"Authorization": f"Bearer {CLIENT_KEY}", **headers},
            )
            assert got.status_code in (200, 202), got.text


async def admin(proxy: ProxyProcess, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.get(
            proxy.url + path, params=params, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert got.status_code == 200, got.text
        return got.json()


async def total_requests(proxy: ProxyProcess) -> int:
    usage = await admin(proxy, "/admin/usage", start="24h", granularity="total", group_by="")
    return int(usage["totals"]["requests"])


async def test_nothing_is_reachable_without_the_admin_key(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{proxy.url}/dashboard")
        assert page.status_code == 200
        assert "Admin key" in page.text
        assert "total-requests" not in page.text  # the sign-in form, not the dashboard
        assert (await http.get(f"{proxy.url}/dashboard/static/dashboard.js")).status_code == 401
        assert (await http.get(f"{proxy.url}/admin/queue")).status_code == 401
        client_key = {"Authorization": f"Bearer {CLIENT_KEY}"}
        assert (await http.get(f"{proxy.url}/admin/queue", headers=client_key)).status_code == 403
        wrong = await http.post(f"{proxy.url}/dashboard/login", data={"key": "sk-not-the-admin-key"})
        assert wrong.status_code == 401
        assert "not the admin key" in wrong.text
        forged = {"Cookie": "tokenyard_admin=0123456789abcdef"}
        assert (await http.get(f"{proxy.url}/admin/usage", headers=forged)).status_code == 401
        signed = await http.post(f"{proxy.url}/dashboard/login", data={"key": ADMIN_KEY})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        session = {"Cookie": cookie.split(";")[0]}
        assert (
            await http.get(f"{proxy.url}/dashboard/static/uplot.iife.min.js", headers=session)
        ).status_code == 200
        assert (
            await http.get(f"{proxy.url}/dashboard/static/../admin.py", headers=session)
        ).status_code == 404


async def test_the_dashboard_shows_live_numbers_that_agree_with_the_usage_api(proxy: ProxyProcess) -> None:
    await chat(proxy, 5)
    await chat(proxy, 1, Prefer="respond-async")
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    async with browser_page(1600) as (page, errors):
        await sign_in(page, proxy)
        await page.wait_for_selector("#total-requests")

        async def shows(expected: int) -> None:
            await page.wait_for_function(
                "n => document.getElementById('total-requests').textContent === n",
                arg=f"{expected:,}",
                timeout=15_000,
            )

        before = await total_requests(proxy)
        assert before == 6
        await shows(before)
        await chat(proxy, 3)
        after = await total_requests(proxy)
        while after < before + 3:  # the meter flushes every 0.2 s
            after = await total_requests(proxy)
        await shows(after)  # the page updated without a reload

        # Tokens are exact like requests; spend grows every second (GPU time): it is only checked shown.
        usage = await admin(proxy, "/admin/usage", start="24h", granularity="total", group_by="")
        totals = usage["totals"]
        await page.wait_for_function(
            "t => document.getElementById('total-tokens').textContent === t",
            arg=f"{totals['prompt_tokens']:,} / {totals['completion_tokens']:,}",
        )
        assert (await page.inner_text("#total-cost")).startswith("$")
        assert (await page.inner_text("#async-saved")).startswith("$")
        by_mode = await page.inner_text("#by-mode")
        assert "async" in by_mode
        assert "realtime" in by_mode
        await page.wait_for_function(
            "document.getElementById('queue').textContent.includes('answered via idle dedicated')"
        )
        assert "ded" in await page.inner_text("#dedicated")
        limits = await page.inner_text("#limits")  # too few answers for a window: still at its ceiling
        assert "ded" in limits
        assert "≥ 30 tok/s at p95" in limits
        assert "none yet: at its ceiling" in limits

        advice = await admin(proxy, "/admin/advice", fresh="1")
        [workload] = advice["workloads"]
        card = page.locator(f'[data-testid="advice-{MODEL}"]')
        await card.wait_for(timeout=15_000)
        text = await card.inner_text()
        assert workload["recommended"]["architecture"] in text
        assert f"{workload['confidence']} confidence" in text
        assert await card.locator("canvas").count() == 1, "the cost against replicas is drawn"
        # The spend chart regroups on demand: by backend, per hour.
        await page.select_option("#spend-by", "backend")
        await page.select_option("#spend-period", "hour")
        await page.wait_for_function(
            "document.querySelector('[data-testid=spend-chart] .u-legend').textContent.includes('ded')"
        )
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        await page.set_viewport_size({"width": 390, "height": 1600})  # a phone
        await page.wait_for_timeout(500)
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, "nothing sticks out of a narrow window"
        await page.screenshot(path=str(ARTIFACTS / "dashboard-narrow.png"), full_page=True)
        assert errors == []


async def test_the_dedicated_table_shows_the_engines_own_figures_and_says_so(
    proxy: ProxyProcess, tmp_path: Path
) -> None:
    await chat(proxy, 2)
    # The engine behind "ded" reports on itself (as its scraper would meter it): 5,000 tokens more than
    # tokenyard sent it, from a minute before until now.
    store = SqliteMeterStore(tmp_path / "meter.sqlite3", retention_s=86_400, records_max=1_000)
    meter = Meter(MeterConfig(store=sqlite_url(tmp_path / "meter.sqlite3")), {}, store)
    sent: dict[str, Any] = {}

    async def both_metered() -> None:  # the meter flushes a moment after the answers
        sent.update(
            (await admin(proxy, "/admin/usage", start="1h", granularity="total", group_by=""))["totals"]
        )
        assert sent["requests"] == 2

    await eventually(both_metered)
    tokens = sent["prompt_tokens"] + sent["completion_tokens"]
    for wall, total in ((time.time() - 60, 10_000), (time.time(), 10_000 + tokens + 5_000)):
        snapshot = EngineSnapshot(
            "vllm", 0.0, frozenset({"generation_tokens_total"}), generation_tokens_total=total
        )
        meter_engine(meter, "ded", snapshot, wall)
    assert await meter.flush()
    await store.aclose()
    async with browser_page(1200) as (page, _errors):
        await sign_in(page, proxy)
        await page.wait_for_function(
            "document.getElementById('dedicated').textContent.includes('not via tokenyard')"
        )
        await page.wait_for_function(
            "n => document.getElementById('dedicated').textContent.includes(n)", arg="5,000"
        )
        text = await page.inner_text("#dedicated")
        assert f"{tokens + 5_000:,}" in text
        # $/1M tokens is from the engine's count; utilization from tokenyard's slot-time (no busy time).
        assert await page.locator("#dedicated .pill:not(.own)").all_inner_texts() == ["engine"]
        assert await page.locator("#dedicated .pill.own").all_inner_texts() == ["tokenyard"]


async def test_a_failing_backends_read_blanks_only_its_panels(proxy: ProxyProcess) -> None:
    from playwright.async_api import Route

    await chat(proxy, 2)
    async with browser_page(1200) as (page, _errors):

        async def broken(route: Route) -> None:
            await route.fulfill(status=500, body="down")

        await page.route("**/admin/backends", broken)
        await sign_in(page, proxy)
        await page.wait_for_function(
            "document.getElementById('limits').textContent.includes('backends unavailable')"
        )
        # The rest of the refresh went on: the totals are drawn, the page says it updated, no error.
        await page.wait_for_function("document.getElementById('total-requests').textContent === '2'")
        assert "backends unavailable" in await page.inner_text("#capacity")
        assert (await page.inner_text("#updated")).startswith("updated")
        await page.unroute("**/admin/backends")
        await page.wait_for_function(  # and the next refresh draws them again
            "document.getElementById('limits').textContent.includes('≥ 30 tok/s at p95')"
        )
