"""The simulator as one ASGI application: the route table, request dispatch and assembly from the config.

``build_app(config)`` returns a plain ASGI3 callable; its ``state`` (``SimulatorState``) exposes the live
counters, recent requests and faults to in-process users.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tokenyard.errors import MethodNotAllowed, RouteNotFound, TokenyardError
from tokenyard.simulator import (
    batches,
    catalog,
    control,
    dialect_endpoints,
    files,
    inference,
    message_batches,
    metrics,
)
from tokenyard.simulator.clock import Clock, SystemClock
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.request import Request, header_dict, parse_json
from tokenyard.simulator.state import RecordedRequest, SimulatorState
from tokenyard.wire import anthropic
from tokenyard.wire.asgi import (
    JSON_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
    send_error,
)
from tokenyard.wire.openai import CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH

Handler = Callable[[SimulatorState, Request, Send], Awaitable[None]]

ROUTES: dict[str, dict[str, Handler]] = {
    CHAT_PATH: {"POST": inference.chat_completions},
    COMPLETIONS_PATH: {"POST": inference.completions},
    EMBEDDINGS_PATH: {"POST": inference.embeddings},
    "/v1/responses": {"POST": dialect_endpoints.responses},
    "/v1/messages": {"POST": dialect_endpoints.messages},
    "/v1/messages/count_tokens": {"POST": dialect_endpoints.count_tokens},
    "/v1/models": {"GET": catalog.list_models},
    "/v1/files": {"GET": files.list_files, "POST": files.upload_file},
    "/v1/batches": {"GET": batches.list_batches, "POST": batches.create_batch},
    "/v1/messages/batches": {"GET": message_batches.list_batches, "POST": message_batches.create_batch},
    "/metrics": {"GET": metrics.metrics},
    "/sim/stats": {"GET": control.stats},
    "/sim/requests": {"GET": control.recent_requests},
    "/sim/faults": {"GET": control.get_faults, "POST": control.set_faults},
    "/sim/reset": {"POST": control.reset},
}
# (prefix, suffix, methods): the path parameter is what lies between; the first route that fits wins, so
# the ones with a suffix come first. Model ids may contain "/".
PARAM_ROUTES: tuple[tuple[str, str, dict[str, Handler]], ...] = (
    ("/v1/messages/batches/", "/results", {"GET": message_batches.batch_results}),
    ("/v1/messages/batches/", "/cancel", {"POST": message_batches.cancel_batch}),
    ("/v1/messages/batches/", "", {"GET": message_batches.retrieve_batch}),
    ("/v1/responses/", "/input_items", {"GET": dialect_endpoints.response_input_items}),
    ("/v1/responses/", "/cancel", {"POST": dialect_endpoints.cancel_response}),
    (
        "/v1/responses/",
        "",
        {"GET": dialect_endpoints.retrieve_response, "DELETE": dialect_endpoints.delete_response},
    ),
    ("/v1/files/", "/content", {"GET": files.file_content}),
    ("/v1/batches/", "/cancel", {"POST": batches.cancel_batch}),
    ("/v1/models/", "", {"GET": catalog.retrieve_model}),
    ("/v1/files/", "", {"GET": files.retrieve_file, "DELETE": files.delete_file}),
    ("/v1/batches/", "", {"GET": batches.retrieve_batch}),
)
RECORDED_PREFIX = "/v1/"
_NO_BODY_LIMIT = sys.maxsize  # a stand-in upstream takes what it is sent; the proxy in front has limits


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Where a request goes: its handler and path parameter, or the methods the path allows (405)."""

    handler: Handler | None
    path_param: str = ""
    allowed: tuple[str, ...] = ()


def match_route(method: str, path: str) -> RouteMatch:
    """Decide which handler serves ``method path``; raises ``RouteNotFound`` for an unknown path."""
    path = path.rstrip("/") or "/"
    methods = ROUTES.get(path)
    param = ""
    if methods is None:
        for prefix, suffix, param_methods in PARAM_ROUTES:
            if path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix):
                methods, param = param_methods, path[len(prefix) : len(path) - len(suffix)]
                break
        else:
            raise RouteNotFound(f"Unknown request URL: {method} {path}.")
    handler = methods.get(method)
    if handler is None:
        return RouteMatch(None, allowed=tuple(methods))
    return RouteMatch(handler, param)


class SimulatorApp:
    """A simulated OpenAI-compatible upstream, as an ASGI3 application."""

    __slots__ = ("state",)

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            raw_body = await read_body(scope, receive, _NO_BODY_LIMIT)
        except ClientGone:
            return  # the client left before sending its whole request; nobody to answer
        method, path = scope["method"], scope["path"]
        body, body_ok = parse_json(raw_body) if raw_body else (None, False)
        headers = header_dict(scope)
        if path.startswith(RECORDED_PREFIX):
            raw = raw_body.decode("utf-8", "replace")
            self.state.record(RecordedRequest(method, path, headers, body, raw))
        try:
            route = match_route(method, path)
            if route.handler is None:
                allow = ", ".join(route.allowed).encode("ascii")
                message = f"Method {method} is not allowed for {path}."
                await _send_route_error(send, path, MethodNotAllowed(message), [(b"allow", allow)])
                return
            query = scope.get("query_string", b"")
            request = Request(
                method, path, route.path_param, query, headers, raw_body, body, body_ok, receive
            )
            await route.handler(self.state, request, send)
        except TokenyardError as exc:
            # Handlers raise only before they start a response, so the error can still be sent.
            await _send_route_error(send, path, exc)


def build_app(config: SimulatorConfig, *, clock: Clock | None = None) -> SimulatorApp:
    """Assemble a simulator from its config; ``clock`` defaults to the real one."""
    return SimulatorApp(SimulatorState(config, clock or SystemClock()))


async def _send_route_error(
    send: Send, path: str, exc: TokenyardError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """An error in the shape of the API the path belongs to: Anthropic's under ``/v1/messages``."""
    if path.startswith(anthropic.MESSAGES_PATH):
        status = anthropic.status_for(exc)
        await send_bytes(send, status, anthropic.error_body_for(exc), [*JSON_HEADERS, *headers])
    else:
        await send_error(send, exc, headers)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge lifespan events: the simulator has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
