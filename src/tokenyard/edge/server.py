"""Running the app under uvicorn: uvloop where available, httptools with tokenyard's connection limits, a
timed graceful drain."""

from __future__ import annotations

import asyncio
import importlib.util
import math
from types import FrameType

import uvicorn

from tokenyard.config import TokenyardConfig
from tokenyard.edge.app import TokenyardApp, Upstreams, no_upstreams
from tokenyard.edge.connections import ConnectionGuard, ConnectionLimits, plan_limits, protocol_class


def uvicorn_config(
    app: TokenyardApp, config: TokenyardConfig, limits: ConnectionLimits, *, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn settings tokenyard runs with."""
    return uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # httptools (a dependency), never uvicorn's h11 fallback: the limits live in this protocol. (h11
        # would bound an incomplete head to 16 KiB, answer it with a plain-text 400, and time out no head or
        # body.)
        http=protocol_class(ConnectionGuard(limits)),
        timeout_keep_alive=math.ceil(limits.keep_alive_s),  # the protocol uses the exact value
        ws="none",  # no WebSocket routes: an upgrade would hand the connection to a protocol without limits
        # X-Forwarded-* is applied by the routes that read the scheme or address, not on the inference path
        # (``TokenyardApp.forwarded_allow_ips``, set by ``run_server`` from this config).
        proxy_headers=False,
        lifespan="on",
        access_log=False,  # per-request log formatting costs the hot path; metering records requests
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=config.server.drain_timeout_s,
        backlog=4096,
    )


class _UnreadyFirst(uvicorn.Server):
    """uvicorn's server, except that the first SIGTERM/SIGINT turns readiness off for ``unready_s`` before
    the usual graceful shutdown: a load balancer sees 503 and moves new requests elsewhere while this
    replica still serves, so nothing arrives at a closed listener."""

    def __init__(self, config: uvicorn.Config, app: TokenyardApp, unready_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._unready_s = unready_s
        self._stopping = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stopping or self._unready_s <= 0 or not self.started:
            super().handle_exit(sig, frame)  # a second signal (or no delay): stop now
            return
        self._stopping = True
        self._app.ready = False
        asyncio.get_running_loop().call_later(self._unready_s, super().handle_exit, sig, frame)


def run_server(
    config: TokenyardConfig,
    *,
    config_path: str | None = None,
    upstreams: Upstreams = no_upstreams,
    log_level: str = "info",
) -> None:
    """Serve until SIGINT/SIGTERM; then unready for ``server.unready_s``, then drain in-flight requests for
    at most ``server.drain_timeout_s``. ``upstreams`` is entered in the server's event loop at start-up
    (before the backends open) and gives base URLs for the backends the config has none for."""
    limits = plan_limits(config)  # before the app opens anything: the descriptor limit is raised here
    app = TokenyardApp(config, config_path=config_path, upstreams=upstreams)
    served = uvicorn_config(app, config, limits, log_level=log_level)
    app.forwarded_allow_ips = served.forwarded_allow_ips  # uvicorn's: FORWARDED_ALLOW_IPS, or loopback
    server = _UnreadyFirst(served, app, config.server.unready_s)
    server.run()
    if not server.started:
        raise SystemExit(1)
