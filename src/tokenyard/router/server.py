"""Running the app under uvicorn: uvloop and httptools where available, a timed graceful drain."""

from __future__ import annotations

import importlib.util

import uvicorn

from tokenyard.router.app import TokenyardApp
from tokenyard.router.config import TokenyardConfig


def uvicorn_config(app: TokenyardApp, config: TokenyardConfig, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn settings tokenyard runs with."""
    return uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,  # per-request log formatting costs the hot path; metering records requests
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=config.server.drain_timeout_s,
        backlog=4096,
    )


def run_server(config: TokenyardConfig, *, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests for at most ``server.drain_timeout_s``."""
    server = uvicorn.Server(uvicorn_config(TokenyardApp(config), config, log_level=log_level))
    server.run()
    if not server.started:
        raise SystemExit(1)
