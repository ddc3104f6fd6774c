"""The ASGI application: the lifespan builds the runtime once (``edge.runtime``), then every request is
matched on the route table (``edge.endpoints``) and handed over.

Start-up enters the upstreams hook the composition root gave (the quick start's simulators: base URLs for
the backends that have none), then builds the runtime; shutdown marks the service unready and closes
everything in reverse, the meter flushed before the backends close.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Final

from tokenyard.config import TokenyardConfig
from tokenyard.edge import endpoints
from tokenyard.edge.routes import Handler, Miss, Route, Router
from tokenyard.edge.runtime import Runtime, start_runtime
from tokenyard.errors import TokenyardError
from tokenyard.wire import asgi as wire
from tokenyard.wire import openai

log = logging.getLogger("tokenyard")

_NO_HANDLERS: Final[dict[str, Handler]] = {}

# Base URLs by backend name for backends the config gives no ``base_url`` (``simulator:``), from whoever
# started them (the CLI), for as long as the context is entered.
Upstreams = Callable[[], AbstractAsyncContextManager[Mapping[str, str]]]

# CPython collects its young generation every 700 net new container objects. A busy proxy makes those
# fast (pending meter records, in-flight requests), so at c=64 the collector took about 12 % of the
# proxy's CPU (0.73 s of some 6 s of load, timed with gc.callbacks). After start-up its objects are frozen
# out of every later pass and the young generation waits for 10,000: the collector's time fell to ~0.
_GC_YOUNG_THRESHOLD: Final = 10_000


@contextlib.asynccontextmanager
async def no_upstreams() -> AsyncIterator[Mapping[str, str]]:
    """No backend needs a base URL from outside the config."""
    yield {}


class TokenyardApp:
    """tokenyard's ASGI app: the OpenAI-compatible endpoints, admin, metrics, health, and the lifespan."""

    def __init__(
        self,
        config: TokenyardConfig,
        *,
        config_path: str | None = None,
        upstreams: Upstreams = no_upstreams,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config  # as started; the config in force is ``runtime.live`` (a reload swaps it)
        self.config_path = config_path  # re-read on reload (None: the built-in quick start)
        self.upstreams = upstreams
        self.clock = clock
        self.wall = wall
        self.ready = False
        # The proxies trusted to say a client's scheme and address, for the routes that read them; None: the
        # server applies X-Forwarded-* to every request itself (uvicorn's default; ``edge.server`` turns it
        # off and sets this instead).
        self.forwarded_allow_ips: list[str] | str | None = None
        self._health = (
            Route("/health/live", ("GET",), self._live),
            Route("/health/ready", ("GET",), self._ready),
        )
        # Until start-up is done only the probes answer (uvicorn sends no request before it is).
        self._router = Router(self._health)
        self._handlers = self._router.handlers()
        self._runtime: Runtime | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def runtime(self) -> Runtime:
        """The running service (after start-up)."""
        if self._runtime is None:
            raise RuntimeError("tokenyard has not started")
        return self._runtime

    async def __call__(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        # A request, served here rather than in a coroutine of its own: one frame fewer on its await chain.
        try:
            # The request path's routes are literal: two dict lookups (66 ns in a timeit loop, against 86 for
            # the dict and method check before routes were a table, and 249 through ``Router.match``, which
            # serves the rest).
            handler = self._handlers.get(scope["path"], _NO_HANDLERS).get(scope["method"])
            if handler is None:
                handler = self._match(scope)
            await handler(scope, receive, send)
        except TokenyardError as exc:
            await wire.send_error(send, exc)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            with contextlib.suppress(RuntimeError):  # the response may have started already
                await wire.send_bytes(send, 500, openai.error_body("Internal server error.", "server_error"))

    def _match(self, scope: wire.Scope) -> Handler:
        """The handler of a route with parameters (which it finds in ``scope["path_params"]``); raises the
        404 or 405 when no route takes the request."""
        found = self._router.match(scope["method"], scope["path"])
        if isinstance(found, Miss):
            if found.check_first is not None:
                found.check_first(scope)
            raise found.error
        if found.params:
            scope["path_params"] = found.params
        return found.handler

    async def _live(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        await wire.send_json(send, 200, {"status": "live"})

    async def _ready(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if self.ready:
            await wire.send_json(send, 200, {"status": "ready"})
        else:
            await wire.send_json(send, 503, {"status": "not ready"})

    # -- lifecycle ------------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Build the running service, then accept traffic."""
        self._stack = stack = contextlib.AsyncExitStack()
        try:
            base_urls = await stack.enter_async_context(self.upstreams())
            self._runtime = runtime = await start_runtime(
                stack,
                self.config,
                config_path=self.config_path,
                base_urls=base_urls,
                clock=self.clock,
                wall=self.wall,
            )
        except BaseException:
            # What opened before the failure (simulators, backends, stores, background tasks) closes now:
            # the process is about to exit, and must not hang on them or leave a half-started replica.
            self._stack = None
            await stack.aclose()
            raise
        self._router = endpoints.router(runtime, self._health, forwarded_allow_ips=self.forwarded_allow_ips)
        self._handlers = self._router.handlers()
        _settle_gc()
        self.ready = True

    async def shutdown(self) -> None:
        """Stop being ready, flush the meter, then close every backend."""
        self.ready = False
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        log.info("stopped: meter flushed, every backend closed")

    async def _lifespan(self, receive: wire.Receive, send: wire.Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _settle_gc() -> None:
    """Freeze what start-up made (it lives as long as the process) and collect the young less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)
