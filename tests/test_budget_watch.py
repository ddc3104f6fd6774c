"""Every budget visible, and told once per window: the budget watch reads each budget in force (a key's, a
tenant's, a team's) from a real store, keeps what it read for ``/admin/budgets``, ``/metrics`` and the
dashboard, and tells of each threshold the first time spend reaches it in a window — once across every
replica on the store, in a log line and a signed POST to an allow-listed host.

In-process tests drive the watch with ``await watch.check()`` on a fake clock over real stores (SQLite and
Redis); the rest run the real proxy, the official ``openai`` SDK, the simulator upstream and headless
Chromium.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clocks import T0, FakeClock
from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.dashboard import ARTIFACTS, browser_page, needs_chromium, sign_in
from tests.support.net import free_port
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.receiver import receiving
from tests.support.signatures import verify
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import PROXY_STORES, Stores, sqlite_url
from tokenyard.adapters.webhook import WebhookSender
from tokenyard.admission.budgets import span, usd_to_nusd
from tokenyard.config import TokenyardConfig, parse_config
from tokenyard.errors import ConfigError
from tokenyard.live import LiveConfig
from tokenyard.meter.store import MeterStore
from tokenyard.proxy.spend import Admitted, DedicatedRates, SpendGate
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.stores.protocols import BudgetHold, Settlement
from tokenyard.telemetry.budget_watch import BudgetWatch, budgets_in_force

MODEL = "llama"
SECRET = "whsec-budgets-0123"
KEY_DAY = "key:team-a:day"


def settings(**budgets: Any) -> dict[str, Any]:
    """A config whose key ``team-a`` (team ``search``) has ``budgets["key"]``; the rest is ``budgets:``."""
    return {
        "server": {"admin_key": ADMIN_KEY},
        "backends": {"api": backend("serverless", "http://127.0.0.1:9/v1")},
        "models": {MODEL: {"deployments": ["api"]}},
        "keys": {
            "team-a": {"key": CLIENT_KEY, "team": "search", "budgets": budgets.pop("key", [])},
            "team-b": {"key": OTHER_KEY},
        },
        "budgets": budgets,
    }


def parsed(tree: dict[str, Any]) -> TokenyardConfig:
    return parse_config(yaml.safe_dump(tree))


@pytest.fixture(params=PROXY_STORES)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores(request.param, tmp_path, FakeClock(T0))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def redis_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores("redis", tmp_path, FakeClock(T0))
    try:
        yield opened
    finally:
        await opened.close()


def watching(
    store: MeterStore,
    config: TokenyardConfig,
    clock: FakeClock,
    *,
    replica: str = "replica-1",
    webhook: WebhookSender | None = None,
) -> BudgetWatch:
    live = LiveConfig(config, async_track_runs=False, wall=clock)
    return BudgetWatch(store, live, webhook, replica=replica, wall=clock)


async def spend(watch: BudgetWatch, budget_id: str, usd: float) -> None:
    """Settle ``usd`` on a budget now, as the request path does after an answer."""
    now = watch.wall()
    [line] = [line for line in budgets_in_force(watch.live.current) if line.id == budget_id]
    s = span(line.budget, now)
    hold = BudgetHold(
        line.id, line.limit_nusd, s.oldest, s.bucket, s.ttl_s, line.budget.enforcement == "hard"
    )
    assert watch.store is not None
    await watch.store.settle_many([Settlement([hold], uuid.uuid4().hex, usd_to_nusd(usd))], now)


def told(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The notices logged since the last look (level, message), and forget them."""
    notices = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "tokenyard.budgets" and "reached" in r.getMessage()
    ]
    caplog.clear()
    return notices


# -- in process: the watch over a real store, on a fake clock -----------------------------------------------


async def test_the_watch_lists_every_budget_in_force_once(stores: Stores) -> None:
    clock = FakeClock(T0)
    config = parsed(
        settings(
            key=[{"limit_usd": 10, "window": "day"}, {"limit_usd": 50, "window": "30d"}],
            tenants={"team-a": [{"limit_usd": 100, "window": "month"}], "nobody": [{"limit_usd": 1}]},
            teams={"search": [{"limit_usd": 30, "window": "7d", "enforcement": "soft"}]},
        )
    )
    watch = watching(stores.open(), config, clock)
    await spend(watch, KEY_DAY, 2.5)
    snapshot = await watch.check()
    assert [state.line.id for state in snapshot.budgets] == [
        "tenant:nobody:30d",  # a tenant with no key still has its budget
        "tenant:team-a:month",
        "team:search:7d",
        "key:team-a:30d",  # rolling windows first, shortest first, then calendar ones
        KEY_DAY,
    ]
    assert snapshot.checked_at == clock()
    day = snapshot.budgets[4].to_json()
    assert day == {
        "id": KEY_DAY,
        "holder": {"kind": "key", "name": "team-a"},
        "window": "day",
        "time_zone": "UTC",
        "limit_usd": 10.0,
        "counted_usd": 2.5,
        "remaining_usd": 7.5,
        "share": 0.25,
        "resets_at": "2027-01-16T00:00:00Z",
        "enforcement": "hard",
        "on_exceeded": "reject",
        "thresholds": [0.5, 0.8, 1.0],
    }
    assert snapshot.budgets[2].to_json()["enforcement"] == "soft"
    assert watch.latest is snapshot


async def test_each_threshold_is_told_once_per_window_and_again_in_the_next(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    watch = watching(stores.open(), parsed(settings(key=[{"limit_usd": 10, "window": "day"}])), clock)
    caplog.set_level(logging.INFO, "tokenyard.budgets")
    await spend(watch, KEY_DAY, 4)
    await watch.check()
    assert told(caplog) == []
    await spend(watch, KEY_DAY, 1.5)  # 55 %
    await watch.check()
    assert told(caplog) == [
        (
            logging.INFO,
            "budgets: key team-a's day budget reached 50% of its $10.00 limit ($5.50 counted; hard, reject "
            "when spent); it resets at 2027-01-16T00:00:00Z",
        )
    ]
    clock.advance(60)
    await watch.check()
    assert told(caplog) == [], "told once"
    await spend(watch, KEY_DAY, 3)  # 85 %
    await watch.check()
    assert [message.split(" (")[0] for _, message in told(caplog)] == [
        "budgets: key team-a's day budget reached 80% of its $10.00 limit"
    ]
    await spend(watch, KEY_DAY, 2)  # 105 %: a warning, saying what happens now
    await watch.check()
    [(level, message)] = told(caplog)
    assert level == logging.WARNING
    assert "reached 100% of its $10.00 limit ($10.50 counted; refusing requests)" in message
    await watch.check()
    assert told(caplog) == []

    clock.advance(86_400)  # the next day: a new window, nothing counted in it yet
    assert (await watch.check()).budgets[0].counted_nusd == 0
    assert told(caplog) == []
    await spend(watch, KEY_DAY, 9)  # past 50 % and 80 % between two checks: one notice, the highest
    await watch.check()
    [(level, message)] = told(caplog)
    assert (level, "reached 80%" in message, "2027-01-17T00:00:00Z" in message) == (logging.INFO, True, True)
    await watch.check()
    assert told(caplog) == []


async def test_two_replicas_on_one_redis_tell_each_threshold_once_between_them(
    redis_stores: Stores, caplog: pytest.LogCaptureFixture, webhook: WebhookSender
) -> None:
    clock = FakeClock(T0)
    async with receiving() as (port, got):
        alerts = {"url": f"http://127.0.0.1:{port}/budgets", "allow_hosts": ["127.0.0.1"]}
        config = parsed(settings(teams={"search": [{"limit_usd": 4, "window": "month"}]}, alerts=alerts))
        one, two = (
            watching(redis_stores.open(), config, clock, replica=name, webhook=webhook) for name in ("a", "b")
        )
        caplog.set_level(logging.INFO, "tokenyard.budgets")
        await spend(one, "team:search:month", 2.2)  # 55 %
        for _ in range(3):
            await asyncio.gather(one.check(), two.check())
        await spend(two, "team:search:month", 2)  # 105 %
        for _ in range(3):
            await asyncio.gather(two.check(), one.check())
        await asyncio.gather(one.drain(), two.drain())
        assert [message.split(" of its")[0] for _, message in told(caplog)] == [
            "budgets: team search's month budget reached 50%",
            "budgets: team search's month budget reached 100%",
        ]
        assert [orjson.loads(body)["threshold"] for _, body in got] == [0.5, 1.0]
        # Both replicas read the same counts.
        assert one.latest is not None
        assert two.latest is not None
        assert one.latest.budgets[0].counted_nusd == two.latest.budgets[0].counted_nusd == usd_to_nusd(4.2)


async def test_a_signed_alert_reaches_an_allow_listed_receiver(
    stores: Stores, webhook: WebhookSender
) -> None:
    clock = FakeClock(T0)
    async with receiving() as (port, got):
        alerts = {
            "url": f"http://127.0.0.1:{port}/hooks/budgets",
            "allow_hosts": ["127.0.0.1"],
            "secret": SECRET,
        }
        tree = settings(
            tenants={"team-a": [{"limit_usd": 2, "window": "7d", "thresholds": [0.9]}]}, alerts=alerts
        )
        watch = watching(stores.open(), parsed(tree), clock, webhook=webhook)
        await spend(watch, "tenant:team-a:7d", 1.9)
        await watch.check()
        await watch.drain()
        [(headers, body)] = got
        assert headers["content-type"] == "application/json"
        assert verify(SECRET, headers["x-tokenyard-signature"], body) == int(clock())
        assert orjson.loads(body) == {
            "type": "budget.threshold",
            "budget": {
                "id": "tenant:team-a:7d",
                "holder": {"kind": "tenant", "name": "team-a"},
                "window": "7d",
                "time_zone": "UTC",
                "limit_usd": 2.0,
                "counted_usd": 1.9,
                "remaining_usd": pytest.approx(0.1),
                "share": 0.95,
                "resets_at": "2027-01-15T09:00:00Z",  # a rolling window lets go of its oldest hour next
                "enforcement": "hard",
                "on_exceeded": "reject",
                "thresholds": [0.9],
            },
            "threshold": 0.9,
            "at": int(clock()),
        }


async def test_a_receiver_that_fails_is_logged_and_holds_nothing_up(
    stores: Stores, webhook: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    alerts = {"url": f"http://127.0.0.1:{free_port()}/down", "allow_hosts": ["127.0.0.1"], "timeout_s": 2}
    watch = watching(
        stores.open(), parsed(settings(key=[{"limit_usd": 1}], alerts=alerts)), clock, webhook=webhook
    )
    caplog.set_level(logging.INFO, "tokenyard.budgets")
    await spend(watch, "key:team-a:30d", 1)
    snapshot = await watch.check()  # returns at once: the POST runs beside it
    assert snapshot.budgets[0].share == 1.0
    await watch.drain()
    assert "budgets: key:team-a:30d: the alert failed:" in caplog.text
    await watch.check()  # the watch goes on


def test_an_alert_url_on_a_host_not_allow_listed_is_refused_when_the_config_is_read() -> None:
    alerts = {"url": "https://hooks.example.com/budgets", "allow_hosts": ["127.0.0.1"]}
    with pytest.raises(ConfigError) as raised:
        parsed(settings(alerts=alerts))
    assert raised.value.problems == [
        ("budgets.alerts.url", "its host 'hooks.example.com' is not in budgets.alerts.allow_hosts")
    ]
    with pytest.raises(ConfigError, match=r"budgets\.alerts\.url: must be an http:// or https:// URL"):
        parsed(settings(alerts={"url": "file:///etc/passwd", "allow_hosts": [""]}))
    with pytest.raises(ConfigError, match=r"keys\.team-a\.budgets\.0\.thresholds\.1: must be <= 10"):
        parsed(settings(key=[{"limit_usd": 1, "thresholds": [0.5, 11]}]))
    with pytest.raises(ConfigError, match=r"budgets\.teams\.search\.0\.thresholds\.0: must be > 0"):
        parsed(settings(teams={"search": [{"limit_usd": 1, "thresholds": [0]}]}))
    config = parsed(settings(key=[{"limit_usd": 1, "thresholds": [1.5, 0.25, 1.5]}]))
    assert config.keys["team-a"].budgets[0].thresholds == (0.25, 1.5)  # sorted, once each
    assert config.budgets.alerts.url is None  # no URL: the log line and the gauges only


async def test_a_soft_budget_past_its_limit_is_a_warning_and_never_enforced(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    config = parsed(settings(key=[{"limit_usd": 1, "window": "day", "enforcement": "soft"}]))
    store = stores.open()
    watch = watching(store, config, clock)
    caplog.set_level(logging.INFO, "tokenyard.budgets")
    await spend(watch, KEY_DAY, 1.2)
    await watch.check()
    notices = told(caplog)
    assert [level for level, _ in notices] == [logging.WARNING]
    assert "reached 100% of its $1.00 limit ($1.20 counted; soft: counted, not enforced)" in notices[0][1]
    gate = SpendGate(store, watch.live, {}, DedicatedRates(store, {}, wall=clock), wall=clock)
    principal = watch.live.current.keys.named("team-a")
    assert principal is not None
    admitted = await gate.admit(gate.lines(principal), "req-1", 10**12)  # $1 more: still let through
    assert isinstance(admitted, Admitted)
    assert admitted.holds
    queued = await gate.admit(gate.lines(principal), "req-2", 10**12, lasts_s=60, queued=True)
    assert isinstance(queued, Admitted), "async work is let through too"


# -- through the real proxy -------------------------------------------------------------------------------


def proxy_settings(store: str, sims: dict[str, Any], **budgets: Any) -> dict[str, Any]:
    """``settings`` with a real upstream at $1/$2 per 1M tokens and a meter store."""
    tree = settings(**budgets)
    tree["meter"] = {"store": store, "flush_interval_s": 0.2}
    prices = {"input_per_1m": 1.0, "output_per_1m": 2.0}
    tree["backends"] = {"api": backend("serverless", sims["api"].base_url, prices=prices)}
    return tree


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, Any]]:
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as running:
        yield running


async def ask(proxy: ProxyProcess, n: int = 1, key: str = CLIENT_KEY) -> None:
    async with proxy.client(key=key) as client:
        for _ in range(n):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "count five words please"}], max_tokens=100
            )


async def budgets_now(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    """``/admin/budgets?fresh=1``'s budgets by id."""
    page = await proxy.admin("/admin/budgets", fresh="1")
    assert (page["object"], page["enabled"]) == ("list", True)
    return {item["id"]: item for item in page["data"]}


async def test_admin_budgets_lists_key_tenant_and_team_budgets_with_counts_that_move(
    sims: dict[str, Any], tmp_path: Path
) -> None:
    tree = proxy_settings(
        sqlite_url(tmp_path / "m.sqlite3"),
        sims,
        key=[{"limit_usd": 1, "window": "day", "enforcement": "soft"}],
        tenants={"team-a": [{"limit_usd": 5, "window": "month", "time_zone": "Europe/Berlin"}]},
        teams={"search": [{"limit_usd": 2, "window": "7d"}]},
    )
    async with running_proxy(tree, tmp_path) as proxy, httpx.AsyncClient(timeout=30) as http:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert (await http.get(f"{proxy.url}/admin/budgets")).status_code == 401
        client = {"Authorization": f"Bearer {CLIENT_KEY}"}
        assert (await http.get(f"{proxy.url}/admin/budgets", headers=client)).status_code == 403
        made = []
        for name in ("kept", "gone"):
            answer = await http.post(
                f"{proxy.url}/admin/keys",
                headers=admin,
                json={"name": name, "tenant": "acme", "budgets": [{"limit_usd": 3, "window": "1d"}]},
            )
            assert answer.status_code == 201, answer.text
            made.append(answer.json()["id"])
        assert (await http.delete(f"{proxy.url}/admin/keys/{made[1]}", headers=admin)).status_code == 200

        before = await budgets_now(proxy)
        assert list(before) == ["tenant:team-a:month", "team:search:7d", f"key:{made[0]}:1d", KEY_DAY]
        assert {item["counted_usd"] for item in before.values()} == {0.0}
        assert before["tenant:team-a:month"]["time_zone"] == "Europe/Berlin"
        assert before[KEY_DAY]["enforcement"] == "soft"

        await ask(proxy, 3)

        async def moved() -> None:
            now = await budgets_now(proxy)
            for budget_id in ("tenant:team-a:month", "team:search:7d", KEY_DAY):
                item = now[budget_id]
                assert item["counted_usd"] > 0.0003, item  # three answers of ~$0.0002
                assert item["remaining_usd"] == pytest.approx(item["limit_usd"] - item["counted_usd"])
                assert item["share"] == pytest.approx(item["counted_usd"] / item["limit_usd"], rel=1e-5)
            assert now[f"key:{made[0]}:1d"]["counted_usd"] == 0.0

        await eventually(moved)
        last = await proxy.admin("/admin/budgets")  # as last read: what the gauges show
        metrics = await http.get(f"{proxy.url}/metrics", headers=admin)
        assert metrics.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        for item in last["data"]:
            labels = {
                "holder_kind": item["holder"]["kind"],
                "holder": item["holder"]["name"],
                "window": item["window"],
            }
            for family, field in (
                ("tokenyard_budget_spend_usd", "counted_usd"),
                ("tokenyard_budget_limit_usd", "limit_usd"),
                ("tokenyard_budget_remaining_usd", "remaining_usd"),
            ):
                [sample] = [s for s in families[family].samples if s.labels == labels]
                assert sample.value == pytest.approx(item[field]), (family, labels)


async def test_without_a_meter_store_no_budget_is_counted(sims: dict[str, Any], tmp_path: Path) -> None:
    tree = proxy_settings("off", sims)  # (budgets need the store: a config with one and no store is refused)
    async with running_proxy(tree, tmp_path) as proxy:
        page = await proxy.admin("/admin/budgets", fresh="1")
        assert page == {"object": "list", "enabled": False, "data": [], "checked_at": None}


@needs_chromium
async def test_the_dashboard_draws_a_bar_per_budget(sims: dict[str, Any], tmp_path: Path) -> None:
    tree = proxy_settings(
        sqlite_url(tmp_path / "m.sqlite3"),
        sims,
        key=[{"limit_usd": 0.001, "window": "day", "enforcement": "soft"}],
        tenants={"team-a": [{"limit_usd": 0.002, "window": "month", "on_exceeded": "async"}]},
        teams={"search": [{"limit_usd": 0.05, "window": "7d"}]},
    )
    async with running_proxy(tree, tmp_path) as proxy:
        await ask(proxy, 5)  # ~$0.0011: past the key's soft $0.001, about half the tenant's $0.002

        async def spent() -> None:
            assert (await budgets_now(proxy))[KEY_DAY]["share"] >= 1

        await eventually(spent)
        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        async with browser_page(1000) as (page, errors):
            await sign_in(page, proxy)
            rows = page.locator("#budgets-table [data-testid=budget-row]")
            await page.wait_for_function("document.querySelectorAll('[data-testid=budget-row]').length === 3")
            assert [await row.get_attribute("data-budget-id") for row in await rows.all()] == [
                "tenant:team-a:month",
                "team:search:7d",
                KEY_DAY,
            ]
            key_row = page.locator(f'[data-budget-id="{KEY_DAY}"]')
            assert await key_row.locator(".pill.soft").inner_text() == "soft"
            assert await key_row.locator(".budget-bar.soft > .fill.spent").count() == 1
            share = await key_row.locator("td.share").inner_text()
            assert share.endswith("%")
            assert int(share[:-1]) >= 100
            tenant_row = page.locator('[data-budget-id="tenant:team-a:month"]')
            assert await tenant_row.locator(".pill.hard").inner_text() == "async"
            assert await tenant_row.locator(".budget-bar > i").count() == 3, "its thresholds marked"
            assert "of $0.05" in await page.locator('[data-budget-id="team:search:7d"]').inner_text()
            assert (await page.inner_text("#budgets-checked")).startswith("counted at")
            await page.locator("#budgets").scroll_into_view_if_needed()
            await page.locator("#budgets").screenshot(path=str(ARTIFACTS / "dashboard-budgets.png"))
            assert errors == []
