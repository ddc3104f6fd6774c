"""The real-time request path: read, authenticate, choose a backend, forward, relay, fail over.

Hot path, lean on purpose: the body is parsed once for the few fields routing needs and forwarded as the
client's raw bytes (re-serialised only when the upstream's model name differs); responses are relayed
chunk by chunk. Failover happens only before the first byte reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from tokenyard.adapters.base import UpstreamResponse
from tokenyard.errors import (
    CapacityExhausted,
    InvalidRequest,
    ModelNotFound,
    NoBackendAvailable,
    TokenyardError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamBroken,
)
from tokenyard.router import wire
from tokenyard.router.auth import KeyRing, Principal
from tokenyard.router.backends import Backend
from tokenyard.router.routing import Choice, choose_deployment


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An inference endpoint: its upstream path and the field a body must carry besides ``model``."""

    upstream_path: str
    required_field: str
    streams: bool


CHAT = Endpoint("/chat/completions", "messages", streams=True)
COMPLETIONS = Endpoint("/completions", "prompt", streams=True)
EMBEDDINGS = Endpoint("/embeddings", "input", streams=False)

# Upstream statuses that say the backend, not the request, failed: try the next deployment.
_FAILOVER_STATUSES = frozenset({401, 403, 408, 409, 429})


def parse_request(body: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], str, bool]:
    """The parsed body, its model and whether it streams; ``InvalidRequest`` for what no upstream accepts."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers past 64 bits, which JSON allows
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(
                "We could not parse the JSON body of your request. The body must be valid JSON "
                "(HINT: check for trailing commas and quotes)."
            ) from exc
    if not isinstance(obj, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = obj.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Invalid type for 'model': expected a non-empty string.", param="model")
    if endpoint.required_field not in obj:
        raise InvalidRequest(
            f"Missing required parameter: '{endpoint.required_field}'.", param=endpoint.required_field
        )
    if endpoint.required_field == "messages" and not isinstance(obj["messages"], list):
        raise InvalidRequest("Invalid type for 'messages': expected an array.", param="messages")
    stream = obj.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("Invalid type for 'stream': expected a boolean.", param="stream")
    return obj, model, bool(stream) and endpoint.streams


def estimate_tokens(body: bytes, obj: dict[str, Any]) -> int:
    """A rough token count for tpm limits before the request runs: ~4 bytes a token, plus the output cap."""
    cap = obj.get("max_completion_tokens") or obj.get("max_tokens") or 0
    return len(body) // 4 + (cap if isinstance(cap, int) else 0)


class _Attempt:
    """One request's journey over the deployments: what was tried and the last failure seen."""

    __slots__ = ("count", "last_error", "tried")

    def __init__(self) -> None:
        self.tried: set[str] = set()
        self.last_error: UpstreamError | None = None
        self.count = 0


class Proxy:
    """Serves the inference endpoints for a set of models and backends."""

    def __init__(
        self,
        *,
        keys: KeyRing,
        models: dict[str, list[Backend]],
        max_body_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.keys = keys
        self.models = models
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    def authenticate(self, scope: wire.Scope) -> Principal:
        """The caller behind the request's bearer key."""
        return self.keys.authenticate(wire.header(scope, b"authorization"))

    def deployments(self, principal: Principal, model: str) -> list[Backend]:
        """The backends of ``model``, in preference order, if the caller may use it."""
        backends = self.models.get(model)
        if backends is None or not principal.may_use(model):
            raise ModelNotFound(
                f"The model `{model}` does not exist or you do not have access to it.", param="model"
            )
        return backends

    async def handle(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, endpoint: Endpoint
    ) -> None:
        """Serve one inference request, end to end."""
        request_id = b"req_" + os.urandom(12).hex().encode()
        id_header = [(wire.H_REQUEST_ID, request_id)]
        try:
            principal = self.authenticate(scope)
            body = await wire.read_body(scope, receive, self.max_body_bytes)
            obj, model, stream = parse_request(body, endpoint)
            backends = self.deployments(principal, model)
        except TokenyardError as exc:
            await wire.send_error(send, exc, id_header)
            return
        except wire.ClientGone:
            return
        await _until_client_leaves(
            receive, self._route(send, endpoint, backends, body, obj, model, stream, id_header)
        )

    async def _route(
        self,
        send: wire.Send,
        endpoint: Endpoint,
        backends: list[Backend],
        body: bytes,
        obj: dict[str, Any],
        model: str,
        stream: bool,
        id_header: list[tuple[bytes, bytes]],
    ) -> None:
        attempt = _Attempt()
        tokens = estimate_tokens(body, obj)
        while True:
            now = self.clock()
            choice = choose_deployment(
                [b.view(now, tokens, already_failed=b.name in attempt.tried) for b in backends]
            )
            if not isinstance(choice, Choice):
                await wire.send_error(
                    send, _give_up(model, choice.cooling, choice.retry_after_s, attempt), id_header
                )
                return
            backend = backends[choice.index]
            attempt.tried.add(backend.name)
            attempt.count += 1
            await backend.admit(now, tokens)
            try:
                upstream_body = _body_for(backend, body, obj, model)
                headers = [*id_header, *_route_headers(backend, choice, attempt.count)]
                if await self._forward(send, endpoint, backend, upstream_body, stream, headers):
                    return
            except UpstreamError as exc:
                attempt.last_error = exc
                retry_after = exc.retry_after_s if isinstance(exc, UpstreamStatusError) else None
                backend.record_failure(self.clock(), exc.message, retry_after)
            except asyncio.CancelledError:
                backend.breaker.on_abandoned()
                raise
            finally:
                backend.in_flight -= 1

    async def _forward(
        self,
        send: wire.Send,
        endpoint: Endpoint,
        backend: Backend,
        body: bytes,
        stream: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        """Send to one backend; True once the client has its answer. Raises ``UpstreamError`` to fail over."""
        resp = await backend.upstream.post(endpoint.upstream_path, body)
        try:
            if resp.status >= 500 or resp.status in _FAILOVER_STATUSES:
                raise _status_error(backend, resp)
            headers = [(b"content-type", resp.content_type.encode("latin-1")), *headers]
            if not stream or resp.status != 200:
                payload = await resp.read()
                await wire.send_bytes(send, resp.status, payload, headers)
            else:
                await self._relay_stream(send, backend, resp, [*wire.STREAM_HEADERS, *headers])
                return True
        finally:
            resp.close()
        backend.record_success()
        return True

    async def _relay_stream(
        self, send: wire.Send, backend: Backend, resp: UpstreamResponse, headers: list[tuple[bytes, bytes]]
    ) -> None:
        chunks = resp.chunks()
        # Wait for the first chunk before answering: until then a failure can still fail over.
        first = await anext(chunks, None)
        if first is None:
            raise UpstreamStreamBroken("the upstream closed the stream before sending anything")
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Bytes went out: no retry. Say so inside the stream, where the openai SDK raises it.
            backend.record_failure(self.clock(), exc.message)
            await send({"type": "http.response.body", "body": wire.sse_error_event(exc)})
            return
        backend.record_success()
        await send({"type": "http.response.body", "body": b""})


def _status_error(backend: Backend, resp: UpstreamResponse) -> UpstreamStatusError:
    if resp.status in (401, 403):
        message = f"backend {backend.name} refused tokenyard's credentials ({resp.status})"
    else:
        message = f"backend {backend.name} answered {resp.status}"
    return UpstreamStatusError(message, status=resp.status, retry_after_s=resp.retry_after_s)


def _give_up(model: str, cooling: bool, retry_after_s: float, attempt: _Attempt) -> TokenyardError:
    """The error for a request no deployment could serve: the last upstream failure, if there was one."""
    last = attempt.last_error
    if isinstance(last, UpstreamStatusError) and last.status == 429:
        return CapacityExhausted(
            f"Every deployment of `{model}` is rate-limited upstream; retry shortly.",
            retry_after_s=last.retry_after_s or retry_after_s,
        )
    if isinstance(last, UpstreamStatusError):
        return UpstreamStatusError(
            f"No deployment of `{model}` could answer; last: {last.message}", status=last.status
        )
    if last is not None:
        return type(last)(f"No deployment of `{model}` could answer; last: {last.message}")
    if cooling:
        return NoBackendAvailable(
            f"Every deployment of `{model}` is cooling down after failures.", retry_after_s=retry_after_s
        )
    return CapacityExhausted(
        f"Every deployment of `{model}` is at capacity; retry shortly.", retry_after_s=1.0
    )


def _body_for(backend: Backend, body: bytes, obj: dict[str, Any], model: str) -> bytes:
    upstream_model = backend.config.model
    if upstream_model is None or upstream_model == model:
        return body  # the client's bytes, untouched
    return orjson.dumps({**obj, "model": upstream_model})


def _route_headers(backend: Backend, choice: Choice, attempts: int) -> list[tuple[bytes, bytes]]:
    headers = [
        (wire.H_BACKEND, backend.name.encode()),
        (wire.H_BACKEND_KIND, backend.config.kind.encode()),
        (wire.H_ROUTE, choice.reason.encode()),
        (wire.H_ATTEMPTS, str(attempts).encode()),
        (wire.H_MODE, b"realtime"),
    ]
    if choice.detail:
        headers.append((wire.H_ROUTE_DETAIL, choice.detail.encode("latin-1", "replace")))
    return headers


async def _until_client_leaves(receive: wire.Receive, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; if the client disconnects first, cancel it (which closes the upstream request)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()  # re-raise what the work raised


async def _disconnected(receive: wire.Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
