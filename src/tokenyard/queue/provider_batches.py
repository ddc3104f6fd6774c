"""Provider batches: the async jobs a provider's Batch API runs, from gathering them to reading the answers.

The dispatcher hands over each job it places on the ``provider_batch`` path. Here it is

- gathered with other jobs for the same batch backend and endpoint (a backend takes the endpoints its Batch
  API speaks: OpenAI's chat, completions and embeddings, Anthropic's messages), and submitted when the
  gather is full (``batches.max_requests``) or has waited ``batches.max_wait_s``, in as many batches as the
  provider's limits need; each batch is recorded in the job store, so a restarted leader resumes polling it;
- polled every ``batches.poll_s``; a batch still open when its jobs' deadline comes close is cancelled
  (finished lines still count, the rest go another way);
- read when it ends (completed, expired, failed, cancelled): each line answered is reported through the
  ``answered`` callback; a line that failed for the provider's reasons (5xx — Anthropic's overloaded 529
  too —, 429, expiry, a cancel) or is missing puts its job back in the queue, to go another way before its
  deadline; a line that failed for its own (a 400) is its job's answer.

The request path's side of a batch job — its body for the backend (the model renamed as the provider names
it) and the usage record of its answer — comes in as callables: this module knows jobs and batches, not
routing or prices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from tokenyard.adapters.base import BatchLine, BatchUpstream
from tokenyard.errors import UpstreamError
from tokenyard.meter.model import UsageRecord
from tokenyard.queue.deployments import Deployed
from tokenyard.queue.model import JSON_TYPE, Job, JobResult
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.queue.store import JobQueue
from tokenyard.wire.asgi import H_BACKEND, H_BACKEND_KIND
from tokenyard.wire.ids import new_request_id

log = logging.getLogger("tokenyard.dispatcher")  # the dispatcher's work, under its logger as before

RETRY_STATUSES: Final = frozenset({429, 503})  # no capacity right now: try again, not an answer
PATH: Final = "provider_batch"

Answered = Callable[[Job, JobResult, UsageRecord], Awaitable[None]]
BodyFor = Callable[[Job, str], bytes]
"""The job's body for the named batch backend (the client's bytes, the model renamed if it must be)."""
BatchUsage = Callable[[Job, str, str, int, bytes], UsageRecord]
"""The usage record of a job the named batch backend answered: (job, backend, request_id, status, body)."""


class BatchBackend(Deployed, Protocol):
    """What the lifecycle reads of a backend (``proxy.backends.Backend`` is one): its name and kind (for the
    answer's headers), its breaker, and its provider's Batch API."""

    @property
    def batch_api(self) -> BatchUpstream | None:
        """Its provider's Batch API, if it has one."""
        ...


@dataclass(slots=True)
class Gather:
    """Jobs waiting to go to one provider Batch API together."""

    since: float
    jobs: list[Job] = field(default_factory=list)


class ProviderBatches:
    """Gathers, submits, polls and reads provider batches for the dispatcher's leader."""

    def __init__(
        self,
        store: JobQueue,
        backends: Mapping[str, BatchBackend],
        batch_of: Mapping[str, str],
        *,
        settings: Callable[[], AsyncTrackConfig],
        body_for: BodyFor,
        usage: BatchUsage,
        wall: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.backends = backends  # by name; those with a ``batch_api`` take batches (fixed until a restart)
        self.batch_of = batch_of  # model → the name of its batch backend (fixed until a restart)
        self.settings = settings  # read at each use: a reload swaps them
        self.body_for = body_for
        self.usage = usage
        self.wall = wall
        self.clock = clock
        self._gathers: dict[tuple[str, str], Gather] = {}
        self._polled_at = -math.inf
        self._batch_deadline: dict[str, float] = {}  # open batch → the earliest deadline of its jobs

    def backend_for(self, model: str, endpoint: str) -> BatchBackend | None:
        """The model's batch backend, if it has one whose Batch API takes ``endpoint``'s requests and that
        is not failing now."""
        name = self.batch_of.get(model)
        backend = self.backends.get(name) if name else None
        api = backend.batch_api if backend is not None else None
        if backend is None or api is None or endpoint not in api.endpoints:
            return None
        return backend if backend.breaker.available(self.clock()) else None

    def gather(self, job: Job, now: float) -> None:
        """Take a job for its model's batch backend (``backend_for`` must have found one)."""
        backend = self.backend_for(job.model, job.endpoint)
        assert backend is not None  # the dispatcher placed it here having seen one
        gather = self._gathers.setdefault((backend.name, job.endpoint), Gather(since=now))
        gather.jobs.append(job)

    async def submit_due(self, now: float) -> list[Job]:
        """Submit every gather that is full or has waited long enough; the jobs whose submission failed
        (they are the dispatcher's again, to wait for another path)."""
        batches = self.settings().batches
        failed: list[Job] = []
        for key, gather in list(self._gathers.items()):
            if len(gather.jobs) < batches.max_requests and now - gather.since < batches.max_wait_s:
                continue
            del self._gathers[key]
            try:
                await self._submit(self.backends[key[0]], key[1], gather.jobs)
            except UpstreamError as exc:
                log.warning("dispatcher: batch submission to %s failed (%s); its jobs wait", key[0], exc)
                failed.extend(gather.jobs)
        return failed

    async def _submit(self, backend: BatchBackend, endpoint: str, jobs: list[Job]) -> None:
        """Submit the jobs in as many batches as the provider's limits need, each recorded as it starts."""
        api = backend.batch_api
        assert api is not None
        batches = self.settings().batches
        lines = [BatchLine(job.id, job.endpoint, self.body_for(job, backend.name)) for job in jobs]
        for content, ids in api.input_files(lines, max_requests=batches.max_requests):
            state = await api.submit(
                content,
                endpoint,
                completion_window=batches.completion_window,
                metadata={"source": "tokenyard"},
            )
            await self.store.hold_in_batch(f"{backend.name}/{state.id}", ids)
            log.info("dispatcher: %d job(s) sent to %s as batch %s", len(ids), backend.name, state.id)

    async def poll_if_due(self, answered: Answered) -> None:
        """Every ``batches.poll_s``: look at each open batch; report the answers of those that ended."""
        if self.clock() - self._polled_at < self.settings().batches.poll_s:
            return
        self._polled_at = self.clock()
        for ref, job_ids in (await self.store.open_batches()).items():
            await self._poll(ref, job_ids, answered)

    async def _poll(self, ref: str, job_ids: list[str], answered: Answered) -> None:
        name, _, batch_id = ref.partition("/")
        backend = self.backends.get(name)
        api = backend.batch_api if backend is not None else None
        if backend is None or api is None:  # the config no longer has it
            await self.store.release_batch(ref)
            return
        try:
            state = await api.retrieve(batch_id)
            if not state.terminal:
                await self._cancel_if_late(ref, api, state.id, state.status, job_ids)
                return
            answers = await api.outcomes(state)
        except UpstreamError as exc:
            log.warning("dispatcher: cannot read batch %s from %s: %s", batch_id, name, exc)
            return
        # A line missing (expired) or failed on the provider's side: its job goes back to the queue.
        lines = {
            job_id: line
            for job_id in job_ids
            if (line := answers.get(job_id)) is not None
            and line.status < 500
            and line.status not in RETRY_STATUSES
        }
        # One round trip for the whole batch; a job past retention is left out.
        for job_id, job in (await self.store.get_many(list(lines))).items():
            line = lines[job_id]
            request_id = job.request_id or new_request_id()
            served_by = [(H_BACKEND.decode(), backend.name), (H_BACKEND_KIND.decode(), backend.config.kind)]
            result = JobResult(
                job_id, line.status, line.body, PATH, self.wall(), JSON_TYPE, served_by, request_id
            )
            await answered(job, result, self.usage(job, backend.name, request_id, line.status, line.body))
        back = await self.store.release_batch(ref)
        self._batch_deadline.pop(ref, None)
        log.info("dispatcher: batch %s %s; %d job(s) back in the queue", batch_id, state.status, len(back))

    async def _cancel_if_late(
        self, ref: str, api: BatchUpstream, batch_id: str, status: str, job_ids: list[str]
    ) -> None:
        """Cancel a batch whose jobs cannot wait longer: finished lines count, the rest go real time."""
        if ref not in self._batch_deadline:  # after a restart, read the jobs once
            jobs = (await self.store.get_many(job_ids)).values()
            self._batch_deadline[ref] = min((j.deadline for j in jobs), default=math.inf)
        margin_s = self.settings().realtime_margin_s
        if status == "cancelling" or self.wall() < self._batch_deadline[ref] - margin_s:
            return
        log.warning(
            "dispatcher: batch %s is not done and its jobs' deadline is near: cancelling it", batch_id
        )
        await api.cancel(batch_id)
