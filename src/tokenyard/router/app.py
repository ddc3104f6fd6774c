"""The ASGI application, assembled in one place from a validated config.

Start-up (the ASGI lifespan) opens the backends (and any simulators the config asks for); shutdown marks
the proxy unready and closes them. Requests are dispatched by a dict lookup on the path: there are few
routes, and the proxy routes are the hot path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from tokenyard.errors import MethodNotAllowed, RouteNotFound, TokenyardError
from tokenyard.router import wire
from tokenyard.router.auth import KeyRing
from tokenyard.router.backends import Backend, open_backends
from tokenyard.router.config import TokenyardConfig
from tokenyard.router.proxy import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, Proxy

log = logging.getLogger("tokenyard")

Handler = Callable[[wire.Scope, wire.Receive, wire.Send], Awaitable[None]]

_MODEL_CREATED = 1_700_000_000  # a fixed "created" for configured models: they have no creation time


class TokenyardApp:
    """tokenyard's ASGI app: the OpenAI-compatible endpoints, health, and the lifespan."""

    def __init__(self, config: TokenyardConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.keys = KeyRing(config.keys)
        self.ready = False
        self.backends: dict[str, Backend] = {}
        self.proxy: Proxy | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._routes: dict[str, tuple[str, Handler]] = {
            "/v1/chat/completions": ("POST", self._inference(CHAT)),
            "/v1/completions": ("POST", self._inference(COMPLETIONS)),
            "/v1/embeddings": ("POST", self._inference(EMBEDDINGS)),
            "/v1/models": ("GET", self._list_models),
            "/health/live": ("GET", self._live),
            "/health/ready": ("GET", self._ready),
        }

    async def __call__(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        path: str = scope["path"]
        route = self._routes.get(path)
        try:
            if route is None:
                if path.startswith("/v1/models/"):
                    route = ("GET", self._retrieve_model)
                else:
                    raise RouteNotFound(f"Unknown request URL: {scope['method']} {path}.")
            if scope["method"] != route[0]:
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {path}; use {route[0]}.")
            await route[1](scope, receive, send)
        except TokenyardError as exc:
            await wire.send_error(send, exc)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], path)
            with contextlib.suppress(RuntimeError):  # the response may have started already
                await wire.send_bytes(send, 500, wire.error_body("Internal server error.", "server_error"))

    def _inference(self, endpoint: Endpoint) -> Handler:
        async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
            assert self.proxy is not None, "requests arrive only after start-up"
            await self.proxy.handle(scope, receive, send, endpoint)

        return handle

    # -- models ---------------------------------------------------------------------------------------

    async def _list_models(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        principal = self.keys.authenticate(wire.header(scope, b"authorization"))
        data = [_model_object(name) for name in self.config.models if principal.may_use(name)]
        await wire.send_json(send, 200, {"object": "list", "data": data})

    async def _retrieve_model(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        assert self.proxy is not None
        principal = self.proxy.authenticate(scope)
        name = scope["path"].removeprefix("/v1/models/")
        self.proxy.deployments(principal, name)  # raises ModelNotFound
        await wire.send_json(send, 200, _model_object(name))

    # -- health ---------------------------------------------------------------------------------------

    async def _live(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        await wire.send_json(send, 200, {"status": "live"})

    async def _ready(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if self.ready:
            await wire.send_json(send, 200, {"status": "ready"})
        else:
            await wire.send_json(send, 503, {"status": "not ready"})

    # -- lifecycle ------------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open every backend, then accept traffic."""
        self._stack = contextlib.AsyncExitStack()
        self.backends = await self._stack.enter_async_context(open_backends(self.config))
        models = {
            name: [self.backends[b] for b in model.deployments] for name, model in self.config.models.items()
        }
        self.proxy = Proxy(
            keys=self.keys, models=models, max_body_bytes=self.config.server.max_body_bytes, clock=self.clock
        )
        self.ready = True

    async def shutdown(self) -> None:
        """Stop being ready, then close every backend."""
        self.ready = False
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        log.info("stopped: every backend closed")

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


def _model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "tokenyard"}
