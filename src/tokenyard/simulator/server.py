"""Run a simulator on a real socket inside the current event loop, as an async context manager.

    async with SimulatorServer(SimulatorConfig(ttft_ms=1), port=0) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x")

Embedded servers leave the host process alone: no signal handlers and, unless ``log_level`` is given, no
changes to logging (uvicorn's default log config would reconfigure the host's ``uvicorn.*`` loggers). Their
own start/stop chatter ("Uvicorn running on ... Press CTRL+C to quit") is dropped, so a host that embeds
simulators (the proxy's quick start) prints only its own lines; warnings and errors still show.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Generator
from types import TracebackType
from typing import Any

import uvicorn

from tokenyard.simulator.app import SimulatorApp, build_app
from tokenyard.simulator.clock import Clock
from tokenyard.simulator.config import SimulatorConfig

STARTUP_POLL_S = 0.005

# Set inside an embedded server's own task only: uvicorn logs through shared module-level loggers, and this
# is how a record says which server it came from.
_EMBEDDED = contextvars.ContextVar("tokenyard_embedded_simulator", default=False)


class _QuietEmbedded(logging.Filter):
    """Drops uvicorn's info-level chatter when it comes from an embedded simulator's task."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _EMBEDDED.get()


_QUIET = _QuietEmbedded()


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that does not take over the process's signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Stopping is the owner's job (should_exit); SIGINT/SIGTERM belong to whoever owns the process.
        yield


class SimulatorServer:
    """A simulator listening on ``host:port`` (port 0 picks a free one) for an ``async with`` block.

    ``clock`` (default: the real one) is the simulator's time: a test that hands in a fake clock moves
    batches through their life cycle by advancing it. The server itself keeps real time.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str | None = None,
        shutdown_timeout_s: int = 5,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.app: SimulatorApp = build_app(config, clock=clock)
        self._requested_port = port
        self._log_level = log_level
        self._shutdown_timeout_s = shutdown_timeout_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients should use, e.g. ``http://127.0.0.1:8100/v1``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    async def __aenter__(self) -> SimulatorServer:
        options: dict[str, Any] = {"log_config": None} if self._log_level is None else {}
        uvicorn_config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self._requested_port,
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level=self._log_level,
            timeout_graceful_shutdown=self._shutdown_timeout_s,
            **options,
        )
        server = _EmbeddedServer(uvicorn_config)
        if self._log_level is None:
            logging.getLogger("uvicorn.error").addFilter(_QUIET)  # idempotent: a filter is added once
        self._server = server
        self._task = asyncio.create_task(self._serve(server), name=f"simulator {self.config.name}")
        try:
            while not server.started:
                if self._task.done():
                    await self._task  # raises the start-up failure
                    raise OSError(f"simulator {self.config.name} stopped before it was listening")
                await asyncio.sleep(STARTUP_POLL_S)
        except BaseException:
            # Cancelled (or failed) while starting: do not leave a half-started server behind.
            server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
            self._server = self._task = None
            raise
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = self._task = None

    async def _serve(self, server: _EmbeddedServer) -> None:
        _EMBEDDED.set(True)  # this task's context only
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind; here that must stay this server's failure.
            raise OSError(
                f"simulator {self.config.name} could not listen on {self.host}:{self._requested_port}"
            ) from exc
