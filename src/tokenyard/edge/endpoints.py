"""tokenyard's route table: every endpoint, bound to the part of the runtime that serves it.

The inference endpoints are the hot path: literal paths, so one dict lookup finds them. A part that cannot
run without a meter store says why: the async jobs route answers so itself; the Batch API registers no
routes then, and its group refuses every path of it (after authenticating) with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, cast

from prometheus_client import CONTENT_TYPE_LATEST
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tokenyard.admission.auth import Principal
from tokenyard.edge.routes import Group, Handler, Route, Router
from tokenyard.edge.runtime import Runtime
from tokenyard.errors import MethodNotAllowed, ObjectNotFound, RouteNotFound, TokenyardError
from tokenyard.proxy.count_tokens import count_tokens
from tokenyard.proxy.endpoints import MESSAGES
from tokenyard.proxy.handler import ENDPOINTS, Endpoint, Proxy
from tokenyard.proxy.legs import send_error
from tokenyard.proxy.stored_responses import StoredResponses
from tokenyard.queue.batch_api import BatchApi
from tokenyard.queue.front import JOBS_PATH
from tokenyard.queue.message_batches import Handler as MessageBatchHandler
from tokenyard.queue.message_batches import MessageBatchApi, answering_errors
from tokenyard.telemetry.capacity import CapacityApi, plan_utilization
from tokenyard.telemetry.metrics import exposition
from tokenyard.wire import anthropic, openai
from tokenyard.wire import asgi as wire

_MODEL_CREATED = 1_700_000_000  # a fixed "created" for configured models: they have no creation time
_NO_ASYNC_TRACK: Final = "The async track is off: it needs a meter store (meter.store)."
_NO_BATCH_API: Final = "The Batch API needs the async track: a meter store (meter.store)."

BatchHandler = Callable[[BatchApi, wire.Scope, wire.Receive, wire.Send, Principal], Awaitable[None]]


def router(
    runtime: Runtime, health: Iterable[Route], *, forwarded_allow_ips: list[str] | str | None = None
) -> Router:
    """The route table of a started service (``health``: the probes, which the app itself answers).

    ``forwarded_allow_ips``: the proxies trusted to say the client's scheme and address (``X-Forwarded-
    Proto``, ``-For``), applied by uvicorn's own middleware to every route but the inference endpoints,
    which read neither; None when the server applies it to every request itself (uvicorn's default)."""
    proxy = runtime.proxy
    inference = [Route(path, ("POST",), _inference(proxy, endpoint)) for path, endpoint in ENDPOINTS.items()]
    rest = _routes(runtime, health)
    if forwarded_allow_ips is not None:
        # Not on the hot path: the middleware's pass over the headers (0.77 µs in a timeit loop) and its frame
        # on every resume of the request, for a scheme and address nothing there reads.
        rest = [
            dataclasses.replace(route, handler=_behind_proxies(route.handler, forwarded_allow_ips))
            for route in rest
        ]
    return Router([*inference, *rest], groups=[_batch_group(runtime)])


def _behind_proxies(handler: Handler, trusted: list[str] | str) -> Handler:
    """``handler``, with the scheme and client address that ``trusted`` proxies say (uvicorn's middleware,
    typed for uvicorn's own ASGI types)."""
    return cast(Handler, ProxyHeadersMiddleware(cast(Any, handler), trusted_hosts=trusted))


def _routes(runtime: Runtime, health: Iterable[Route]) -> list[Route]:
    """Every route but the inference endpoints'."""
    proxy, admin, dashboard = runtime.proxy, runtime.admin, runtime.dashboard
    return [
        Route(anthropic.COUNT_TOKENS_PATH, ("POST",), _count_tokens(proxy)),
        *_response_routes(runtime),
        Route("/v1/models", ("GET",), _list_models(runtime)),
        Route("/v1/models/{model:path}", ("GET",), _retrieve_model(proxy)),
        Route(JOBS_PATH + "{job_id:path}", ("GET",), _async_job(runtime)),
        Route("/metrics", ("GET",), _metrics(runtime)),
        Route("/admin/usage", ("GET",), admin.usage),
        Route("/admin/export/focus", ("GET",), admin.export_focus),
        Route("/admin/backends", ("GET",), admin.backends_state),
        Route("/admin/backends/{name:path}/replicas", ("PUT",), admin.replicas),
        Route("/admin/advice", ("GET",), admin.advice),
        Route("/admin/queue", ("GET",), admin.queue),
        Route(
            "/admin/capacity",
            ("GET",),
            CapacityApi(admin, runtime.capacity, admin.backends, _capacity_sections(runtime)).handle,
        ),
        Route("/admin/reload", ("POST",), _reload(runtime)),
        Route("/admin/keys", ("POST",), runtime.keys.create),
        Route("/admin/keys", ("GET",), runtime.keys.list_keys),
        Route("/admin/keys/{key_id}", ("GET",), runtime.keys.retrieve),
        Route("/admin/keys/{key_id}", ("PATCH",), runtime.keys.update),
        Route("/admin/keys/{key_id}", ("DELETE",), runtime.keys.revoke),
        Route("/admin/keys/{key_id}/rotate", ("POST",), runtime.keys.rotate),
        Route("/admin/budgets", ("GET",), runtime.budgets.list_budgets),
        Route("/dashboard", ("GET",), dashboard.page),
        Route("/dashboard/login", ("POST",), dashboard.login),
        Route("/dashboard/static/{name:path}", ("GET",), dashboard.asset),
        *health,
        *_batch_routes(runtime),
        *_message_batch_routes(runtime),
    ]


# -- the proxy -------------------------------------------------------------------------------------------


def _inference(proxy: Proxy, endpoint: Endpoint) -> Handler:
    # A partial, not a coroutine of its own: one frame fewer that every resume of the request passes through.
    return functools.partial(proxy.handle, endpoint=endpoint)


def _count_tokens(proxy: Proxy) -> Handler:
    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        await count_tokens(proxy, scope, receive, send)

    return handle


def _response_routes(runtime: Runtime) -> list[Route]:
    """``/v1/responses/{id}`` and what hangs from it: background responses and relayed stored ones."""
    proxy, responses = runtime.proxy, runtime.responses
    one = openai.RESPONSES_PATH + "/{response_id}"

    def serving(serve: Callable[[StoredResponses, wire.Send, str, str, bytes], Awaitable[None]]) -> Handler:
        async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
            principal = proxy.authenticate(scope)
            query = scope.get("query_string", b"")
            await serve(responses, send, principal.tenant, scope["path_params"]["response_id"], query)

        return handle

    return [
        Route(one, ("GET",), serving(StoredResponses.retrieve)),
        Route(one, ("DELETE",), serving(StoredResponses.delete)),
        Route(one + "/cancel", ("POST",), serving(StoredResponses.cancel)),
        Route(one + "/input_items", ("GET",), serving(StoredResponses.input_items)),
    ]


def _list_models(runtime: Runtime) -> Handler:
    live = runtime.live

    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        settings = live.current
        principal = settings.keys.authenticate(wire.header(scope, b"authorization"))
        data = [_model_object(name) for name in settings.config.models if principal.may_use(name)]
        await wire.send_json(send, 200, openai.model_list(data))

    return handle


def _retrieve_model(proxy: Proxy) -> Handler:
    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        principal = proxy.authenticate(scope)
        name = scope["path_params"]["model"]
        proxy.deployments(principal, name)  # raises ModelNotFound
        await wire.send_json(send, 200, _model_object(name))

    return handle


def _model_object(name: str) -> dict[str, object]:
    return openai.model_object(name, _MODEL_CREATED, "tokenyard")


# -- the async track and the Batch API ---------------------------------------------------------------------


def _async_job(runtime: Runtime) -> Handler:
    proxy = runtime.proxy
    if runtime.track is None:
        return _refusing(proxy, _NO_ASYNC_TRACK)
    front = runtime.track.front

    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        await front.status(scope, send, proxy.authenticate(scope))

    return handle


def _batch_routes(runtime: Runtime) -> list[Route]:
    """The Batch API's routes; none without the async track (its group then refuses every path)."""
    proxy, track = runtime.proxy, runtime.track
    if track is None:
        return []
    api = track.batch_api
    return [Route(path, (method,), _authenticated(proxy, api, serve)) for path, method, serve in _BATCH_PATHS]


# The Batch API's routes: path, method, and the ``BatchApi`` method serving it.
_BATCH_PATHS: Final[tuple[tuple[str, str, BatchHandler], ...]] = (
    ("/v1/files", "POST", BatchApi.files_create),
    ("/v1/files", "GET", BatchApi.files_list),
    ("/v1/files/{file_id}", "GET", BatchApi.files_retrieve),
    ("/v1/files/{file_id}", "DELETE", BatchApi.files_delete),
    ("/v1/files/{file_id}/content", "GET", BatchApi.files_content),
    ("/v1/batches", "POST", BatchApi.batches_create),
    ("/v1/batches", "GET", BatchApi.batches_list),
    ("/v1/batches/{batch_id}", "GET", BatchApi.batches_retrieve),
    ("/v1/batches/{batch_id}/cancel", "POST", BatchApi.batches_cancel),
)


def _message_batch_routes(runtime: Runtime) -> list[Route]:
    """Anthropic's Message Batches API; without the async track, its path says why (in Anthropic's shape)."""
    proxy, track = runtime.proxy, runtime.track
    path = anthropic.MESSAGE_BATCHES_PATH
    if track is None:
        refuse = _refusing_messages(proxy, _NO_BATCH_API)
        return [
            Route(path, ("GET", "POST"), refuse),
            Route(path + "/{rest:path}", ("GET", "POST", "DELETE"), refuse),
        ]
    api = track.message_batches

    def serving(serve: MessageBatchHandler) -> Handler:
        async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
            await answering_errors(api, serve, proxy.authenticate, scope, receive, send)

        return handle

    one = path + "/{batch_id}"
    return [
        Route(path, ("POST",), serving(MessageBatchApi.create_batch)),
        Route(path, ("GET",), serving(MessageBatchApi.list_batches)),
        Route(one, ("GET",), serving(MessageBatchApi.retrieve_batch)),
        Route(one, ("DELETE",), serving(MessageBatchApi.delete_batch)),
        Route(one + "/cancel", ("POST",), serving(MessageBatchApi.cancel_batch)),
        Route(one + "/results", ("GET",), serving(MessageBatchApi.batch_results)),
    ]


def _refusing_messages(proxy: Proxy, message: str) -> Handler:
    """A Messages-API route of a part that does not run: the caller is authenticated, then told why."""

    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        try:
            proxy.authenticate(scope)
            raise RouteNotFound(message)
        except TokenyardError as exc:
            await send_error(send, MESSAGES, exc)

    return handle


def _batch_group(runtime: Runtime) -> Group:
    """The Batch API's paths: it authenticates (and, without its store, says so) before it refuses a path
    or method, with an object-not-found 404 and a 405 of its own wording."""
    proxy, runs = runtime.proxy, runtime.track is not None

    def check_first(scope: wire.Scope) -> None:
        proxy.authenticate(scope)
        if not runs:
            raise RouteNotFound(_NO_BATCH_API)

    return Group(
        prefixes=("/v1/files", "/v1/batches"),
        not_found=_batch_not_found,
        not_allowed=_batch_not_allowed,
        check_first=check_first,
        trailing_slash=True,  # it always took /v1/files/ for /v1/files (its paths were split on "/")
    )


def _batch_not_found(method: str, path: str) -> TokenyardError:
    return ObjectNotFound(f"Unknown request URL: {method} {path}.")


def _batch_not_allowed(method: str, path: str, allowed: tuple[str, ...]) -> TokenyardError:
    return MethodNotAllowed(f"{method} is not allowed on {path}.")


def _authenticated(proxy: Proxy, api: BatchApi, serve: BatchHandler) -> Handler:
    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        await serve(api, scope, receive, send, proxy.authenticate(scope))

    return handle


def _refusing(proxy: Proxy, message: str) -> Handler:
    """The route of a part that does not run (the async jobs'): the caller is authenticated, then told why."""

    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        proxy.authenticate(scope)
        raise RouteNotFound(message)

    return handle


# -- telemetry and admin ---------------------------------------------------------------------------------


def _metrics(runtime: Runtime) -> Handler:
    live, admin, registry = runtime.live, runtime.admin, runtime.registry
    content_type = [(b"content-type", CONTENT_TYPE_LATEST.encode())]

    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if not live.config.server.public_metrics:
            admin.authorize(scope)
        await wire.send_bytes(send, 200, exposition(registry), content_type)

    return handle


def _capacity_sections(runtime: Runtime) -> dict[str, Callable[[], Any]]:
    """What ``GET /admin/capacity`` shows beside the planner's document: the measured envelopes, and the
    GPU plan against what runs (when a store holds one)."""
    sections: dict[str, Callable[[], Any]] = {"envelopes": runtime.admin.envelopes}
    plan, models = runtime.plan, runtime.proxy.models
    if plan is not None:
        sections["plan"] = lambda: plan_utilization(plan.plans, models)
        sections["plan_generated_at"] = lambda: plan.generated_at
    return sections


def _reload(runtime: Runtime) -> Handler:
    admin, reload_everywhere = runtime.admin, runtime.reload_everywhere

    async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``POST /admin/reload``: re-read the config file here and on every replica of the store."""
        admin.authorize(scope)
        await wire.send_json(send, 200, await reload_everywhere())

    return handle
