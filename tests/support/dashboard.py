"""The dashboard in real headless Chromium (Debian's; ``.ci/run`` installs it and requires it)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.config import ADMIN_KEY
from tests.support.proxy import ProxyProcess

if TYPE_CHECKING:
    from playwright.async_api import Page

_FOUND = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM = _FOUND if Path(_FOUND).exists() else None
# Screenshots land here, for a person to look at.
ARTIFACTS = Path(os.environ.get("TOKENYARD_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))

# Skipped, saying why, only where Chromium is absent and not required: .ci/run installs it and requires it.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("TOKENYARD_REQUIRE_CHROMIUM"),
    reason="no Chromium on this machine (apt-get install chromium; .ci/run does)",
)


@contextlib.asynccontextmanager
async def browser_page(height: int = 1600) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page of headless Chromium 1280 wide, and the console and page errors it reports as it goes."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": height})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            await browser.close()


async def sign_in(page: Page, proxy: ProxyProcess) -> None:
    """Open the proxy's dashboard and sign in with the admin key."""
    await page.goto(f"{proxy.url}/dashboard")
    await page.fill("#key", ADMIN_KEY)
    await page.click("button[type=submit]")
