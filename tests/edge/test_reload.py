"""A reload reaches every part that follows it: one swap of the live config, seen by the request path
(keys, async-track settings, classifier rules), the async track's door and dispatcher, the admin API (its
key), the advisor and /metrics; restart-only sections stay as started.

The app runs in this test's event loop (its start-up and shutdown called directly, requests through httpx's
ASGI transport), so the test can look at the parts themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.stores import sqlite_url
from tokenyard.config import load_config
from tokenyard.edge import app as app_module
from tokenyard.edge.app import TokenyardApp

OLD_KEY, NEW_KEY = "sk-old-team-0123456789", "sk-new-team-0123456789"
OLD_ADMIN, NEW_ADMIN = "sk-admin-old-0123456789", "sk-admin-new-0123456789"


def settings(tmp: Path) -> dict[str, Any]:
    return {
        "server": {"admin_key": OLD_ADMIN},
        "backends": {"api": {"kind": "serverless", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": ["api"]}},
        "keys": {"team": {"key": OLD_KEY}},
        "meter": {"store": sqlite_url(tmp / "meter.sqlite3")},
        "async_track": {"default_deadline_s": 600, "callbacks": {"allow_hosts": ["old.example"]}},
        "advisor": {"interval_s": 600},
    }


@pytest.fixture
async def started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[TokenyardApp, Path]]:
    # The gc settling is for a server process, not for the test session's.
    monkeypatch.setattr(app_module, "_settle_gc", lambda: None)
    path = tmp_path / "tokenyard.yaml"
    path.write_text(yaml.safe_dump(settings(tmp_path)))
    app = TokenyardApp(load_config(path), config_path=str(path))
    await app.startup()
    try:
        yield app, path
    finally:
        await app.shutdown()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


async def test_a_reload_reaches_every_part(started: tuple[TokenyardApp, Path], tmp_path: Path) -> None:
    app, path = started
    runtime = app.runtime
    track = runtime.track
    assert track is not None
    assert runtime.admin.advisor is not None
    new = settings(tmp_path)
    new["keys"]["newcomer"] = {"key": NEW_KEY}
    new["server"].update(admin_key=NEW_ADMIN, public_metrics=True)
    new["async_track"] = {
        "default_deadline_s": 900,
        "callbacks": {"allow_hosts": ["new.example"]},
        "rules": [{"match": {"model": ["m"]}, "mode": "async"}],
    }
    new["advisor"]["interval_s"] = 900
    new["backends"]["api"]["prices"] = {"input_per_1m": 9.0}  # needs a restart: said, not applied
    path.write_text(yaml.safe_dump(new))

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://tokenyard") as http:

        async def status(method: str, url: str, key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return (await http.request(method, url, headers=headers)).status_code

        assert await status("GET", "/v1/models", NEW_KEY) == 401
        assert await status("GET", "/metrics", None) == 401
        reloaded = await http.post("/admin/reload", headers={"Authorization": f"Bearer {OLD_ADMIN}"})
        assert reloaded.json() == {"reloaded": True, "needs_restart": ["backends"]}

        assert await status("GET", "/v1/models", NEW_KEY) == 200  # the request path's keys
        assert await status("GET", "/admin/queue", OLD_ADMIN) == 403  # the admin key
        assert await status("GET", "/admin/queue", NEW_ADMIN) == 200
        assert await status("GET", "/metrics", None) == 200  # server.public_metrics

    current = runtime.live.current
    assert current.async_track is not None
    assert current.async_track.default_deadline_s == 900
    assert len(current.async_rules) == 1  # the classifier's rules, built once for the reload
    assert track.front.config.callbacks.allow_hosts == ["new.example"]
    assert track.dispatcher.settings().default_deadline_s == 900
    assert runtime.admin.advisor.config.advisor.interval_s == 900
    # Restart-only sections stay as started.
    assert runtime.live.config.backends["api"].prices == app.config.backends["api"].prices


async def test_a_refused_reload_keeps_the_config_in_force(started: tuple[TokenyardApp, Path]) -> None:
    app, path = started
    before = app.runtime.live.current
    path.write_text("keys: [not, a, mapping]\n")
    result = await app.runtime.reload_here()
    assert result["reloaded"] is False
    assert result["problems"]
    assert app.runtime.live.current is before
