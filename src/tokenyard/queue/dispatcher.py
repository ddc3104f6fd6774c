"""The dispatcher: one leader across all replicas claims async jobs and carries each down its path.

Every tick the leader (whoever holds the ``dispatcher`` lock in the meter store) claims jobs, asks
``paths.choose_path`` where each goes now, and

- runs it on idle dedicated capacity, or in real time, through the ``run`` callable it was given (the
  proxy's own routing);
- hands it to ``ProviderBatches`` (``provider_batches.py``), which gathers, submits, polls and reads the
  provider's Batch API and reports each answer back here;
- leaves it waiting (claimed) until capacity frees up or its deadline comes close.

Every answer is stored and billed once (``AsyncFront.settle``), counted, and POSTed to the job's callback if
it has one (``callbacks.py``). The dispatcher knows the request path only through callables and the small
``Deployment`` protocol: nothing here imports the proxy or an HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from tokenyard.errors import StoreError
from tokenyard.meter.model import UsageRecord
from tokenyard.queue.callbacks import CallbackSender
from tokenyard.queue.deployments import Deployed
from tokenyard.queue.front import AsyncFront
from tokenyard.queue.model import Job, JobResult, QueueStats
from tokenyard.queue.paths import Capacity, Path, choose_path
from tokenyard.queue.provider_batches import RETRY_STATUSES, ProviderBatches
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.queue.store import JobQueue
from tokenyard.stores.protocols import Coordination

log = logging.getLogger("tokenyard.dispatcher")

LOCK: Final = "dispatcher"
LOCK_TTL_S: Final = 10.0  # a leader that stops renewing (killed) hands over after this long
MAX_WAITING: Final = 2_000  # claimed jobs kept in memory while they wait for a path
STATS_EVERY_S: Final = 2.0  # how fresh the queue gauges are
OUTAGE_RETRY_S: Final = 2.0  # while the store is down, how often the dispatcher looks again

RunJob = Callable[[Job, Path, list[str] | None], Awaitable[tuple[JobResult, UsageRecord]]]
# Write an answered job's spans: the job, its answer, what it used, and when it left the queue (None: not
# seen here, e.g. its batch was sent by a replica since restarted).
TraceJob = Callable[[Job, JobResult, UsageRecord, float | None], None]
"""Run a job now on the path it was placed on: on ``only`` the named backends, or (None) on any of its
model's deployments; its answer and usage record (not metered yet: the dispatcher settles it)."""


class Deployment(Deployed, Protocol):
    """What placement reads of one of a model's backends (``proxy.backends.Backend`` is one): its name,
    kind and breaker, and how busy it is."""

    @property
    def max_concurrency(self) -> int | None:
        """This replica's in-flight cap now, if it has one."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests it serves now."""
        ...

    def saturated(self, now: float) -> str | None:
        """Why its engine's own metrics say it is full (``queue 3``), while they are fresh; else None."""
        ...


class Dispatcher:
    """Carries async jobs to their answers; one instance per replica, one leader at a time."""

    def __init__(
        self,
        *,
        store: JobQueue,
        locks: Coordination,
        front: AsyncFront,
        settings: Callable[[], AsyncTrackConfig],
        run: RunJob,
        deployments: Callable[[str], Sequence[Deployment]],
        batches: ProviderBatches,
        callbacks: CallbackSender,
        replica: str,
        new_work: asyncio.Event,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tick_s: float = 0.25,
        max_running: int = 64,
        trace_job: TraceJob | None = None,
    ) -> None:
        self.store = store
        self.locks = locks
        self.front = front
        self.settings = settings  # read at each tick: a reload swaps them
        self.run_job = run
        self.deployments = deployments  # a model's deployments, in preference order
        self.batches = batches
        self.callbacks = callbacks
        self.wall = wall
        self.clock = clock
        self.tick_s = tick_s
        self.max_running = max_running
        self.replica = replica  # this replica's name: lock owner and queue consumer
        self.leader = False
        # For /metrics (this replica's view): answered jobs and their total wait, by path; the queue's state.
        self.jobs_by_path: dict[str, int] = {}
        self.wait_s_by_path: dict[str, float] = {}
        self.stats: QueueStats | None = None
        self._stats_at = -math.inf
        # Set by whoever has new work for it (the async front, the Batch API): it ticks now, not later.
        self._wake = new_work
        self._waiting: dict[str, Job] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        # Traced jobs' spans are written when they are answered; when each left the queue (unix s), till then.
        self.trace_job = trace_job
        self._dispatched_at: dict[str, float] = {}

    async def run(self) -> None:
        """Tick until cancelled; on the way out, running jobs are dropped (their claims go stale)."""
        failing = False
        try:
            while True:
                try:
                    if self.clock() - self._stats_at >= STATS_EVERY_S:
                        self._stats_at = self.clock()
                        self.stats = await self.store.stats()
                    self.leader = await self.locks.try_lock(LOCK, self.replica, LOCK_TTL_S)
                    if self.leader:
                        await self.tick()
                    else:
                        self._waiting.clear()  # another replica leads: its claims, not ours
                    if failing:
                        log.info("dispatcher: the store answers again")
                    failing = False
                except StoreError as exc:
                    if not failing:  # once per outage, not four times a second
                        log.warning("dispatcher: %s; retrying every %g s", exc, OUTAGE_RETRY_S)
                    failing = True
                except Exception:
                    log.exception("dispatcher: tick failed; trying again")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(OUTAGE_RETRY_S if failing else self.tick_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            for task in self._running.values():
                task.cancel()
            if self.leader:  # a graceful stop hands the lead over now, not when the lock runs out
                with contextlib.suppress(StoreError):
                    await self.locks.release_lock(LOCK, self.replica)

    async def tick(self) -> None:
        """One round: poll provider batches when due, claim jobs, place them, submit full gathers."""
        track = self.settings()
        now = self.wall()
        await self.batches.poll_if_due(self._answered)
        room = min(self.max_running - len(self._running), MAX_WAITING - len(self._waiting))
        if room > 0:
            for job in await self.store.claim(self.replica, room, stale_after_s=track.claim_stale_s):
                # A job answered here whose answer the store refused for a while is not run again.
                if job.id not in self._running and job.id not in self.front.unstored:
                    self._waiting[job.id] = job
        for job in sorted(self._waiting.values(), key=lambda j: j.deadline):
            if len(self._running) >= self.max_running:
                break
            path = choose_path(
                job,
                now,
                self._capacity(job, track),
                realtime_margin_s=track.realtime_margin_s,
                expected_turnaround_s=track.batches.expected_turnaround_s,
            )
            if path == "wait":
                continue
            del self._waiting[job.id]
            if self.trace_job is not None and job.traceparent:
                self._dispatched_at[job.id] = now
            if path == "provider_batch":
                self.batches.gather(job, now)
            else:
                self._running[job.id] = asyncio.create_task(self._run(job, path), name=f"job {job.id}")
        for job in await self.batches.submit_due(now):
            self._waiting[job.id] = job  # its submission failed: it waits for another path

    # -- capacity --------------------------------------------------------------------------------------

    def _idle_dedicated(self, model: str, track: AsyncTrackConfig) -> list[str]:
        """The names of the model's dedicated backends with a slot below their async fill cap, in
        preference order. An engine that says it is saturated has none, whatever the in-flight count."""
        now = self.clock()
        idle = []
        for backend in self.deployments(model):
            cap = backend.max_concurrency
            if backend.config.kind != "dedicated" or cap is None or not backend.breaker.available(now):
                continue
            if backend.in_flight < math.floor(cap * track.idle_fill_cap) and backend.saturated(now) is None:
                idle.append(backend.name)
        return idle

    def _capacity(self, job: Job, track: AsyncTrackConfig) -> Capacity:
        return Capacity(
            idle_dedicated=bool(self._idle_dedicated(job.model, track)),
            provider_batch=self.batches.backend_for(job.model, job.endpoint) is not None,
            has_dedicated=any(b.config.kind == "dedicated" for b in self.deployments(job.model)),
        )

    # -- running now -----------------------------------------------------------------------------------

    async def _run(self, job: Job, path: Path) -> None:
        try:
            only = self._idle_dedicated(job.model, self.settings()) if path == "idle_dedicated" else None
            if only is not None and not only:
                self._waiting[job.id] = job  # the slot went to real-time traffic meanwhile
                return
            result, usage = await self.run_job(job, path, only)
            if result.status in RETRY_STATUSES or (path == "idle_dedicated" and result.status >= 500):
                self._waiting[job.id] = job  # no answer yet: another path, or later
                return
            await self._answered(job, result, usage)
        except StoreError as exc:
            log.warning("dispatcher: job %s: %s (its claim will go stale and be retried)", job.id, exc)
        except Exception:  # a task's last guard: nobody awaits it, so a failure must be said here
            log.exception("dispatcher: job %s failed (its claim will go stale and be retried)", job.id)
        finally:
            self._running.pop(job.id, None)

    async def _answered(self, job: Job, result: JobResult, usage: UsageRecord) -> None:
        """Store and bill the answer (once), count it, trace it, and call the job's callback."""
        dispatched_at = self._dispatched_at.pop(job.id, None)
        _, first = await self.front.settle(job, result, usage)
        if not first:
            return
        if self.trace_job is not None and job.traceparent:
            self.trace_job(job, result, usage, dispatched_at)
        self.jobs_by_path[result.path] = self.jobs_by_path.get(result.path, 0) + 1
        waited = max(0.0, result.finished_at - job.created_at)
        self.wait_s_by_path[result.path] = self.wait_s_by_path.get(result.path, 0.0) + waited
        if job.callback:
            try:
                await self.callbacks.send(job, result)
            except Exception:  # the answer is stored and billed: a callback's failure must not undo that
                log.exception("dispatcher: job %s: its callback failed", job.id)
