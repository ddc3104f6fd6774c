"""Start-up as a whole: what a failed start leaves behind (nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import pytest

from tokenyard.config import TokenyardConfig
from tokenyard.edge import app as app_module
from tokenyard.edge.app import TokenyardApp
from tokenyard.errors import ConfigError


async def test_a_failed_start_up_closes_what_it_had_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "_settle_gc", lambda: None)  # for a server process, not this one
    config = TokenyardConfig.model_validate(
        {
            "backends": {"sim": {"kind": "serverless", "simulator": {"name": "sim"}}},
            "models": {"m": {"deployments": ["sim"]}},
            "meter": {"store": "off"},
        }
    )
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def upstreams() -> AsyncIterator[Mapping[str, str]]:
        events.append("started")
        try:
            yield {}  # no address for the simulated backend: opening the backends fails after this
        finally:
            events.append("stopped")

    app = TokenyardApp(config, upstreams=upstreams)
    with pytest.raises(ConfigError, match="its simulator was not started"):
        await app.startup()
    assert events == ["started", "stopped"]
    assert not app.ready
    await app.shutdown()  # a shutdown after a failed start has nothing left to close
