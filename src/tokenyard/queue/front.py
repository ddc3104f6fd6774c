"""The async track's door: take async requests in, and hand their answers out.

- ``Prefer: respond-async``: ``202 Accepted`` at once, ``Preference-Applied: respond-async`` and a
  ``Location`` to poll; ``GET`` there answers ``202`` (with the job's status) until the job is done, then
  exactly the OpenAI response, with its status.
- a held connection (a plain client whose request is async by policy or ``service_tier: flex``): the
  handler waits for the job's result and answers it as a real-time call would. If nobody answers by the
  job's deadline (``async_track.max_hold_s`` at most) — no dispatcher running, the queue store down — it
  runs the request in real time itself: a flex request never fails for lack of async capacity.

A job is answered (and billed) once: whoever stores the first result meters it; a late duplicate is
counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tokenyard.admission.auth import Principal
from tokenyard.admission.classify import Decision
from tokenyard.errors import ObjectNotFound, StoreError
from tokenyard.meter.model import UsageRecord
from tokenyard.queue.callbacks import H_CALLBACK, allowed_callback
from tokenyard.queue.model import Job, JobResult, new_job_id
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.queue.store import JobQueue
from tokenyard.wire import asgi as wire

log = logging.getLogger("tokenyard.async")

JOBS_PATH = "/v1/async/jobs/"
CANCELLED_PATH = "cancelled"  # the path of a result its client stored by cancelling the job
POLL_S = 0.5  # a held connection looks at the store this often (a dispatcher in this process wakes it)
GRACE_S = 5.0  # past the deadline, how long a held connection still waits for the dispatcher
# Storing answers the store refused: the first retry, and the longest gap (no longer than the dispatcher's
# own outage retry, so when the store is back the answer is stored before a stale claim is handed out).
STORE_RETRY_S, STORE_RETRY_MAX_S = 0.25, 2.0
LAST_TRY_S = 2.0  # at shutdown, how long the answers still unstored get for one last try

RunNow = Callable[[Job], Awaitable[tuple[JobResult, UsageRecord]]]


def job_json(job: Job, status: str) -> dict[str, Any]:
    """A job as the poll endpoint and the 202 describe it."""
    return {
        "id": job.id,
        "object": "async.job",
        "status": status,
        "model": job.model,
        "endpoint": job.endpoint,
        "created_at": int(job.created_at),
        "deadline_at": int(job.deadline),
        "reason": job.reason,
        "url": JOBS_PATH + job.id,
    }


class AsyncFront:
    """Accepts async requests, answers polls and held connections, and meters what it answers itself."""

    def __init__(
        self,
        store: JobQueue,
        settings: Callable[[], AsyncTrackConfig],
        *,
        wall: Callable[[], float],
        run_now: RunNow,
        record: Callable[[Job, UsageRecord], None],
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self._settings = settings  # the async_track settings in force (a reload may change them)
        self.wall = wall
        self.run_now = run_now  # serve a job in real time, now (the proxy's routing); returns its usage
        self.record = record  # meter a job's usage record (and charge its key's budgets)
        self.wake = wake  # tell this process's dispatcher there is work
        self.duplicates = 0  # answers that lost to an earlier one (run twice, billed once)
        self._waiting: dict[str, asyncio.Event] = {}
        # Answers served (and billed) that the store refused, by job id, until it takes them; and the task
        # that retries them.
        self.unstored: dict[str, JobResult] = {}
        self._storing: asyncio.Task[None] | None = None

    @property
    def config(self) -> AsyncTrackConfig:
        """The async_track settings in force."""
        return self._settings()

    def deadline_s(self, decision: Decision) -> float:
        """How long a job of ``decision`` has to be answered (a held connection waits at most max_hold_s)."""
        deadline_s = decision.deadline_s or self.config.default_deadline_s
        if decision.delivery == "hold":
            deadline_s = min(deadline_s, self.config.max_hold_s)
        return deadline_s

    def callback(self, scope: wire.Scope) -> str | None:
        """The request's callback URL, checked against the allow-list."""
        raw = wire.header(scope, H_CALLBACK)
        if raw is None:
            return None
        return allowed_callback(raw.decode("latin-1"), self.config.callbacks.allow_hosts)

    async def submit(
        self,
        send: wire.Send,
        *,
        principal: Principal,
        endpoint_path: str,
        model: str,
        body: bytes,
        decision: Decision,
        callback: str | None,
        id_header: list[tuple[bytes, bytes]],
        job_id: str | None = None,
        traceparent: str = "",
        accepted: Callable[[Job], bytes] | None = None,
    ) -> None:
        """Queue an async request as job ``job_id`` (default: a new id); answer 202 (poll) or wait for its
        result (hold). ``traceparent``: the request's trace, which the job's spans join. ``accepted``: the
        200 body to answer a queued poll job with instead of the 202 (a background response says itself
        that it is queued). Whatever ``id_header`` says besides the request id (the key's rate limits and
        budgets, as admission found them) goes on the answer this request gets."""
        now = self.wall()
        admission = [(name, value) for name, value in id_header if name != wire.H_REQUEST_ID]
        deadline_s = self.deadline_s(decision)
        job = Job(
            id=job_id or new_job_id(),
            tenant=principal.tenant,
            model=model,
            endpoint=endpoint_path,
            body=body,
            created_at=now,
            deadline=now + deadline_s,
            reason=decision.reason,
            delivery=decision.delivery,
            callback=callback,
            request_id=dict(id_header).get(wire.H_REQUEST_ID, b"").decode(),
            key_id=principal.key_name,
            traceparent=traceparent,
            team=principal.team or "",
        )
        try:
            await self.store.enqueue(job)
        except StoreError:
            if decision.delivery != "hold":
                raise
            log.warning("async: the job queue is unavailable; serving %s in real time", job.id)
            result, usage = await self.run_now(job)
            self.record(job, usage)  # never queued: nothing to store, nobody else will run it
        else:
            self.wake()
            if decision.delivery == "poll" and accepted is not None:
                headers = [*wire.JSON_HEADERS, *_async_headers(job), *admission]
                await wire.send_bytes(send, 200, accepted(job), headers)
                return
            if decision.delivery == "poll":
                location = (JOBS_PATH + job.id).encode()
                await wire.send_bytes(
                    send,
                    202,
                    orjson.dumps(job_json(job, "queued")),
                    [
                        *wire.JSON_HEADERS,
                        *_async_headers(job),
                        (b"location", location),
                        (b"preference-applied", b"respond-async"),
                        *admission,
                    ],
                )
                return
            result = await self.wait(job)
        await wire.send_bytes(send, result.status, result.body, [*_answer_headers(job, result), *admission])

    async def wait(self, job: Job) -> JobResult:
        """The job's result, once some dispatcher stored it; past the deadline, answered here in real time."""
        event = self._waiting.setdefault(job.id, asyncio.Event())
        try:
            while True:
                kept = self.unstored.get(job.id)  # answered here, the store is not taking it yet
                if kept is not None:
                    return kept
                try:
                    result = await self.store.result(job.id)
                except StoreError:
                    break  # the store is gone: nobody can hand us the result
                if result is not None:
                    return result
                remaining_s = job.deadline + GRACE_S - self.wall()
                if remaining_s <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(POLL_S, remaining_s)):
                        await event.wait()
        finally:
            self._waiting.pop(job.id, None)
        log.warning("async: job %s had no answer by its deadline; serving it in real time", job.id)
        return await self._answer_now(job)

    async def _answer_now(self, job: Job) -> JobResult:
        result, usage = await self.run_now(job)
        settled, _ = await self.settle(job, result, usage)
        return settled

    async def settle(self, job: Job, result: JobResult, usage: UsageRecord) -> tuple[JobResult, bool]:
        """Store a job's answer if it is the first, and meter it; the job's answer and whether it is this one.

        A later answer (the job ran twice: a stale claim, a held connection's fallback) is counted and
        dropped, so the job is billed once.
        """
        try:
            first = await self.store.complete(result)
        except StoreError as exc:
            # Served, so billed; and kept, to be stored once the store is back: a job left unanswered in
            # the queue would run (and be billed) again when its claim goes stale.
            log.warning("async: job %s answered but not stored (%s); storing it when the store is back",
                        result.job_id, exc)  # fmt: skip
            self.unstored[result.job_id] = result
            if self._storing is None or self._storing.done():
                self._storing = asyncio.create_task(self._store_unstored(), name="store kept answers")
            first = True
        if first:
            self.record(job, usage)
            self.notify(result.job_id)
            return result, True
        self.duplicates += 1
        stored = await self.store.result(result.job_id)
        if stored is not None and stored.path == CANCELLED_PATH:
            # Cancelled by its client while it ran: the answer is dropped, but the upstream served it.
            self.record(job, usage)
            log.info("async: job %s was cancelled while it ran; its usage is billed", result.job_id)
        else:
            log.info("async: job %s was answered twice; the later answer is dropped", result.job_id)
        return stored or result, False

    async def _store_unstored(self) -> None:
        """Retry storing the kept answers, backing off while the store is down, until it has them all."""
        delay_s = STORE_RETRY_S
        while self.unstored:
            await asyncio.sleep(delay_s)
            try:
                await self._try_storing()
            except StoreError:
                delay_s = min(delay_s * 2, STORE_RETRY_MAX_S)
            except Exception:  # guards the loop: an answer kept must not be dropped by a surprise
                log.exception("async: storing kept answers failed; trying again")
                delay_s = STORE_RETRY_MAX_S

    async def _try_storing(self) -> None:
        """One pass over the kept answers; raises StoreError at the first the store still refuses."""
        for job_id, result in list(self.unstored.items()):
            first = await self.store.complete(result)
            self.unstored.pop(job_id, None)
            if first:
                log.info("async: job %s's answer is stored", job_id)
            else:  # the job ran again elsewhere (its claim went stale) and that answer was stored first
                self.duplicates += 1
                log.warning("async: job %s was answered twice while the store was down", job_id)

    async def aclose(self) -> None:
        """Give the kept answers one last, short try; the jobs of any still unstored will run again."""
        if self._storing is not None:
            self._storing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._storing
        if self.unstored:
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(LAST_TRY_S):
                    await self._try_storing()
        if self.unstored:
            log.warning("async: %d answer(s) served but not stored; their jobs will run (and bill) again: %s",
                        len(self.unstored), ", ".join(sorted(self.unstored)))  # fmt: skip

    def notify(self, job_id: str) -> None:
        """A job of this process has its result: wake the connection holding for it, if any."""
        event = self._waiting.get(job_id)
        if event is not None:
            event.set()

    async def status(self, scope: wire.Scope, send: wire.Send, principal: Principal) -> None:
        """``GET /v1/async/jobs/{id}``: 202 and the job while it runs, then its answer."""
        job_id = scope["path"].removeprefix(JOBS_PATH)
        job = await self.store.get(job_id)
        if job is None or job.tenant != principal.tenant:  # another tenant's job is not found either
            raise ObjectNotFound(f"No async job found with id '{job_id}'.")
        result = await self.store.result(job_id) or self.unstored.get(job_id)
        if result is None:
            headers = [
                *wire.JSON_HEADERS,
                *_async_headers(job),
                (b"retry-after", b"1"),
                (b"location", (JOBS_PATH + job_id).encode()),
            ]
            await wire.send_bytes(send, 202, orjson.dumps(job_json(job, "queued")), headers)
            return
        await wire.send_bytes(send, result.status, result.body, _answer_headers(job, result))


def _async_headers(job: Job, request_id: str = "") -> list[tuple[bytes, bytes]]:
    """What every answer about a job says: async, why, and the id of the request that made it (or, for a
    Batch API line, that ran it)."""
    headers = [(wire.H_MODE, b"async"), (wire.H_MODE_REASON, job.reason.encode("latin-1", "replace"))]
    request_id = request_id or job.request_id
    if request_id:
        headers.append((wire.H_REQUEST_ID, request_id.encode()))
    return headers


def _answer_headers(job: Job, result: JobResult) -> list[tuple[bytes, bytes]]:
    """The headers of a job's answer: the upstream's content type, who served it (as a real-time answer
    says) and the path it took."""
    return [
        (b"content-type", result.content_type.encode("latin-1", "replace")),
        *((name.encode(), value.encode("latin-1", "replace")) for name, value in result.served_by),
        *_async_headers(job, result.request_id),
        (wire.H_PATH, result.path.encode()),
    ]
