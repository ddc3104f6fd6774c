"""The request path: read, authenticate, classify (async requests go to the async track's door), then in
real time choose a backend, forward, relay, fail over. The async track's jobs run through the same
routing (``Proxy.execute``).

Hot path, lean on purpose: the body is parsed once for the few fields routing needs and forwarded as the
client's raw bytes (re-serialised only when the upstream's model name differs); responses are relayed
chunk by chunk. Failover happens only before the first byte reaches the client.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson

from tokenyard.adapters.base import UpstreamResponse
from tokenyard.admission.auth import Principal, Priority
from tokenyard.admission.budgets import BudgetLine
from tokenyard.admission.classify import ASYNC_TIERS, Decision, RequestFacts, classify
from tokenyard.admission.key_limits import KeyRateLimited, KeyRates
from tokenyard.capacity.observed import LatencySample
from tokenyard.errors import (
    CapacityExhausted,
    InvalidRequest,
    ModelNotFound,
    NoBackendAvailable,
    ProxyOverloaded,
    StoreError,
    TokenyardError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamBroken,
)
from tokenyard.live import LiveConfig
from tokenyard.meter.meter import Meter
from tokenyard.meter.model import UsageRecord
from tokenyard.proxy import background, request_body
from tokenyard.proxy.backends import Backend
from tokenyard.proxy.breaker import Ticket
from tokenyard.proxy.endpoints import (
    ENDPOINTS,
    RESPONSES,
    TRANSLATED,
    Endpoint,
    estimate_tokens,
    parse_request,
)
from tokenyard.proxy.exchange import CLIENT_CLOSED, Exchange
from tokenyard.proxy.legs import Leg, Translation, relayed_error, send_error, stream_error_event
from tokenyard.proxy.plan_order import request_shape
from tokenyard.proxy.routing import Choice, NoChoice, choose_deployment
from tokenyard.proxy.spend import Admitted, OverBudget, SpendGate
from tokenyard.proxy.stored_responses import ResponseOwners, response_id
from tokenyard.proxy.whole_as_events import message_as_stream, response_as_stream
from tokenyard.proxy.whole_as_stream import whole_answer_as_stream
from tokenyard.queue.front import AsyncFront
from tokenyard.queue.model import Job, JobResult, new_job_id
from tokenyard.queue.store import JobsAndObjects
from tokenyard.tracing.trace import TRACEPARENT, Attempt, Trace, Tracer
from tokenyard.wire import anthropic
from tokenyard.wire import asgi as wire
from tokenyard.wire.ids import new_object_id, new_request_id

__all__ = ["ENDPOINTS", "Endpoint", "Proxy", "estimate_tokens", "parse_request"]

# Each endpoint's leg to a backend that speaks its API: shared, it holds no per-request state.
_NATIVE = {endpoint.name: Leg(endpoint, None) for endpoint in ENDPOINTS.values()}


# How long an upstream may take to end its body after ``data: [DONE]`` and keep its connection pooled.
_AFTER_DONE_GRACE_S = 1.0

# Upstream statuses that say the backend, not the request, failed: try the next deployment.
_FAILOVER_STATUSES = frozenset({401, 403, 408, 409, 429})
_SSE_CONTENT_TYPE = wire.SSE_HEADERS[0][1].decode()  # a translated stream's, whatever the upstream's said


class Proxy:
    """Serves the inference endpoints for a set of models and backends, metering every request."""

    def __init__(
        self,
        *,
        live: LiveConfig,
        models: dict[str, list[Backend]],
        meter: Meter,
        rejected: Counter[int],
        max_body_bytes: int,
        clock: Callable[[], float],
        wall: Callable[[], float],
        front: AsyncFront | None = None,
        tracer: Tracer | None = None,
        objects: JobsAndObjects | None = None,
        spend: SpendGate | None = None,
    ) -> None:
        self.live = live  # keys, async-track settings and classifier rules in force (a reload swaps them)
        self.models = models
        self.meter = meter
        self.rejected = rejected
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.wall = wall
        self.front = front  # the async track's door (None: no job store, every request is real time)
        self.tracer = tracer  # None: no telemetry.otlp (the request path pays nothing for tracing)
        self.spend = spend  # budgets (None: no meter store to count them in)
        self.key_rates = KeyRates()  # keys' own rpm and tpm, this replica's share (membership sets it)
        # Which backend stored which response (``GET /v1/responses/{id}`` is relayed there), kept beside the
        # jobs when there is a job store.
        self.response_owners = ResponseOwners(objects, wall)
        # Models routed by the GPU plan in force: per shape index, their deployments in the plan's order
        # (``edge/plan.py`` replaces it whole; empty: every model in its configured order).
        self.planned: dict[str, tuple[list[Backend], ...]] = {}
        # The APIs every backend speaks: a request of one of them needs no look at who speaks what (chat,
        # with OpenAI-compatible backends only: the hot path pays one set lookup).
        spoken = [b.speaks for backends in models.values() for b in backends]
        self.spoken_everywhere: frozenset[str] = frozenset.intersection(*spoken) if spoken else frozenset()

    def authenticate(self, scope: wire.Scope) -> Principal:
        """The caller behind the request's key: ``Authorization: Bearer``, or Anthropic's ``x-api-key``
        (Claude Code and the anthropic SDK send the latter)."""
        authorization = wire.header(scope, b"authorization")
        if authorization is None:
            api_key = wire.header(scope, anthropic.API_KEY_HEADER.encode())
            if api_key is not None:
                authorization = b"Bearer " + api_key
        return self.live.current.keys.authenticate(authorization)

    def able(self, backends: list[Backend], endpoint: Endpoint) -> list[Backend]:
        """The backends that can take ``endpoint``: natively, or through translation to chat completions."""
        if endpoint.name in self.spoken_everywhere:
            return backends
        translatable = endpoint.name in TRANSLATED
        return [b for b in backends if endpoint.name in b.speaks or (translatable and "chat" in b.speaks)]

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
        started = self.clock()
        request_id = new_request_id()
        id_header = [(wire.H_REQUEST_ID, request_id.encode())]
        trace = self._begin_trace(scope, endpoint)
        try:
            principal = self.authenticate(scope)
            body = await wire.read_body(scope, receive, self.max_body_bytes)
            obj, model, stream = parse_request(body, endpoint)
            backends = self.deployments(principal, model)
            if endpoint.name not in self.spoken_everywhere:  # chat on OpenAI-compatible backends: no look
                backends = self._able(backends, endpoint, model)
            decision = self._classify(scope, principal, endpoint, model, obj, stream)
            body = _without_async_signals(body, obj, decision)
            admitted = None
            if principal.rated or (self.spend is not None and self.spend.applies(principal)):
                admitted, decision = await self._gate(
                    principal, request_id, model, backends, body, obj, stream, decision, id_header
                )
            if decision is not None and decision.mode == "async" and self.front is not None:
                # ``admitted``: the job's reservation (its answer, metered under request_id, settles it).
                await self._queue(self.front, scope, receive, send, principal, endpoint, model, body,
                                  decision, id_header, trace, admitted)  # fmt: skip
                return
        except TokenyardError as exc:
            # Counted by status only: client-chosen model names must not grow the store or the metrics.
            self.rejected[exc.status_code] += 1
            _refused(trace, exc.status_code, exc.message)
            await send_error(send, endpoint, exc, id_header)
            return
        except wire.ClientGone:
            _refused(trace, CLIENT_CLOSED, "the client left before its request was read")
            return
        exchange = Exchange(
            request_id,
            principal.tenant,
            model,
            obj,
            started,
            reason=decision.reason if decision is not None else "default",
            key_id=principal.key_name,
            team=principal.team or "",
        )
        exchange.trace = trace
        planned = self.planned.get(model)
        if planned is not None:  # the plan's order for this request's shape, built when the plan came
            backends = self.able(planned[request_shape(len(body), obj)], endpoint)
        try:
            with wire.LeaveWatch(receive, scope.get(wire.LEAVING)) as watch:
                await self._route(
                    send, endpoint, backends, body, stream, exchange, id_header, principal.priority
                )
            if watch.left:
                exchange.status = CLIENT_CLOSED
        except Exception:
            exchange.status = 500  # the app answers 500 (if it still can) and logs it
            raise
        finally:
            if exchange.status == 0:  # cancelled from outside (shutdown) before any answer
                exchange.status = CLIENT_CLOSED
            record = exchange.to_record(self.clock(), self.wall())
            self.meter.record(record)
            if admitted is not None:
                self.spend.settle(admitted, record)  # type: ignore[union-attr]  # admitted: spend is set
            _finish(trace, exchange, record)

    async def _gate(
        self,
        principal: Principal,
        request_id: str,
        model: str,
        backends: list[Backend],
        body: bytes,
        obj: dict[str, Any],
        stream: bool,
        decision: Decision | None,
        id_header: list[tuple[bytes, bytes]],
    ) -> tuple[Admitted | None, Decision | None]:
        """The key's own rate limits, then its budgets; their headers go on the answer, refusal or not.

        A budgeted request reserves its worst case: a real-time one until it is answered, an async one until
        its deadline (see ``_hold_queued``). A hard budget that cannot hold a real-time request answers 429,
        or sends it down the async track if the budget says so and the client can wait."""
        if principal.rated:
            try:
                id_header += self.key_rates.take(principal, estimate_tokens(body, obj), self.clock())
            except KeyRateLimited as exc:
                id_header += exc.headers
                raise
        spend = self.spend
        if spend is None:
            return None, decision
        lines = spend.lines(principal)
        if not lines:
            return None, decision
        if decision is not None and decision.mode == "async" and self.front is not None:
            return await self._hold_queued(lines, request_id, model, body, obj, decision, id_header), decision
        checked = await spend.admit(lines, request_id, spend.worst_case_pusd(backends, len(body), obj))
        if isinstance(checked, Admitted):
            id_header += checked.headers
            return checked, decision
        track = self.live.current.async_track
        if checked.line.budget.on_exceeded == "reject" or track is None or stream or self.front is None:
            id_header += checked.headers
            raise checked.error()
        # Held: a client that asked to poll (Prefer: respond-async) was classified async already.
        reason = f"budget: {checked.line.holder}'s {checked.line.budget.window} budget is spent"
        held = Decision("async", "hold", reason, track.default_deadline_s)
        return await self._hold_queued(lines, request_id, model, body, obj, held, id_header), held

    async def _hold_queued(
        self,
        lines: tuple[BudgetLine, ...],
        request_id: str,
        model: str,
        body: bytes,
        obj: dict[str, Any],
        decision: Decision,
        id_header: list[tuple[bytes, bytes]],
    ) -> Admitted:
        """Reserve an async job's worst case (on any path it may take) until its deadline, under the request's
        id: the job's answer is metered under it, and charging that settles the reservation. Only a hard
        budget that rejects refuses (429); one that says ``async`` counts the job, never refuses it."""
        assert self.spend is not None
        assert self.front is not None
        worst_pusd = self.spend.queued_worst_case_pusd(model, len(body), obj)
        checked = await self.spend.admit(
            lines, request_id, worst_pusd, lasts_s=self.front.deadline_s(decision), queued=True
        )
        id_header += checked.headers
        if isinstance(checked, OverBudget):
            raise checked.error()
        return checked

    def _able(self, backends: list[Backend], endpoint: Endpoint, model: str) -> list[Backend]:
        """``able``, or a 400 saying what the model's deployments speak instead."""
        able = self.able(backends, endpoint)
        if not able:
            spoken = ", ".join(sorted({api for b in backends for api in b.speaks}))
            message = f"No deployment of `{model}` speaks the {endpoint.name} API (they speak: {spoken})."
            raise InvalidRequest(message, param="model")
        return able

    def _begin_trace(self, scope: wire.Scope, endpoint: Endpoint) -> Trace | None:
        if self.tracer is None:
            return None
        return self.tracer.begin(wire.header(scope, TRACEPARENT), endpoint.name, self.wall())

    async def _queue(
        self,
        front: AsyncFront,
        scope: wire.Scope,
        receive: wire.Receive,
        send: wire.Send,
        principal: Principal,
        endpoint: Endpoint,
        model: str,
        body: bytes,
        decision: Decision,
        id_header: list[tuple[bytes, bytes]],
        trace: Trace | None,
        held: Admitted | None,
    ) -> None:
        """Hand an async request to the async track's door (which answers it); ``held``: its reservation."""
        # A background response's job is the response: its id is the one the client retrieves.
        job_id = new_object_id("resp_") if decision.background else new_job_id()
        submitted = front.submit(
            send,
            principal=principal,
            endpoint_path=endpoint.api_path,
            model=model,
            body=body,
            decision=decision,
            callback=front.callback(scope),
            id_header=id_header,
            job_id=job_id,
            traceparent=trace.traceparent if trace is not None else "",
            accepted=background.queued_answer if decision.background else None,
        )
        # A held client may leave: stop waiting for it (its job still runs, once).
        try:
            await wire.until_client_leaves(receive, submitted, scope.get(wire.LEAVING))
        except StoreError:  # not queued, so never answered: nothing would settle its reservation
            if held is not None and self.spend is not None:
                self.spend.release(held)
            raise
        if trace is not None:  # a held answer's status is the job's: the job's spans say it
            trace.queued(job_id, decision.reason, 202 if decision.delivery == "poll" else 0)

    def _classify(
        self,
        scope: wire.Scope,
        principal: Principal,
        endpoint: Endpoint,
        model: str,
        obj: dict[str, Any],
        stream: bool,
    ) -> Decision | None:
        """Real time or async, and why (None when the async track is off: nothing to read)."""
        settings = self.live.current
        track = settings.async_track
        if track is None:
            return None
        prefer = mode = None
        for key, value in scope["headers"]:  # one pass for both headers
            if key == b"prefer":
                prefer = value
            elif key == wire.H_MODE:
                mode = value
        tier = obj.get("service_tier")
        background = endpoint is RESPONSES and obj.get("background") is True
        nothing_says_async = (
            prefer is None and mode is None and tier not in ASYNC_TIERS and principal.mode is None
        ) and not background
        if nothing_says_async and not settings.async_rules:
            return None  # real time by default: the hot path, kept cheap (no facts built)
        user, metadata = obj.get("user"), obj.get("metadata")
        facts = RequestFacts(
            model=model,
            endpoint=endpoint.name,
            tenant=principal.tenant,
            stream=stream,
            prefer=_text(prefer),
            mode_header=_text(mode),
            service_tier=tier,
            user=user if isinstance(user, str) else None,
            metadata=metadata if isinstance(metadata, dict) else {},
            key_name=principal.key_name,
            key_mode=principal.mode,
            key_deadline_s=principal.deadline_s,
            background=background,
        )
        return classify(
            facts,
            settings.async_rules,
            default_deadline_s=track.default_deadline_s,
            flex_deadline_s=track.flex_deadline_s,
        )

    async def execute(
        self, job: Job, *, path: str, only: list[Backend] | None = None
    ) -> tuple[JobResult, UsageRecord]:
        """Run an async job now, on ``only`` these backends or the model's deployments; its answer and
        usage (the caller meters it if the answer is the job's first)."""
        endpoint = ENDPOINTS[job.endpoint]
        backends = self.models.get(job.model, []) if only is None else only
        request_id = job.request_id or new_request_id()
        exchange = Exchange(
            request_id,
            job.tenant,
            job.model,
            orjson.loads(job.body),
            self.clock(),
            key_id=job.key_id,
            team=job.team,
        )
        if self.tracer is not None and job.traceparent:  # in the trace of the request that queued it
            exchange.trace = self.tracer.resume(job.traceparent, path, self.wall(), endpoint.name)
        planned = self.planned.get(job.model) if only is None else None
        if planned is not None:
            backends = planned[request_shape(len(job.body), exchange.request)]
        backends = self.able(backends, endpoint)
        exchange.mode, exchange.reason = "async", job.reason
        captured = wire.Captured()
        if not backends:  # the model left the config while the job waited: a final answer, not a retry
            missing = ModelNotFound(f"The model `{job.model}` does not exist.", param="model")
            await send_error(captured, endpoint, missing)
        else:
            # A job runs as "normal", whatever its key's priority: the async track already keeps it below
            # real-time work (the dispatcher placed it on a dedicated replica under idle_fill_cap, which a
            # second rule here could refuse), and on the last-resort path its deadline is close.
            await self._route(captured, endpoint, backends, job.body, False, exchange, [], "normal")
        exchange.route = path
        answer = JobResult(
            job.id, captured.status, captured.body, path, self.wall(), captured.content_type,
            [(k.decode(), v.decode("latin-1")) for k, v in captured.headers if k in wire.SERVED_BY],
            request_id,
        )  # fmt: skip
        record = exchange.to_record(self.clock(), self.wall())
        _finish(exchange.trace, exchange, record)
        return answer, record

    async def _route(
        self,
        send: wire.Send,
        endpoint: Endpoint,
        backends: list[Backend],
        body: bytes,
        stream: bool,
        exchange: Exchange,
        id_header: list[tuple[bytes, bytes]],
        priority: Priority,
    ) -> None:
        tokens = estimate_tokens(body, exchange.request)
        # Every stream asks the upstream for usage; if the client did not, the usage chunk is cut out again.
        strip_usage = stream and endpoint.asks_usage and not _asked_for_usage(exchange.request)
        while True:
            now = self.clock()
            choice = choose_deployment(
                [
                    b.view(now, tokens, already_failed=b.name in exchange.tried, priority=priority)
                    for b in backends
                ],
                priority,
            )
            if not isinstance(choice, Choice):
                error = _give_up(exchange, choice)
                exchange.status = error.status_code
                await send_error(send, endpoint, error, id_header)
                return
            backend = backends[choice.position]
            exchange.tried.add(backend.name)
            exchange.attempts += 1
            ticket = backend.admit(now)  # in flight from here: the finally below counts it out
            in_flight = backend.in_flight  # this request included: the concurrency it runs at
            # Only a chat or completion on a backend something learns from pays for the clock reads and the
            # sample (an embedding's latency says nothing of decode capacity).
            observed = endpoint.streams and backend.wants_samples
            attempt = _attempt(exchange, backend)
            try:
                leg, upstream_body = self._leg(endpoint, backend, body, exchange, strip_usage)
                await backend.take_rate(tokens)
                headers = [*id_header, *_route_headers(backend, choice, exchange.attempts)]
                exchange.backend, exchange.route = backend, choice.reason
                sent_s = self.clock() if observed else 0.0
                await self._forward(
                    send,
                    endpoint,
                    leg,
                    backend,
                    ticket,
                    (upstream_body, _upstream_headers(backend, exchange, attempt)),
                    stream,
                    strip_usage,
                    headers,
                    exchange,
                )
                if attempt is not None:
                    attempt.end(exchange.status)
                if observed:
                    self._observe(backend, exchange, sent_s, in_flight)
                return
            except UpstreamError as exc:
                if attempt is not None:
                    attempt.end(exc.status if isinstance(exc, UpstreamStatusError) else 0, exc.message)
                exchange.backend = None
                exchange.last_error = exc
                if observed:  # an engine that fails for overload breaches its SLA too
                    backend.observe_failure(exc, in_flight * backend.cluster_size, self.wall())
                status = exc if isinstance(exc, UpstreamStatusError) else None
                backend.record_failure(
                    self.clock(),
                    ticket,
                    exc.message,
                    status.retry_after_s if status else None,
                    rate_limited=status is not None and status.status == 429,
                )
            # This machine ran out (fds, ports), or the request cannot be translated for a chat backend: no
            # backend is to blame, and the next one would fail the same way.
            except (ProxyOverloaded, InvalidRequest) as exc:
                backend.breaker.on_abandoned(ticket)
                if attempt is not None:
                    attempt.end(0, exc.message)
                exchange.backend = None
                exchange.status = exc.status_code
                await send_error(send, endpoint, exc, id_header)
                return
            except BaseException as exc:  # cancelled, or a bug: no verdict on the backend either way
                backend.breaker.on_abandoned(ticket)
                if attempt is not None:  # the client left (or shutdown): no error of the upstream's
                    cancelled = isinstance(exc, asyncio.CancelledError)
                    attempt.end(exchange.status or CLIENT_CLOSED, None if cancelled else type(exc).__name__)
                raise
            finally:
                backend.in_flight -= 1

    def _leg(
        self, endpoint: Endpoint, backend: Backend, body: bytes, exchange: Exchange, strip_usage: bool
    ) -> tuple[Leg, bytes]:
        """How this attempt speaks to ``backend``, and the body it sends: in the client's own API its own
        bytes, or translated to chat (``InvalidRequest`` when the request cannot be)."""
        if endpoint.name in backend.speaks:
            return _NATIVE[endpoint.name], _body_for(backend, body, exchange, strip_usage)
        translation = exchange.translation
        if translation is None:
            translation = exchange.translation = Translation(endpoint, exchange.request, int(self.wall()))
        upstream_body = translation.body(backend.config.model or exchange.model)
        return Leg(endpoint, translation), upstream_body

    def _observe(self, backend: Backend, exchange: Exchange, sent_s: float, in_flight: int) -> None:
        """Hand the backend what its whole answer measured, timed from when the request went to *it* (an
        earlier attempt that failed over is not this backend's latency); ``in_flight``: at its admission
        (it is still counted in now)."""
        tap = exchange.tap
        if exchange.status != 200 or exchange.ttfb_s is None or (tap is not None and not tap.done):
            return  # failed or cut short: no whole answer to measure
        end_s = self.clock()
        usage = exchange.usage()
        backend.observe(
            LatencySample(
                ttft_s=max(0.0, exchange.started_s + exchange.ttfb_s - sent_s),
                latency_s=max(0.0, end_s - sent_s),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                streamed=tap is not None,
                # Each proxy replica carries its share: the backend as a whole runs about this many.
                concurrency=max(in_flight, backend.in_flight) * backend.cluster_size,
                ended_at=self.wall(),
            )
        )

    async def _forward(
        self,
        send: wire.Send,
        endpoint: Endpoint,
        leg: Leg,
        backend: Backend,
        ticket: Ticket,
        upstream_request: tuple[bytes, tuple[tuple[str, str], ...]],
        stream: bool,
        strip_usage: bool,
        headers: list[tuple[bytes, bytes]],
        exchange: Exchange,
    ) -> None:
        """Send ``upstream_request`` (its body and extra headers) to one backend and answer the client;
        ``UpstreamError`` before the first byte fails over."""
        resp = await backend.upstream.request("POST", leg.path, *upstream_request)
        exchange.usage_api = leg.usage_api
        complete = False  # the whole answer was read, though the upstream may not have ended its body
        try:
            if resp.status >= 500 or resp.status in _FAILOVER_STATUSES:
                raise _status_error(backend, resp)
            if stream and resp.status == 200 and resp.content_type.startswith("text/event-stream"):
                content_type = resp.content_type if leg.translation is None else _SSE_CONTENT_TYPE
                headers = [(b"content-type", content_type.encode("latin-1")), *wire.STREAM_HEADERS, *headers]
                complete = await self._relay_stream(
                    send, endpoint, leg, backend, ticket, resp, headers, strip_usage, exchange
                )
                return
            payload = await resp.read()
            if stream and resp.status == 200:
                # The upstream ignored stream=true and answered whole: give the client the stream it asked
                # for (relayed as it is, the SDK would see an empty stream and no error).
                events = self._whole_as_stream(endpoint, leg, payload, strip_usage)
                if events is None:
                    message = (
                        f"backend {backend.name} answered a stream request whole, and not with an answer"
                    )
                    raise UpstreamStreamBroken(message)
                exchange.answer = payload  # metered from its usage, exactly
                payload, headers = events, [*wire.SSE_HEADERS, *wire.STREAM_HEADERS, *headers]
            elif leg.translation is None:
                if resp.status == 200:
                    exchange.answer = payload
                    if endpoint is RESPONSES:
                        self._remember(payload, exchange, backend)
                headers = [(b"content-type", resp.content_type.encode("latin-1")), *headers]
            else:
                payload = self._translated_whole(
                    endpoint, leg.translation, backend, resp.status, payload, exchange
                )
                headers = [*wire.JSON_HEADERS, *headers]
            exchange.status, exchange.ttfb_s = resp.status, self.clock() - exchange.started_s
            await wire.send_bytes(send, resp.status, payload, headers)
        finally:
            if complete:
                # Not closed: an upstream whose end of body is a moment behind its [DONE] keeps its
                # connection pooled (closing would cost a reconnect, a TLS handshake to a remote one).
                resp.release_when_done(_AFTER_DONE_GRACE_S)
            else:
                resp.close()
        backend.record_success(ticket)

    def _remember(self, answer: bytes, exchange: Exchange, backend: Backend) -> None:
        """Note the backend that created a response (its own store keeps it for ``GET``)."""
        found = response_id(answer)
        if found is not None and exchange.request.get("store") is not False:
            self.response_owners.remember(found, exchange.tenant, backend.name)

    @staticmethod
    def _whole_as_stream(endpoint: Endpoint, leg: Leg, payload: bytes, strip_usage: bool) -> bytes | None:
        """The stream the client asked for, made of a whole answer (None: it is not one we can stream)."""
        if leg.translation is not None:
            events = whole_answer_as_stream(payload, chat=True, include_usage=True)
            return None if events is None else leg.translation.converter().feed(events)
        if endpoint.name == "messages":
            return message_as_stream(payload)
        if endpoint.name == "responses":
            return response_as_stream(payload)
        if not endpoint.asks_usage:  # embeddings do not stream
            return None
        return whole_answer_as_stream(payload, chat=endpoint.name == "chat", include_usage=not strip_usage)

    @staticmethod
    def _translated_whole(
        endpoint: Endpoint, translation: Translation, backend: Backend, status: int, payload: bytes,
        exchange: Exchange,
    ) -> bytes:  # fmt: skip
        """A chat backend's whole answer in the client's API: a completion translated back, an error in the
        client's API's error shape."""
        if status != 200:
            return relayed_error(endpoint, True, status, payload)
        converted = translation.whole(payload)
        if converted is None:
            raise UpstreamStreamBroken(f"backend {backend.name} answered 200 without a chat completion")
        exchange.answer = payload  # metered from the chat answer the backend sent
        return converted

    async def _relay_stream(
        self,
        send: wire.Send,
        endpoint: Endpoint,
        leg: Leg,
        backend: Backend,
        ticket: Ticket,
        resp: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        strip_usage: bool,
        exchange: Exchange,
    ) -> bool:
        """Relay an upstream's stream to the client (translated on the way, if the leg is); True if it ended
        as a whole answer (``data: [DONE]``, ``response.completed``, ``message_stop``)."""
        tap = leg.new_tap(strip_usage=strip_usage)
        convert = leg.converter.feed if leg.converter is not None else None
        # Wait for the first whole event before answering: until then a failure can still fail over.
        first = b""
        while not first:
            chunk = await resp.next_chunk()
            if not chunk:
                raise UpstreamStreamBroken("the upstream closed the stream before sending anything")
            first = tap.feed(chunk)
            if convert is not None and first:
                first = convert(first)
        exchange.tap, exchange.status = tap, 200
        exchange.ttfb_s = self.clock() - exchange.started_s
        if endpoint is RESPONSES and convert is None:
            self._remember(first, exchange, backend)  # the response.created event names it
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last = first
        try:
            if not tap.done:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                last = b""
                # Up to the last event: the answer is whole then, so it ends now rather than at the upstream's
                # end of body. Clients hang up right after it; an upstream that had not ended its body yet
                # made that look like a client leaving mid-stream (499). The caller lets the upstream finish.
                while chunk := await resp.next_chunk():
                    out = tap.feed(chunk)
                    if convert is not None and out:
                        out = convert(out)
                    if tap.done:
                        last = out
                        break
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamError as exc:
            # Bytes went out: no retry. Say so inside the stream, where the client's SDK raises it.
            backend.record_failure(self.clock(), ticket, exc.message)
            exchange.status = exc.status_code
            tap.rest()  # a partial event would corrupt the error event after it: drop it
            await send({"type": "http.response.body", "body": stream_error_event(endpoint, exc)})
            return False
        backend.record_success(ticket)
        rest = tap.rest() if convert is None else b""  # a converter takes whole events only
        await send({"type": "http.response.body", "body": last + rest})
        return tap.done


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _asked_for_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _status_error(backend: Backend, resp: UpstreamResponse) -> UpstreamStatusError:
    if resp.status in (401, 403):
        message = f"backend {backend.name} refused tokenyard's credentials ({resp.status})"
    else:
        message = f"backend {backend.name} answered {resp.status}"
    return UpstreamStatusError(message, status=resp.status, retry_after_s=resp.retry_after_s)


def _give_up(exchange: Exchange, choice: NoChoice) -> TokenyardError:
    """The error for a request no deployment could serve: the last upstream failure, if there was one."""
    model, last = exchange.model, exchange.last_error
    upstream_429 = isinstance(last, UpstreamStatusError) and last.status == 429
    if upstream_429 or (last is None and choice.rate_limited):
        # Held out by their Retry-After (this request's 429s or earlier ones): the soonest one back.
        waits = [choice.retry_after_s] if choice.rate_limited else []
        if isinstance(last, UpstreamStatusError) and last.retry_after_s:
            waits.append(last.retry_after_s)
        return CapacityExhausted(
            f"Every deployment of `{model}` is rate-limited upstream; retry shortly.",
            retry_after_s=min(waits, default=choice.retry_after_s),
        )
    if isinstance(last, UpstreamStatusError):
        return UpstreamStatusError(
            f"No deployment of `{model}` could answer; last: {last.message}", status=last.status
        )
    if last is not None:
        return type(last)(f"No deployment of `{model}` could answer; last: {last.message}")
    if choice.cooling:
        return NoBackendAvailable(
            f"Every deployment of `{model}` is cooling down after failures.",
            retry_after_s=choice.retry_after_s,
        )
    return CapacityExhausted(
        f"Every deployment of `{model}` is at capacity; retry shortly.", retry_after_s=1.0
    )


def _body_for(backend: Backend, body: bytes, exchange: Exchange, ask_for_usage: bool) -> bytes:
    """The body for one backend: the client's own bytes, with the model name or usage option spliced in
    where they must change (never re-serialised whole: the rest stays byte for byte what the client sent)."""
    upstream_model = backend.config.model
    rename = upstream_model is not None and upstream_model != exchange.model
    request = exchange.request
    options = request.get("stream_options")
    ask_for_usage = ask_for_usage and (options is None or isinstance(options, dict))
    if ask_for_usage:
        span = request_body.member_span(body, "stream_options") if options else None
        if span is None:
            body = request_body.with_member(
                body, request, "stream_options", {**(options or {}), "include_usage": True}
            )
        else:  # set it inside the client's own options
            _, start, end = span
            assert isinstance(options, dict)
            inner = request_body.with_member(body[start:end], options, "include_usage", True)
            body = body[:start] + inner + body[end:]
    if rename:
        body = request_body.with_member(body, request, "model", upstream_model)
    return body


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


def _attempt(exchange: Exchange, backend: Backend) -> Attempt | None:
    """The span of a call to ``backend`` (counted in the exchange's attempts), if the request is traced."""
    trace = exchange.trace
    if trace is None:
        return None
    upstream_model = backend.config.model or exchange.model
    return trace.attempt(
        backend.name, backend.config.kind, upstream_model, exchange.attempts, backend.config.provider
    )


def _upstream_headers(
    backend: Backend, exchange: Exchange, attempt: Attempt | None
) -> tuple[tuple[str, str], ...]:
    """Headers for the upstream besides its own: the trace context, and the caller's identity where the
    backend takes it. None of the client's headers is forwarded, so a client cannot forge these."""
    headers: tuple[tuple[str, str], ...] = ()
    if attempt is not None:
        headers = ((TRACEPARENT.decode(), attempt.traceparent),)
    if backend.identity is not None:
        tenant, key_id = backend.identity
        headers += ((tenant, _header_value(exchange.tenant)), (key_id, _header_value(exchange.key_id)))
    return headers


def _header_value(text: str) -> str:
    """``text`` as a header value: as it is when printable ASCII, else percent-encoded (UTF-8)."""
    return text if text.isascii() and text.isprintable() else quote(text, safe="")


def _without_async_signals(body: bytes, obj: dict[str, Any], decision: Decision | None) -> bytes:
    """The body without the members that asked for the async track (``obj`` loses them too)."""
    if decision is None:  # the async track is off: nothing asked for it
        return body
    if obj.get("service_tier") in ASYNC_TIERS:
        # tokenyard's signal, not the upstream's ("batch" is no OpenAI tier): not forwarded.
        body = request_body.without_member(body, obj, "service_tier")
        del obj["service_tier"]
    if decision.background:
        # OpenAI's own "nobody waits": tokenyard runs it on the async track, the upstream in the
        # foreground (the job's answer is the whole response).
        body = request_body.without_member(body, obj, "background")
        del obj["background"]
    return body


def _refused(trace: Trace | None, status: int, error: str) -> None:
    if trace is not None:
        trace.refused(status, error)


def _finish(trace: Trace | None, exchange: Exchange, record: UsageRecord) -> None:
    if trace is None:
        return
    backend = exchange.backend
    answered_by = (backend.config.model or exchange.model) if backend is not None else ""
    provider = backend.config.provider if backend is not None else "openai"
    trace.finish(
        record,
        key_id=exchange.key_id,
        attempts=exchange.attempts,
        response_model=answered_by,
        provider=provider,
    )
