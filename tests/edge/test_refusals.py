"""The service's 404s and 405s, through the app: the messages, types and order of checks clients saw before
routes became a table (the Batch API authenticates, and without its store says so, before anything else)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stores import sqlite_url
from tokenyard.config import TokenyardConfig
from tokenyard.edge import app as app_module
from tokenyard.edge.app import TokenyardApp

KEY = "sk-team-0123456789"


@contextlib.asynccontextmanager
async def serving(store: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setattr(app_module, "_settle_gc", lambda: None)  # for a server process, not this one
    config = TokenyardConfig.model_validate(
        {
            "backends": {"api": {"kind": "serverless", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {"m": {"deployments": ["api"]}},
            "keys": {"team": {"key": KEY}},
            "meter": {"store": store},
            "advisor": {"enabled": False},
        }
    )
    app = TokenyardApp(config)
    await app.startup()
    try:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenyard") as http:
            yield http
    finally:
        await app.shutdown()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def call(http: httpx.AsyncClient, method: str, path: str, *, key: str | None = KEY) -> httpx.Response:
    return await http.request(method, path, headers={"Authorization": f"Bearer {key}"} if key else {})


async def test_the_api_refuses_unknown_paths_and_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving("off", monkeypatch) as http:
        unknown = await call(http, "POST", "/v1/nothing", key=None)
        assert unknown.status_code == 404
        assert error(unknown)["message"] == "Unknown request URL: POST /v1/nothing."
        assert error(unknown)["code"] == "unknown_url"
        wrong = await call(http, "GET", "/v1/chat/completions", key=None)
        assert wrong.status_code == 405
        assert error(wrong)["message"] == "GET is not allowed on /v1/chat/completions; use POST."
        assert error(wrong)["code"] == "method_not_allowed"


async def test_without_a_store_the_async_routes_say_why_after_authentication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving("off", monkeypatch) as http:
        for method, path in (
            ("GET", "/v1/files"),
            ("PUT", "/v1/batches"),
            ("GET", "/v1/files/x/y/z"),
            ("DELETE", "/v1/files/file_1"),
            ("POST", "/v1/batches/batch_1/cancel"),
        ):
            assert (await call(http, method, path, key=None)).status_code == 401
            refused = await call(http, method, path)
            assert refused.status_code == 404
            assert error(refused)["message"] == (
                "The Batch API needs the async track: a meter store (meter.store)."
            )
        job = await call(http, "GET", "/v1/async/jobs/job_1")
        assert job.status_code == 404
        assert error(job)["message"] == "The async track is off: it needs a meter store (meter.store)."


async def test_the_batch_api_refuses_in_its_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(sqlite_url(tmp_path / "meter.sqlite3"), monkeypatch) as http:
        assert (await call(http, "PUT", "/v1/files", key=None)).status_code == 401  # authenticated first
        wrong = await call(http, "PUT", "/v1/files")
        assert wrong.status_code == 405
        assert error(wrong)["message"] == "PUT is not allowed on /v1/files."
        unknown = await call(http, "GET", "/v1/files/x/y/z")
        assert unknown.status_code == 404
        assert error(unknown)["message"] == "Unknown request URL: GET /v1/files/x/y/z."
        assert error(unknown)["code"] is None  # an object-not-found, not the API's unknown_url
        missing = await call(http, "GET", "/v1/batches/batch_nope")
        assert missing.status_code == 404
        assert error(missing)["message"] == "No batch found with id 'batch_nope'."
        for path in ("/v1/files/", "/v1/batches/"):  # as before routes became a table
            assert (await call(http, "GET", path)).json()["object"] == "list"
        slashed = await call(http, "GET", "/v1/batches/batch_nope/")
        assert error(slashed)["message"] == "No batch found with id 'batch_nope'."
        listed = await call(http, "GET", "/v1/files?limit=2")
        assert listed.json() == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                 "has_more": False}  # fmt: skip
