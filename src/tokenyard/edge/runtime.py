"""The running service, built once at start-up from a validated config.

``start_runtime`` opens the backends, the tracing (with ``telemetry.otlp``), the meter store and the
meter's flush task, the advisor, the measured envelope's keeper, the budgets' gate and watch, the async
track's door (job store and front), the one proxy (and the GPU plan's reader, which orders its deployments
per request shape), the rest of the async track (dispatcher, with provider batches and callbacks, and the
Batch API), the capacity planner (desired replicas, the actuator), the admin API and the membership, in that
order, each handed the parts it needs as it is made. Every background task and store is pushed on the
caller's exit stack, so shutdown undoes them in reverse:

1. the membership beat stops (this replica leaves the store's count);
2. the capacity planner stops (handing its lead on), then its webhook client closes;
3. the dispatcher stops, then the webhook client closes (the dispatcher's callbacks use it);
4. the front gives its unstored answers a last try, then the job store closes;
5. the budget watch stops, gives its alerts under way a moment, then its webhook client closes;
6. the envelope keeper merges once more and stops, then the advisor stops;
7. the engine-metrics scraper stops and its client closes; the meter's flush task stops, then the meter
   flushes what it holds and closes its store;
8. the span shipper exports what is left (traces, when telemetry.otlp is set);
9. the backends close (and then the app's upstreams: the quick start's simulators).

What it returns is frozen: a request never finds a part missing or half wired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from tokenyard.adapters.engine_metrics import EngineMetricsClient
from tokenyard.adapters.webhook import WebhookSender
from tokenyard.advisor.live import AdvisorLoop
from tokenyard.capacity.envelope_keeper import EnvelopeKeeper
from tokenyard.capacity.planner import CapacityPlanner
from tokenyard.capacity.scraper import EngineScraper, OnSnapshot
from tokenyard.capacity.truth import engine_metering
from tokenyard.config import TokenyardConfig
from tokenyard.edge.capacity import (
    envelope_source,
    learned_limit,
    learned_limits,
    replicas_applier,
    start_capacity,
)
from tokenyard.edge.cluster import Membership
from tokenyard.edge.plan import PlanReader, routed_by_plan
from tokenyard.edge.reload import Reloader
from tokenyard.errors import ConfigError, StoreError
from tokenyard.live import LiveConfig
from tokenyard.meter.meter import Meter
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.open_store import open_configured_store, redacted
from tokenyard.meter.store import MeterStore
from tokenyard.proxy import batch_jobs
from tokenyard.proxy.backends import Backend, open_backends
from tokenyard.proxy.handler import Proxy
from tokenyard.proxy.spend import DedicatedRates, SpendGate
from tokenyard.proxy.stored_responses import StoredResponses
from tokenyard.queue.batch_api import BatchApi
from tokenyard.queue.callbacks import CallbackSender
from tokenyard.queue.dispatcher import Dispatcher, TraceJob
from tokenyard.queue.front import AsyncFront, RunNow
from tokenyard.queue.message_batches import MessageBatchApi
from tokenyard.queue.model import Job, JobResult
from tokenyard.queue.open_store import open_job_store
from tokenyard.queue.provider_batches import ProviderBatches
from tokenyard.queue.store import JobStore
from tokenyard.stores.protocols import Coordination, KeyStore
from tokenyard.telemetry.admin import AdminApi
from tokenyard.telemetry.budget_watch import BudgetsApi, BudgetWatch
from tokenyard.telemetry.dashboard import Dashboard
from tokenyard.telemetry.keys_api import KeysApi, KeySync
from tokenyard.telemetry.metrics import TokenyardCollector
from tokenyard.tracing.trace import Tracer
from tokenyard.wire.ids import new_replica_id

log = logging.getLogger("tokenyard")

_METER_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Door:
    """How async work comes in: the job store, the front that queues it, and the event that wakes the
    dispatcher when the front or the Batch API has put some there."""

    jobs: JobStore
    front: AsyncFront
    new_work: asyncio.Event


@dataclass(frozen=True, slots=True)
class AsyncTrack:
    """The async track's parts the routes serve: they run together, or (without a meter store) not at all."""

    front: AsyncFront
    dispatcher: Dispatcher  # the routes do not read it: tests/edge/test_reload.py checks a reload reaches it
    batch_api: BatchApi
    message_batches: MessageBatchApi  # Anthropic's Message Batches, on the same jobs


@dataclass(frozen=True, slots=True)
class Runtime:
    """Every part the routes serve, wired once."""

    live: LiveConfig
    proxy: Proxy
    admin: AdminApi
    keys: KeysApi  # /admin/keys
    budgets: BudgetsApi  # /admin/budgets
    dashboard: Dashboard
    track: AsyncTrack | None  # None: no meter store or async_track.enabled false (its routes say so)
    registry: CollectorRegistry
    capacity: CapacityPlanner | None  # None: no meter store (desired replicas read its aggregates)
    reload_here: Callable[[], Awaitable[dict[str, Any]]]  # SIGHUP's; tests reload through it
    reload_everywhere: Callable[[], Awaitable[dict[str, Any]]]  # here, then every replica on the store
    responses: StoredResponses  # /v1/responses/{id}: background ones from the job store, stored ones relayed
    plan: PlanReader | None = None  # the GPU plan followed here (None: no meter store, so no plan to read)


async def start_runtime(
    stack: contextlib.AsyncExitStack,
    config: TokenyardConfig,
    *,
    config_path: str | None,
    base_urls: Mapping[str, str],
    clock: Callable[[], float],
    wall: Callable[[], float],
) -> Runtime:
    """Open and start every part of the service; ``stack`` closes them (in reverse) at shutdown."""
    replica = new_replica_id()  # this replica's one name: lock owner, queue consumer, member
    backends = await stack.enter_async_context(open_backends(config, base_urls))
    tracing = _open_tracing(stack, config, wall)  # closed after everything that makes spans has stopped
    meter_config = config.meter
    store = None
    if meter_config.enabled:
        store = open_configured_store(meter_config)
        log.info("meter: %s, flushed every %g s", redacted(meter_config.store), meter_config.flush_interval_s)
    else:
        log.warning("meter: off (meter.store: off); usage is counted for /metrics only")
    meter = Meter(meter_config, config.backends, store, wall=wall)
    stack.push_async_callback(meter.close, _METER_CLOSE_TIMEOUT_S)
    stack.push_async_callback(_cancel, asyncio.create_task(meter.run(), name="meter flush"))
    # Pushed after the meter's callbacks: it stops before the meter closes. Every good scrape is metered
    # too: what the engine did per minute, beside what came through here.
    _start_engine_scraper(stack, backends, clock, wall, on_snapshot=engine_metering(meter, wall))
    track_runs = store is not None and config.async_track.enabled
    live = LiveConfig(config, async_track_runs=track_runs, wall=wall)
    key_sync = await _start_key_sync(stack, store, live) if store is not None else None
    advisor = None
    if store is not None and config.advisor.enabled:
        advisor = AdvisorLoop(store, lambda: live.config, replica=replica, wall=wall)
        # Pushed after the meter's callbacks, so it stops before the meter closes the store.
        stack.push_async_callback(_cancel, asyncio.create_task(advisor.run(), name="advisor"))
    envelope = None
    recorders = {name: b.envelope for name, b in backends.items() if b.envelope is not None}
    if store is not None and recorders:
        # The measured envelope, merged across replicas; stops (merging once more) before the store closes.
        # Each merge records the SLA limits that moved: the knee's evidence while the limiter holds the
        # load below it (capacity/envelope.py).
        envelope = EnvelopeKeeper(
            store,
            recorders,
            lambda: live.config.capacity.envelope,
            replica=replica,
            wall=wall,
            learned_limits=learned_limits(backends),
        )
        stack.push_async_callback(_cancel, asyncio.create_task(envelope.run(), name="envelope"))

    # The front runs a job in real time through the proxy, which submits through the front: this closure
    # reads ``proxy`` only once requests flow, when both exist.
    async def run_now(job: Job) -> tuple[JobResult, UsageRecord]:
        return await proxy.execute(job, path="realtime")

    spend = _start_spend(stack, store, live, backends, wall)
    watch = _start_budget_watch(stack, store, live, replica, wall)
    door = None
    if store is not None and track_runs:
        door = _open_door(stack, live, meter, spend, run_now, wall)
    rejected: Counter[int] = Counter()
    models = {name: [backends[b] for b in model.deployments] for name, model in config.models.items()}
    proxy = Proxy(
        live=live,
        models=models,
        meter=meter,
        rejected=rejected,
        max_body_bytes=config.server.max_body_bytes,
        clock=clock,
        wall=wall,
        front=door.front if door else None,
        tracer=tracing.tracer if tracing else None,
        objects=door.jobs if door else None,
        spend=spend if store is not None else None,
    )
    plan = None
    if store is not None:
        plan = PlanReader(store, proxy, models, routed_by_plan(config))
        stack.push_async_callback(_cancel, asyncio.create_task(plan.run(), name="gpu plan"))
    track = None
    if store is not None and door is not None:
        track = _start_async_track(
            stack, door, proxy, live, store, backends, models, replica, clock, wall,
            trace_job=tracing.job_answered if tracing else None,
        )  # fmt: skip
    dispatcher = track.dispatcher if track else None
    planner = None
    if store is not None:
        planner = start_capacity(
            stack,
            live,
            store,
            backends,
            meter,
            advisor,
            replica=replica,
            wall=wall,
            measured=envelope_source(envelope, backends) if envelope is not None else None,
            learned_limit=learned_limit(backends),
        )
    admin = AdminApi(
        live,
        meter,
        backends,
        replica=replica,
        advisor=advisor,
        dispatcher=dispatcher,
        wall=wall,
        envelope=envelope,
        clock=clock,
    )
    keys = KeysApi(admin.authorize, live, key_sync, wall=wall)
    reloader = Reloader(config_path, live, agree_session_secret=admin.agree_session_secret)
    reload_here = reloader.here if plan is None else plan.after(reloader.here)

    announce = _nothing
    if store is not None:
        membership = Membership(
            store,
            backends,
            member=replica,
            on_reload=reload_here,
            apply_replicas=replicas_applier(backends, meter),
            on_members=lambda live_count: setattr(proxy.key_rates, "cluster_size", live_count),
        )
        stack.push_async_callback(_cancel, asyncio.create_task(membership.run(), name="membership"))
        announce = membership.announce_reload
    await admin.agree_session_secret()

    async def reload_everywhere() -> dict[str, Any]:
        result = await reload_here()
        if result["reloaded"]:
            await announce()
        return result

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(reload_here())
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        TokenyardCollector(
            meter,
            backends,
            rejected,
            advisor=advisor,
            dispatcher=dispatcher,
            capacity=planner,
            clock=clock,
            plans=plan.in_force if plan is not None else None,
            spans=tracing.spans if tracing else None,
            budgets=lambda: watch.latest,
        )
    )
    return Runtime(
        live=live,
        proxy=proxy,
        admin=admin,
        keys=keys,
        budgets=BudgetsApi(admin.authorize, watch),
        dashboard=Dashboard(admin),
        track=track,
        registry=registry,
        capacity=planner,
        reload_here=reload_here,
        reload_everywhere=reload_everywhere,
        responses=StoredResponses(
            proxy.response_owners,
            backends,
            door.jobs if door else None,
            wall,
            let_go=proxy.spend.let_go if proxy.spend is not None else None,
        ),
        plan=plan,
    )


def _start_spend(
    stack: contextlib.AsyncExitStack,
    store: MeterStore | None,
    live: LiveConfig,
    backends: dict[str, Backend],
    wall: Callable[[], float],
) -> SpendGate:
    """Budgets: counted in the meter's store (none without one), dedicated backends at their GPU cost per
    token, read from it every minute."""
    rates = DedicatedRates(store, backends, wall=wall)
    spend = SpendGate(store, live, backends, rates, wall=wall)
    stack.push_async_callback(spend.aclose)  # after the door's front and the proxy's last requests
    if store is not None and rates.dedicated:
        stack.push_async_callback(_cancel, asyncio.create_task(rates.run(), name="dedicated rates"))
    return spend


def _start_budget_watch(
    stack: contextlib.AsyncExitStack,
    store: MeterStore | None,
    live: LiveConfig,
    replica: str,
    wall: Callable[[], float],
) -> BudgetWatch:
    """Every budget's count, read from the store every 15 s off the request path (nothing to read without
    one), and a notice when one reaches a threshold: logged, and POSTed to budgets.alerts.url if set."""
    webhook = WebhookSender()  # opens its session at the first POST: nothing when no alert is ever sent
    stack.push_async_callback(webhook.aclose)  # after the watch's last POSTs (pushed before them)
    watch = BudgetWatch(store, live, webhook, replica=replica, wall=wall)
    stack.push_async_callback(watch.aclose)  # after the loop stops: the POSTs under way get a moment
    if store is not None:
        # Pushed after the meter's callbacks, so it stops before the meter closes the store.
        stack.push_async_callback(_cancel, asyncio.create_task(watch.run(), name="budget watch"))
    return watch


async def _start_key_sync(stack: contextlib.AsyncExitStack, store: KeyStore, live: LiveConfig) -> KeySync:
    """The admin API's keys in force before the first request, and kept in step with the store. A store
    that is away now is retried by the loop; until then only the config file's keys work."""
    key_sync = KeySync(store, live)
    try:
        await key_sync.sync()
    except StoreError as exc:
        log.warning("keys: cannot read the store (%s); the admin API's keys wait for it", exc)
    stack.push_async_callback(_cancel, asyncio.create_task(key_sync.run(), name="key sync"))
    return key_sync


def _open_door(
    stack: contextlib.AsyncExitStack,
    live: LiveConfig,
    meter: Meter,
    spend: SpendGate,
    run_now: RunNow,
    wall: Callable[[], float],
) -> _Door:
    """The job queue (beside the meter's data) and the front that takes async requests into it."""
    jobs = open_job_store(live.config.meter)
    stack.push_async_callback(jobs.aclose)
    new_work = asyncio.Event()  # the front and the Batch API set it; the dispatcher ticks at once

    def billed(job: Job, record: UsageRecord) -> None:
        """A job's answer, metered once, and counted against its key's budgets (drawing its batch's hold
        down, if it is a batch's line)."""
        meter.record(record)
        spend.charge(live.current.keys.named(record.key_id), record, draw_from=job.budget_hold)

    front = AsyncFront(jobs, live.async_track, wall=wall, run_now=run_now, record=billed, wake=new_work.set)
    stack.push_async_callback(front.aclose)  # before the job store closes
    return _Door(jobs, front, new_work)


def _start_async_track(
    stack: contextlib.AsyncExitStack,
    door: _Door,
    proxy: Proxy,
    live: LiveConfig,
    locks: Coordination,
    backends: dict[str, Backend],
    models: dict[str, list[Backend]],
    replica: str,
    clock: Callable[[], float],
    wall: Callable[[], float],
    trace_job: TraceJob | None = None,
) -> AsyncTrack:
    """The dispatcher, with its provider batches and callbacks, running jobs through ``proxy``; and the
    Batch API."""
    config = live.config

    async def run(job: Job, path: str, only: list[str] | None) -> tuple[JobResult, UsageRecord]:
        chosen = None if only is None else [backends[name] for name in only]
        return await proxy.execute(job, path=path, only=chosen)

    def usage(job: Job, backend: str, request_id: str, status: int, body: bytes) -> UsageRecord:
        return batch_jobs.batch_usage(
            job, backends[backend], request_id, status, body, clock=clock, wall=wall
        )

    webhook = WebhookSender()
    stack.push_async_callback(webhook.aclose)  # after the dispatcher stops (pushed before it)
    batches = ProviderBatches(
        door.jobs,
        backends,
        {name: model.batch for name, model in config.models.items() if model.batch},
        settings=live.async_track,
        body_for=lambda job, backend: batch_jobs.body_for_batch(job, backends[backend]),
        usage=usage,
        wall=wall,
        clock=clock,
    )
    dispatcher = Dispatcher(
        store=door.jobs,
        locks=locks,
        front=door.front,
        settings=live.async_track,
        run=run,
        deployments=lambda model: models.get(model, []),
        batches=batches,
        callbacks=CallbackSender(webhook, lambda: live.async_track().callbacks, wall=wall),
        replica=replica,
        new_work=door.new_work,
        clock=clock,
        wall=wall,
        trace_job=trace_job,
    )
    # Pushed after the stores' callbacks, so it stops before they close.
    stack.push_async_callback(_cancel, asyncio.create_task(dispatcher.run(), name="dispatcher"))
    batch_api = BatchApi(
        door.jobs,
        may_use=lambda who, model: who.may_use(model) and model in models,
        wake=door.new_work.set,
        max_body_bytes=config.server.max_body_bytes,  # the start-up limit, as the proxy's own
        wall=wall,
        budgets=proxy.spend,
    )
    message_batches = MessageBatchApi(
        door.jobs,
        may_use=lambda who, model: who.may_use(model) and model in models,
        wake=door.new_work.set,
        wall=wall,
        budgets=proxy.spend,
    )
    return AsyncTrack(door.front, dispatcher, batch_api, message_batches)


@dataclass(frozen=True, slots=True)
class _Tracing:
    """What the service uses of tracing: the request path's tracer, the dispatcher's job spans, and the
    span counts /metrics reports."""

    tracer: Tracer
    job_answered: TraceJob
    spans: Mapping[str, int]


def _open_tracing(
    stack: contextlib.AsyncExitStack, config: TokenyardConfig, wall: Callable[[], float]
) -> _Tracing | None:
    """Traces to ``telemetry.otlp``'s collector, shipped by a background task (None: no telemetry.otlp)."""
    otlp = config.telemetry.otlp
    if otlp is None:
        return None
    try:  # OpenTelemetry is an extra: imported only when traces are configured
        from tokenyard.tracing.export import open_tracing
    except ImportError as exc:
        raise ConfigError(
            [
                (
                    "telemetry.otlp",
                    f"needs OpenTelemetry ({exc.name} is missing): pip install 'tokenyard[otel]'",
                )
            ]
        ) from exc
    tracing, shipper = open_tracing(otlp, wall=wall)
    stack.push_async_callback(shipper.aclose)  # ships what is left, after the task below stops
    stack.push_async_callback(_cancel, asyncio.create_task(shipper.run(), name="span shipper"))
    log.info(
        "traces: OTLP %s to %s, %g%% of requests sampled",
        otlp.protocol, otlp.traces_url(), otlp.sample_ratio * 100,
    )  # fmt: skip
    return _Tracing(tracing, tracing.job_answered, shipper.buffer.counts)


def _start_engine_scraper(
    stack: contextlib.AsyncExitStack,
    backends: dict[str, Backend],
    clock: Callable[[], float],
    wall: Callable[[], float],
    on_snapshot: OnSnapshot | None = None,
) -> None:
    """Scrape the engines' /metrics of the backends that have a metrics_url, off the request path, handing
    every good snapshot to ``on_snapshot``."""
    engines = {name: b.engine for name, b in backends.items() if b.engine is not None}
    if not engines:
        return
    client = EngineMetricsClient()
    stack.push_async_callback(client.aclose)  # after the scraper stops (pushed before it)
    scraper = EngineScraper(engines, client, clock=clock, wall=wall, on_snapshot=on_snapshot)
    stack.push_async_callback(_cancel, asyncio.create_task(scraper.run(), name="engine metrics"))
    log.info("engine metrics: scraping %d backend(s): %s", len(engines), ", ".join(engines))


async def _nothing() -> None:
    """Announce a reload to nobody (no shared store: this replica is alone)."""


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
