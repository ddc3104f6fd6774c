"""The dashboard's virtual keys in real headless Chromium: make a key in the page, read its secret the one
time it is shown and use it with the official SDK, then rotate and revoke it there; the API's refusals are
said in words next to the form, and config file keys are read-only. A screenshot of the keys section goes to
``test-artifacts/`` (or ``$TOKENYARD_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import openai
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.dashboard import ARTIFACTS, browser_page, needs_chromium, sign_in
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, USER_HELLO, simulators
from tests.support.stores import sqlite_url
from tokenyard.simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from playwright.async_api import Dialog, Locator, Page

MODEL = "small"
SECRET = re.compile(r"^ty-[\w-]{43}$")  # what the API makes: "ty-" and 256 random bits, URL-safe

pytestmark = needs_chromium


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as sims:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": sqlite_url(tmp_path / "meter.sqlite3")},  # where the admin API keeps keys
            "backends": {"api": backend("serverless", sims["api"].base_url)},
            "models": {MODEL: {"deployments": ["api"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        async with running_proxy(config, tmp_path) as started:
            yield started


async def chat(proxy: ProxyProcess, secret: str) -> None:
    """One chat completion through the official SDK with ``secret`` (it must be answered)."""
    async with proxy.client(key=secret) as client:
        answer = await client.chat.completions.create(model=MODEL, messages=USER_HELLO)
    assert answer.choices[0].message.content


async def refused(proxy: ProxyProcess, secret: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        await chat(proxy, secret)


async def key_id(proxy: ProxyProcess, name: str) -> str:
    """The id the admin API gave the key named ``name``."""
    listed = await proxy.admin("/admin/keys", include_revoked="true")
    [key] = [key for key in listed["data"] if key["name"] == name]
    return str(key["id"])


def key_row(page: Page, name: str) -> Locator:
    return page.locator("#keys-table [data-testid=key-row]", has_text=name)


async def shown_secret(page: Page, not_this: str = "") -> str:
    """The secret in the page's box, once it shows one (other than ``not_this``)."""
    from playwright.async_api import expect

    shown = page.get_by_test_id("key-secret")
    if not_this:
        await expect(shown).not_to_have_text(not_this)
    await expect(shown).to_have_text(SECRET)
    await expect(page.get_by_test_id("key-secret-box")).to_contain_text("it will not be shown again")
    return await shown.inner_text()


async def create_in_page(page: Page, name: str, **fields: str) -> None:
    """Fill the create form (name, tenant, team, models, expires) and submit it."""
    await page.fill("#key-name", name)
    for field, value in fields.items():
        await page.fill(f"#key-{field}", value)
    await page.click("#key-create")


async def no_trace_of(page: Page, secret: str) -> None:
    """The secret is nowhere the browser keeps or shows: not the page, its URL, storage or cookies."""
    assert secret not in await page.content()
    assert secret not in page.url
    stored = await page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
    assert stored == "[{},{}]"
    assert all(secret not in cookie.get("value", "") for cookie in await page.context.cookies())


def on_dialogs(page: Page, accept: list[bool]) -> list[str]:
    """Answer the page's dialogs in order (accept or dismiss; any more are dismissed) and return what they
    said."""
    said: list[str] = []

    async def answer(dialog: Dialog) -> None:
        said.append(dialog.message)
        await (dialog.accept() if accept and accept.pop(0) else dialog.dismiss())

    page.on("dialog", answer)
    return said


async def test_a_key_made_in_the_page_is_shown_once_works_and_is_rotated_and_revoked_there(
    proxy: ProxyProcess,
) -> None:
    from playwright.async_api import expect

    async with browser_page(1200) as (page, errors):
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=proxy.url)
        await sign_in(page, proxy)
        await expect(key_row(page, "team-a")).to_be_visible()

        await create_in_page(page, "billing-bot", tenant="acme", team="payments", models=f" {MODEL} ,")
        secret = await shown_secret(page)
        await expect(page.get_by_test_id("keys-note")).to_have_text("Made the key billing-bot.")
        await page.click("#key-secret-copy")
        await expect(page.locator("#key-secret-copied")).to_have_text("copied")
        assert await page.evaluate("navigator.clipboard.readText()") == secret
        await chat(proxy, secret)
        row = key_row(page, "billing-bot")
        for shown in (f"{secret[:8]}…", "acme", "payments", MODEL, "active"):
            await expect(row).to_contain_text(shown)
        assert secret not in await row.inner_text()
        assert secret not in page.url
        assert await page.evaluate("localStorage.length + sessionStorage.length") == 0

        await page.reload()  # the secret went with the page; the key stays, known by its prefix
        await expect(key_row(page, "billing-bot")).to_contain_text(f"{secret[:8]}…")
        await expect(page.get_by_test_id("key-secret-box")).to_be_hidden()
        await no_trace_of(page, secret)

        # Rotate: an hour's grace unless told otherwise; the new secret shows once, the same way.
        row = key_row(page, "billing-bot")
        await row.get_by_role("button", name="Rotate").click()
        grace = page.locator(".rotate-row input.grace")
        await expect(grace).to_have_value("60")
        await page.get_by_role("button", name="Rotate now").click()
        rotated = await shown_secret(page, not_this=secret)
        await chat(proxy, rotated)
        await chat(proxy, secret)  # the old one works out its grace
        await expect(row).to_contain_text(f"{rotated[:8]}…")
        await expect(row).to_contain_text("old secret until")
        await expect(page.locator(".rotate-row")).to_have_count(0)
        await page.get_by_role("button", name="I have saved it").click()
        await expect(page.get_by_test_id("key-secret-box")).to_be_hidden()
        await no_trace_of(page, rotated)

        # Revoke asks first: dismissed, nothing happens; accepted, both secrets are refused at once.
        said = on_dialogs(page, accept=[False, True])
        await row.get_by_role("button", name="Revoke").click()

        async def asked() -> None:
            assert said, "the page has not asked yet"

        await eventually(asked)
        assert "billing-bot" in said[0]
        await expect(row).to_contain_text("active")
        await chat(proxy, rotated)
        await row.get_by_role("button", name="Revoke").click()
        await expect(key_row(page, "billing-bot")).to_have_count(0)  # revoked keys are hidden by default
        await expect(page.get_by_test_id("keys-note")).to_have_text("Revoked billing-bot.")
        await refused(proxy, rotated)
        await refused(proxy, secret)
        await page.check("#keys-show-revoked")
        row = key_row(page, "billing-bot")
        await expect(row).to_contain_text("revoked")
        assert await row.get_by_role("button").count() == 0
        assert len(said) == 2
        assert errors == []


async def test_refusals_are_said_by_the_form_config_keys_are_read_only_and_nothing_is_markup(
    proxy: ProxyProcess,
) -> None:
    from playwright.async_api import expect

    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    async with browser_page(1200) as (page, errors):
        said = on_dialogs(page, accept=[True])  # the one revoke's confirm; an error never asks
        await sign_in(page, proxy)
        config_row = key_row(page, "team-a")
        await expect(config_row).to_contain_text("config file")
        await expect(config_row.locator(".read-only")).to_have_text("read-only")
        assert await config_row.get_by_role("button").count() == 0

        await create_in_page(page, "search", models=f"{MODEL}, nope")
        error = page.get_by_test_id("keys-error")
        await expect(error).to_have_text("Unknown model 'nope'.")
        await expect(page.get_by_test_id("key-secret-box")).to_be_hidden()
        await expect(page.locator("#key-name")).to_have_value("search")  # kept, to be fixed
        await page.fill("#key-expires", "2001-01-01T00:00")
        await page.fill("#key-models", MODEL)
        await page.click("#key-create")
        await expect(error).to_have_text("expires_at must be in the future (unix seconds).")

        await page.fill("#key-expires", "2031-05-01T12:00")
        await page.click("#key-create")
        await shown_secret(page)
        await expect(error).to_be_empty()
        await expect(key_row(page, "search")).to_contain_text("2031-05-01 12:00")

        # What a key says is text, never markup: in the table, the secret box and the confirm.
        hostile = '<img src=x onerror="window.pwned=1">'
        await create_in_page(page, hostile, team="<i>ops</i>")
        await shown_secret(page)
        await expect(page.get_by_test_id("key-secret-box")).to_contain_text(hostile)
        row = key_row(page, hostile)
        await expect(row.locator("td").nth(4)).to_have_text("<i>ops</i>")
        assert await page.locator("#keys img, #keys i").count() == 0
        assert await page.evaluate("window.pwned") is None
        assert said == []
        await row.get_by_role("button", name="Revoke").click()
        await expect(row).to_have_count(0)
        assert said == [
            f"Revoke the key {hostile} ({await key_id(proxy, hostile)})? Its secret is refused from now "
            "on; this cannot be undone."
        ]
        await expect(page.get_by_test_id("key-secret-box")).to_be_hidden()  # its key is revoked: of no use

        # The screenshot: every kind of row, a secret shown once, and a refusal said next to the form.
        await create_in_page(page, "batch-jobs", team="data", models=MODEL)
        await shown_secret(page)
        await page.check("#keys-show-revoked")
        await expect(key_row(page, hostile)).to_contain_text("revoked")
        await create_in_page(page, "nightly", models="nope")
        await expect(error).to_have_text("Unknown model 'nope'.")
        await page.locator("#keys").screenshot(path=str(ARTIFACTS / "dashboard-keys.png"))

        await page.set_viewport_size({"width": 390, "height": 1200})  # a phone: the table scrolls in its box
        await expect(page.get_by_test_id("keys-table")).to_be_visible()
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, "nothing sticks out of a narrow window"
        # Chromium logs each refusal it fetched; the page itself reported nothing.
        assert (
            errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"] * 3
        )
