"""The ASGI application, assembled in one place from a validated config.

Start-up (the ASGI lifespan) opens the backends (and any simulators the config asks for), the meter store
and the meter's flush task; shutdown marks the proxy unready, flushes the meter and closes everything.
Requests are dispatched by a dict lookup on the path: there are few routes, and the proxy routes are the
hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from tokenyard.adapters.webhook import WebhookSender
from tokenyard.advisor.live import AdvisorLoop
from tokenyard.config import TokenyardConfig, load_config
from tokenyard.edge.cluster import Membership
from tokenyard.errors import ConfigError, MethodNotAllowed, RouteNotFound, TokenyardError
from tokenyard.meter.meter import Meter
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.store import MeterStore
from tokenyard.meter.stores import open_configured_store, redacted
from tokenyard.proxy import batch_jobs
from tokenyard.proxy.auth import KeyRing
from tokenyard.proxy.backends import Backend, open_backends
from tokenyard.proxy.handler import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, Proxy
from tokenyard.queue.callbacks import CallbackSender
from tokenyard.queue.dispatcher import Dispatcher
from tokenyard.queue.front import JOBS_PATH, AsyncFront
from tokenyard.queue.model import Job, JobResult
from tokenyard.queue.provider_batches import ProviderBatches
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.queue.store import JobStore
from tokenyard.queue.stores import open_job_store
from tokenyard.telemetry.admin import AdminApi
from tokenyard.telemetry.metrics import TokenyardCollector, exposition
from tokenyard.wire import asgi as wire
from tokenyard.wire import openai
from tokenyard.wire.ids import new_replica_id

if TYPE_CHECKING:  # built on first use: most deployments never serve either
    from tokenyard.queue.batch_api import BatchApi
    from tokenyard.telemetry.dashboard import Dashboard

log = logging.getLogger("tokenyard")

Handler = Callable[[wire.Scope, wire.Receive, wire.Send], Awaitable[None]]

# Sections a running proxy cannot swap (its backends, their clients and state; its store): a reload that
# changes them says so, and they wait for a restart.
_RESTART_ONLY = ("backends", "models", "meter", "routing")
_MODEL_CREATED = 1_700_000_000  # a fixed "created" for configured models: they have no creation time
_METER_CLOSE_TIMEOUT_S = 10.0
# CPython collects its young generation every 700 net new container objects. A busy proxy makes those
# fast (pending meter records, in-flight requests), so at c=64 the collector took about 12 % of the
# proxy's CPU (0.73 s of some 6 s of load, timed with gc.callbacks). After start-up its objects are frozen
# out of every later pass and the young generation waits for 10,000: the collector's time fell to ~0.
_GC_YOUNG_THRESHOLD = 10_000


class TokenyardApp:
    """tokenyard's ASGI app: the OpenAI-compatible endpoints, admin, metrics, health, and the lifespan."""

    def __init__(
        self,
        config: TokenyardConfig,
        *,
        config_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read on reload (None: the built-in quick start)
        self.clock = clock
        self.wall = wall
        self.keys = KeyRing(config.keys)
        self.replica = new_replica_id()  # this replica's one name, for every part that needs one
        self.ready = False
        self.backends: dict[str, Backend] = {}
        self.proxy: Proxy | None = None
        self.dispatcher: Dispatcher | None = None
        self.jobs: JobStore | None = None  # the async track's job store, when it runs
        self.batch_api: BatchApi | None = None  # built at the first Batch API request (most never see one)
        self.membership: Membership | None = None
        self.dashboard: Dashboard | None = None  # built at the first /dashboard request
        self.meter: Meter | None = None
        self.admin: AdminApi | None = None
        self.rejected: Counter[int] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self._stack: contextlib.AsyncExitStack | None = None
        self._routes: dict[str, tuple[str, Handler]] = {
            CHAT.api_path: ("POST", self._inference(CHAT)),
            COMPLETIONS.api_path: ("POST", self._inference(COMPLETIONS)),
            EMBEDDINGS.api_path: ("POST", self._inference(EMBEDDINGS)),
            "/v1/models": ("GET", self._list_models),
            "/metrics": ("GET", self._metrics),
            "/admin/usage": ("GET", self._on("admin", "usage")),
            "/admin/backends": ("GET", self._on("admin", "backends_state")),
            "/admin/advice": ("GET", self._on("admin", "advice")),
            "/admin/queue": ("GET", self._on("admin", "queue")),
            "/admin/reload": ("POST", self._on("admin", "reload_config")),
            "/dashboard": ("GET", self._on("dashboard", "page")),
            "/dashboard/login": ("POST", self._on("dashboard", "login")),
            "/health/live": ("GET", self._live),
            "/health/ready": ("GET", self._ready),
        }

    async def __call__(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def _match(self, method: str, path: str) -> Handler:
        route = self._routes.get(path)
        if route is None:
            if path.startswith("/v1/models/"):
                route = ("GET", self._retrieve_model)
            elif path.startswith("/admin/backends/") and path.endswith("/replicas"):
                route = ("PUT", self._on("admin", "replicas"))
            elif path.startswith("/dashboard/static/"):
                route = ("GET", self._on("dashboard", "asset"))
            elif path.startswith(JOBS_PATH):
                route = ("GET", self._async_job)
            elif path.startswith(("/v1/files", "/v1/batches")):
                route = (method, self._batch_api_handler)  # it checks methods per sub-path itself
            else:
                raise RouteNotFound(f"Unknown request URL: {method} {path}.")
        if method != route[0]:
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {route[0]}.")
        return route[1]

    async def _http(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        try:
            await self._match(scope["method"], scope["path"])(scope, receive, send)
        except TokenyardError as exc:
            await wire.send_error(send, exc)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            with contextlib.suppress(RuntimeError):  # the response may have started already
                await wire.send_bytes(send, 500, openai.error_body("Internal server error.", "server_error"))

    def _inference(self, endpoint: Endpoint) -> Handler:
        async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
            assert self.proxy is not None, "requests arrive only after start-up"
            await self.proxy.handle(scope, receive, send, endpoint)

        return handle

    def _on(self, part: str, name: str) -> Handler:
        """A route to method ``name`` of a part built at start-up (``admin``) or at its first request
        (``dashboard``)."""

        async def handle(scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
            if part == "dashboard" and self.dashboard is None and self.admin is not None:
                from tokenyard.telemetry.dashboard import Dashboard

                self.dashboard = Dashboard(self.admin)
            owner = getattr(self, part)
            assert owner is not None, "requests arrive only after start-up"
            handler: Handler = getattr(owner, name)
            await handler(scope, receive, send)

        return handle

    # -- models ---------------------------------------------------------------------------------------

    async def _list_models(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        principal = self.keys.authenticate(wire.header(scope, b"authorization"))
        data = [_model_object(name) for name in self.config.models if principal.may_use(name)]
        await wire.send_json(send, 200, openai.model_list(data))

    async def _retrieve_model(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        assert self.proxy is not None
        principal = self.keys.authenticate(wire.header(scope, b"authorization"))
        name = scope["path"].removeprefix("/v1/models/")
        self.proxy.deployments(principal, name)  # raises ModelNotFound
        await wire.send_json(send, 200, _model_object(name))

    async def _batch_api_handler(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        assert self.proxy is not None, "requests arrive only after start-up"
        principal = self.proxy.authenticate(scope)
        if self.batch_api is None:
            if self.jobs is None or self.dispatcher is None:
                raise RouteNotFound("The Batch API needs the async track: a meter store (meter.store).")
            from tokenyard.queue.batch_api import BatchApi

            proxy = self.proxy
            self.batch_api = BatchApi(
                self.jobs,
                may_use=lambda who, model: who.may_use(model) and model in proxy.models,
                wake=self.dispatcher.wake,
                max_body_bytes=proxy.max_body_bytes,  # the start-up limit, as the proxy's own
                wall=self.wall,
            )
        await self.batch_api.handle(scope, receive, send, principal)

    async def _async_job(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        assert self.proxy is not None, "requests arrive only after start-up"
        principal = self.proxy.authenticate(scope)
        if self.proxy.front is None:
            raise RouteNotFound("The async track is off: it needs a meter store (meter.store).")
        await self.proxy.front.status(scope, send, principal)

    # -- telemetry and health -------------------------------------------------------------------------

    def _advice(self) -> dict[str, object] | None:
        """The latest advice document, for the gauges (None before the first evaluation or without one)."""
        advisor = self.admin.advisor if self.admin else None
        return advisor.latest if advisor else None

    async def _metrics(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if not self.config.server.public_metrics:
            assert self.admin is not None, "requests arrive only after start-up"
            self.admin.authorize(scope)
        body = exposition(self.registry)
        await wire.send_bytes(send, 200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])

    async def _live(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        await wire.send_json(send, 200, {"status": "live"})

    async def _ready(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        if self.ready:
            await wire.send_json(send, 200, {"status": "ready"})
        else:
            await wire.send_json(send, 503, {"status": "not ready"})

    # -- lifecycle ------------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the backends and the meter, then accept traffic."""
        self._stack = stack = contextlib.AsyncExitStack()
        replica = self.replica
        self.backends = await stack.enter_async_context(open_backends(self.config))
        meter_config = self.config.meter
        store = None
        if meter_config.enabled:
            store = open_configured_store(meter_config)
            log.info(
                "meter: %s, flushed every %g s", redacted(meter_config.store), meter_config.flush_interval_s
            )
        else:
            log.warning("meter: off (meter.store: off); usage is counted for /metrics only")
        self.meter = meter = Meter(meter_config, self.config.backends, store, wall=self.wall)
        stack.push_async_callback(meter.close, _METER_CLOSE_TIMEOUT_S)
        flusher = asyncio.create_task(meter.run(), name="meter flush")
        stack.push_async_callback(_cancel, flusher)
        if store is not None:
            membership = Membership(store, lambda: self.backends, member=replica, on_reload=self._reload_here)
            stack.push_async_callback(_cancel, asyncio.create_task(membership.run(), name="membership"))
            self.membership = membership
        self.admin = AdminApi(self.config, meter, self.backends, self.keys, replica=replica, wall=self.wall)
        self.admin.reload = self.reload_everywhere
        await self.admin.agree_session_secret()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_here())
            )
        if store is not None and self.config.advisor.enabled:
            self.admin.advisor = advisor = AdvisorLoop(store, self.config, replica=replica, wall=self.wall)
            # Pushed after the meter's callbacks, so it stops before the meter closes the store.
            stack.push_async_callback(_cancel, asyncio.create_task(advisor.run(), name="advisor"))
        self.registry.register(
            TokenyardCollector(
                meter, lambda: self.backends, self.rejected, self._advice, lambda: self.dispatcher
            )
        )
        models = {
            name: [self.backends[b] for b in model.deployments] for name, model in self.config.models.items()
        }
        track = self.config.async_track if store is not None and self.config.async_track.enabled else None
        self.proxy = Proxy(
            keys=self.keys,
            models=models,
            meter=meter,
            rejected=self.rejected,
            max_body_bytes=self.config.server.max_body_bytes,
            clock=self.clock,
            wall=self.wall,
            async_track=track,
        )
        if track is not None and store is not None:
            await self._start_async_track(stack, store, meter)
        _settle_gc()
        self.ready = True

    async def _start_async_track(
        self, stack: contextlib.AsyncExitStack, locks: MeterStore, meter: Meter
    ) -> None:
        """The job queue (beside the meter's data), the door for async requests, and the dispatcher."""
        proxy = self.proxy
        assert proxy is not None
        backends = self.backends
        self.jobs = jobs = open_job_store(self.config.meter)
        stack.push_async_callback(jobs.aclose)

        def settings() -> AsyncTrackConfig:  # read live: a reload swaps them
            return self.config.async_track

        async def run_now(job: Job) -> tuple[JobResult, UsageRecord]:
            return await proxy.execute(job, path="realtime")

        async def run(job: Job, path: str, only: list[str] | None) -> tuple[JobResult, UsageRecord]:
            chosen = None if only is None else [backends[name] for name in only]
            return await proxy.execute(job, path=path, only=chosen)

        def usage(job: Job, backend: str, request_id: str, status: int, body: bytes) -> UsageRecord:
            return batch_jobs.batch_usage(
                job, backends[backend], request_id, status, body, clock=self.clock, wall=self.wall
            )

        new_work = asyncio.Event()  # the front and the Batch API set it; the dispatcher ticks at once
        proxy.front = front = AsyncFront(
            jobs,
            self.config.async_track,
            wall=self.wall,
            run_now=run_now,
            record=meter.record,
            wake=new_work.set,
        )
        stack.push_async_callback(front.aclose)  # before the job store closes
        webhook = WebhookSender()
        stack.push_async_callback(webhook.aclose)
        batches = ProviderBatches(
            jobs,
            backends,
            {name: model.batch for name, model in self.config.models.items() if model.batch},
            settings=settings,
            body_for=lambda job, backend: batch_jobs.body_for_batch(job, backends[backend]),
            usage=usage,
            wall=self.wall,
            clock=self.clock,
        )
        models = proxy.models
        self.dispatcher = dispatcher = Dispatcher(
            store=jobs,
            locks=locks,
            front=front,
            settings=settings,
            run=run,
            deployments=lambda model: models.get(model, []),
            batches=batches,
            callbacks=CallbackSender(webhook, lambda: settings().callbacks, wall=self.wall),
            new_work=new_work,
            clock=self.clock,
            replica=self.replica,
            wall=self.wall,
        )
        assert self.admin is not None
        self.admin.dispatcher = dispatcher
        # Pushed after the stores' callbacks, so it stops before they close.
        stack.push_async_callback(_cancel, asyncio.create_task(dispatcher.run(), name="dispatcher"))

    # -- reloading the config ---------------------------------------------------------------------------

    async def reload_everywhere(self) -> dict[str, Any]:
        """Re-read the config file here, and tell every replica on the store to do the same."""
        result = await self._reload_here()
        if result["reloaded"] and self.membership is not None:
            await self.membership.announce_reload()
        return result

    async def _reload_here(self) -> dict[str, Any]:
        """Re-read this replica's config file and apply what may change while running (SIGHUP does this)."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.warning("reload refused, the config is invalid:\n%s", exc)
            return {"reloaded": False, "problems": [f"{p}: {m}" if p else m for p, m in exc.problems]}
        needs_restart = self._apply(new)
        if self.admin is not None:  # a new admin key needs a new session secret, agreed with the replicas
            await self.admin.agree_session_secret()
        log.info(
            "config reloaded%s", f"; needs a restart for: {', '.join(needs_restart)}" if needs_restart else ""
        )
        return {"reloaded": True, "needs_restart": needs_restart}

    def _apply(self, new: TokenyardConfig) -> list[str]:
        """Take keys, the admin key, async_track and advisor settings; name what needs a restart instead."""
        old = self.config
        needs_restart = [name for name in _RESTART_ONLY if getattr(new, name) != getattr(old, name)]
        # The listener stays where it is (the command line may have moved it from the file's).
        kept = {name: getattr(old, name) for name in _RESTART_ONLY}
        server = new.server.model_copy(update={"host": old.server.host, "port": old.server.port})
        self.config = config = new.model_copy(update={**kept, "server": server})
        self.keys = KeyRing(config.keys)
        if self.proxy is not None:
            self.proxy.keys = self.keys
            self.proxy.use_async_track(config.async_track if self.proxy.front is not None else None)
        if self.admin is not None:
            self.admin.use(config, self.keys)
            if self.admin.advisor is not None:
                self.admin.advisor.config = config
        return needs_restart

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


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _model_object(name: str) -> dict[str, object]:
    return openai.model_object(name, _MODEL_CREATED, "tokenyard")
