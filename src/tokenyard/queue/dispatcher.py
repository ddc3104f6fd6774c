"""The dispatcher: one leader across all replicas claims async jobs and carries each down its path.

Every tick the leader (whoever holds the ``dispatcher`` lock in the meter store) claims jobs, asks
``paths.choose_path`` where each goes now, and

- runs it on idle dedicated capacity, or in real time, through the proxy's own routing;
- gathers it with other jobs for the same provider Batch API, submitting when the gather is full or has
  waited ``batches.max_wait_s``; the submitted batches are recorded in the job store, so a restarted
  leader resumes polling them;
- leaves it waiting (claimed) until capacity frees up or its deadline comes close.

A provider batch that ends (completed, expired, failed, cancelled) answers the jobs it has lines for; a
line that failed for the provider's reasons (5xx, expiry) puts its job back in the queue, to go another way
before its deadline. Every answer is stored and billed once (``AsyncFront.settle``), and POSTed to the job's
callback if it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp
import orjson

from tokenyard.config import TokenyardConfig
from tokenyard.errors import InvalidRequest, StoreError, UpstreamError
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.store import MeterStore
from tokenyard.proxy import request_body
from tokenyard.proxy.backends import Backend
from tokenyard.proxy.exchange import Exchange
from tokenyard.queue.front import AsyncFront, allowed_callback
from tokenyard.queue.model import JSON_TYPE, Job, JobResult, QueueStats
from tokenyard.queue.paths import Capacity, choose_path
from tokenyard.queue.store import JobStore
from tokenyard.wire.asgi import H_BACKEND, H_BACKEND_KIND
from tokenyard.wire.ids import new_object_id, new_request_id

if TYPE_CHECKING:
    from tokenyard.proxy.handler import Proxy

log = logging.getLogger("tokenyard.dispatcher")

LOCK: Final = "dispatcher"
LOCK_TTL_S: Final = 10.0  # a leader that stops renewing (killed) hands over after this long
MAX_WAITING: Final = 2_000  # claimed jobs kept in memory while they wait for a path
STATS_EVERY_S: Final = 2.0  # how fresh the queue gauges are
OUTAGE_RETRY_S: Final = 2.0  # while the store is down, how often the dispatcher looks again
RETRY_STATUSES: Final = frozenset({429, 503})  # no capacity right now: try again, not an answer


@dataclass(slots=True)
class Gather:
    """Jobs waiting to go to one provider Batch API together."""

    since: float
    jobs: list[Job] = field(default_factory=list)


class Dispatcher:
    """Carries async jobs to their answers; one instance per replica, one leader at a time."""

    def __init__(
        self,
        *,
        store: JobStore,
        locks: MeterStore,
        proxy: Proxy,
        front: AsyncFront,
        config: TokenyardConfig,
        backends: dict[str, Backend],
        replica: str,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 0.25,
        max_running: int = 64,
    ) -> None:
        self.store = store
        self.locks = locks
        self.proxy = proxy
        self.front = front
        self.config = config
        self.track = config.async_track
        self.backends = backends
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
        self._wake = asyncio.Event()
        self._waiting: dict[str, Job] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._gathers: dict[tuple[str, str], Gather] = {}
        self._polled_at = -math.inf
        self._batch_deadline: dict[str, float] = {}  # open batch → the earliest deadline of its jobs
        self._http: aiohttp.ClientSession | None = None

    def use(self, config: TokenyardConfig) -> None:
        """Take a reloaded config's async_track settings (its models and backends stay until a restart)."""
        self.config = config
        self.track = config.async_track

    def wake(self) -> None:
        """There is new work: tick now rather than at the next interval."""
        self._wake.set()

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
            if self._http is not None:
                await self._http.close()
            if self.leader:  # a graceful stop hands the lead over now, not when the lock runs out
                with contextlib.suppress(StoreError):
                    await self.locks.release_lock(LOCK, self.replica)

    async def tick(self) -> None:
        """One round: poll provider batches when due, claim jobs, place them, submit full gathers."""
        now = self.wall()
        if self.clock() - self._polled_at >= self.track.batches.poll_s:
            self._polled_at = self.clock()
            await self._poll_batches()
        room = min(self.max_running - len(self._running), MAX_WAITING - len(self._waiting))
        if room > 0:
            for job in await self.store.claim(self.replica, room, stale_after_s=self.track.claim_stale_s):
                # A job answered here whose answer the store refused for a while is not run again.
                if job.id not in self._running and job.id not in self.front.unstored:
                    self._waiting[job.id] = job
        for job in sorted(self._waiting.values(), key=lambda j: j.deadline):
            if len(self._running) >= self.max_running:
                break
            path = choose_path(
                job,
                now,
                self._capacity(job),
                realtime_margin_s=self.track.realtime_margin_s,
                expected_turnaround_s=self.track.batches.expected_turnaround_s,
            )
            if path == "wait":
                continue
            del self._waiting[job.id]
            if path == "provider_batch":
                self._gather(job, now)
            else:
                self._running[job.id] = asyncio.create_task(self._run(job, path), name=f"job {job.id}")
        await self._submit_due(now)

    # -- capacity --------------------------------------------------------------------------------------

    def _idle_dedicated(self, model: str) -> list[Backend]:
        """The model's dedicated backends with a slot below their async fill cap, in preference order."""
        now = self.clock()
        idle = []
        for backend in self.proxy.models.get(model, []):
            cap = backend.max_concurrency
            if backend.config.kind != "dedicated" or cap is None or not backend.breaker.available(now):
                continue
            if backend.in_flight < math.floor(cap * self.track.idle_fill_cap):
                idle.append(backend)
        return idle

    def _batch_backend(self, model: str) -> Backend | None:
        model_config = self.config.models.get(model)
        name = model_config.batch if model_config else None
        backend = self.backends.get(name) if name else None
        if backend is None or backend.batch_api is None or not backend.breaker.available(self.clock()):
            return None
        return backend

    def _capacity(self, job: Job) -> Capacity:
        deployments = self.proxy.models.get(job.model, [])
        return Capacity(
            idle_dedicated=bool(self._idle_dedicated(job.model)),
            provider_batch=self._batch_backend(job.model) is not None,
            has_dedicated=any(b.config.kind == "dedicated" for b in deployments),
        )

    # -- running now -----------------------------------------------------------------------------------

    async def _run(self, job: Job, path: str) -> None:
        try:
            only = self._idle_dedicated(job.model) if path == "idle_dedicated" else None
            if only is not None and not only:
                self._waiting[job.id] = job  # the slot went to real-time traffic meanwhile
                return
            result, usage = await self.proxy.execute(job, path=path, only=only)
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
        """Store and bill the answer (once), count it, and call the job's callback."""
        _, first = await self.front.settle(result, usage)
        if not first:
            return
        self.jobs_by_path[result.path] = self.jobs_by_path.get(result.path, 0) + 1
        waited = max(0.0, result.finished_at - job.created_at)
        self.wait_s_by_path[result.path] = self.wait_s_by_path.get(result.path, 0.0) + waited
        if job.callback:
            try:
                await self._call_back(job, result)
            except Exception:  # the answer is stored and billed: a callback's failure must not undo that
                log.exception("dispatcher: job %s: its callback failed", job.id)

    # -- provider batches ------------------------------------------------------------------------------

    def _gather(self, job: Job, now: float) -> None:
        backend = self._batch_backend(job.model)
        assert backend is not None  # choose_path saw it
        gather = self._gathers.setdefault((backend.name, job.endpoint), Gather(since=now))
        gather.jobs.append(job)

    async def _submit_due(self, now: float) -> None:
        batches = self.track.batches
        for key, gather in list(self._gathers.items()):
            if len(gather.jobs) < batches.max_requests and now - gather.since < batches.max_wait_s:
                continue
            del self._gathers[key]
            try:
                await self._submit(self.backends[key[0]], key[1], gather.jobs)
            except UpstreamError as exc:
                log.warning("dispatcher: batch submission to %s failed (%s); its jobs wait", key[0], exc)
                for job in gather.jobs:
                    self._waiting[job.id] = job

    async def _submit(self, backend: Backend, endpoint: str, jobs: list[Job]) -> None:
        """Upload the jobs as JSONL files within the provider's limits and start a batch for each."""
        assert backend.batch_api is not None
        from tokenyard.adapters.openai_batch import BatchLine, input_files  # only with a batch backend

        lines = [BatchLine(job.id, job.endpoint, _body_for_batch(job.body, backend)) for job in jobs]
        for content, ids in input_files(lines, max_requests=self.track.batches.max_requests):
            file_id = await backend.batch_api.upload(content, filename=new_object_id("tokenyard-") + ".jsonl")
            state = await backend.batch_api.create(
                file_id,
                endpoint,
                completion_window=self.track.batches.completion_window,
                metadata={"source": "tokenyard"},
            )
            await self.store.hold_in_batch(f"{backend.name}/{state.id}", ids)
            log.info("dispatcher: %d job(s) sent to %s as batch %s", len(ids), backend.name, state.id)

    async def _poll_batches(self) -> None:
        for ref, job_ids in (await self.store.open_batches()).items():
            name, _, batch_id = ref.partition("/")
            backend = self.backends.get(name)
            if backend is None or backend.batch_api is None:  # the config no longer has it
                await self.store.release_batch(ref)
                continue
            try:
                state = await backend.batch_api.retrieve(batch_id)
                if not state.terminal:
                    await self._cancel_if_late(ref, backend, state.id, state.status, job_ids)
                    continue
                output = (
                    await backend.batch_api.content(state.output_file_id) if state.output_file_id else b""
                )
                errors = await backend.batch_api.content(state.error_file_id) if state.error_file_id else b""
            except UpstreamError as exc:
                log.warning("dispatcher: cannot read batch %s from %s: %s", batch_id, name, exc)
                continue
            from tokenyard.adapters.openai_batch import results  # only with a batch backend

            answers = results(output, errors)
            for job_id in job_ids:
                line = answers.get(job_id)
                if line is None or line.status >= 500 or line.status in RETRY_STATUSES:
                    continue  # expired or failed on the provider's side: it goes back to the queue
                job = await self.store.get(job_id)
                if job is None:
                    continue
                request_id = job.request_id or new_request_id()
                served_by = [
                    (H_BACKEND.decode(), backend.name),
                    (H_BACKEND_KIND.decode(), backend.config.kind),
                ]
                result = JobResult(
                    job_id,
                    line.status,
                    line.body,
                    "provider_batch",
                    self.wall(),
                    JSON_TYPE,
                    served_by,
                    request_id,
                )
                usage = self._batch_usage(job, backend, request_id, line.status, line.body)
                await self._answered(job, result, usage)
            back = await self.store.release_batch(ref)
            self._batch_deadline.pop(ref, None)
            log.info(
                "dispatcher: batch %s %s; %d job(s) back in the queue", batch_id, state.status, len(back)
            )

    async def _cancel_if_late(
        self, ref: str, backend: Backend, batch_id: str, status: str, job_ids: list[str]
    ) -> None:
        """Cancel a batch whose jobs cannot wait longer: finished lines count, the rest go real time."""
        if ref not in self._batch_deadline:  # after a restart, read the jobs once
            jobs = [await self.store.get(job_id) for job_id in job_ids]
            self._batch_deadline[ref] = min((j.deadline for j in jobs if j is not None), default=math.inf)
        if status == "cancelling" or self.wall() < self._batch_deadline[ref] - self.track.realtime_margin_s:
            return
        assert backend.batch_api is not None
        log.warning(
            "dispatcher: batch %s is not done and its jobs' deadline is near: cancelling it", batch_id
        )
        await backend.batch_api.cancel(batch_id)

    def _batch_usage(
        self, job: Job, backend: Backend, request_id: str, status: int, body: bytes
    ) -> UsageRecord:
        """The meter's record of a job a provider batch answered: at the batch backend's prices."""
        exchange = Exchange(request_id, job.tenant, job.model, orjson.loads(job.body), self.clock())
        exchange.mode, exchange.reason, exchange.route = "async", job.reason, "provider_batch"
        exchange.backend, exchange.status = backend, status
        if status == 200:
            exchange.answer = body
        return exchange.to_record(self.clock(), self.wall())

    # -- callbacks -------------------------------------------------------------------------------------

    async def _call_back(self, job: Job, result: JobResult) -> None:
        """POST the answer to the job's callback, signed: ``X-Tokenyard-Signature: t=<unix>,v1=<hex>``
        where the hex is HMAC-SHA256 of ``"<t>." + body`` under ``async_track.callbacks.secret``."""
        callbacks = self.track.callbacks
        assert job.callback is not None
        try:
            url = allowed_callback(job.callback, callbacks.allow_hosts)  # the list may have changed
        except InvalidRequest as exc:
            log.warning("dispatcher: job %s: callback not called: %s", job.id, exc.message)
            return
        payload = orjson.dumps(
            {"id": job.id, "object": "async.job.result", "status_code": result.status, "path": result.path,
             "content_type": result.content_type, "body": _callback_body(result)}
        )  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if callbacks.secret is not None:
            headers["X-Tokenyard-Signature"] = sign(
                callbacks.secret.get_secret_value(), payload, int(self.wall())
            )
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=callbacks.timeout_s))
        try:
            async with self._http.post(url, data=payload, headers=headers, allow_redirects=False) as resp:
                if resp.status >= 300:
                    log.warning("dispatcher: job %s: callback answered %d", job.id, resp.status)
        except TimeoutError:
            log.warning("dispatcher: job %s: callback not answered within %g s", job.id, callbacks.timeout_s)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("dispatcher: job %s: callback failed: %s", job.id, exc)


def _callback_body(result: JobResult) -> object:
    """The answer's body in a callback: its JSON, or — when the upstream said something else (an HTML
    error page) — its text, as ``content_type`` says."""
    if not result.body:
        return None
    try:
        return orjson.loads(result.body)
    except orjson.JSONDecodeError:
        return result.body.decode("utf-8", "replace")


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The callback signature header's value for ``payload`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _body_for_batch(body: bytes, backend: Backend) -> bytes:
    """The job's body for a batch backend: the client's bytes, with its model renamed (spliced in, as on
    the real-time path: numbers and everything else stay exact) when the provider names it differently."""
    upstream_model = backend.config.model
    if upstream_model is None:
        return body
    return request_body.with_member(body, orjson.loads(body), "model", upstream_model)
