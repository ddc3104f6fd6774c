"""The job queue and stored-object protocols, with a Redis (Streams) and an embedded (SQLite) implementation.

Delivery is at least once: a dispatcher *claims* jobs, and a claim that is not answered within
``stale_after_s`` (its dispatcher died, e.g. ``kill -9``) is handed out again. Results are written once
(the first wins), so a job answered twice is stored — and billed — once. Jobs sent to a provider batch
leave the claimable set until their batch is *released*; the open batches are kept in the store, so a
restarted dispatcher resumes polling them. The Batch API keeps its files and batches as stored objects
beside the jobs. Every implementation passes the contract tests of each protocol
(``tests/queue/test_queue_contract.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenyard.queue.model import Job, JobResult, QueueStats, StoredObject
from tokenyard.stores.protocols import Lifecycle


class JobQueue(Protocol):
    """Where async jobs and their results live; raises ``StoreUnavailable`` when it cannot be reached."""

    async def enqueue(self, job: Job) -> bool:
        """Keep a job and make it claimable; False (and nothing changes) if its id is known already."""
        ...

    async def claim(self, consumer: str, count: int, *, stale_after_s: float) -> list[Job]:
        """Up to ``count`` jobs for ``consumer``: new ones, and ones claimed more than ``stale_after_s`` ago
        that are still unanswered (their dispatcher is presumed dead). Oldest first."""
        ...

    async def hold_in_batch(self, batch_ref: str, job_ids: Sequence[str]) -> None:
        """The jobs were sent in provider batch ``batch_ref``: nobody may claim them until it is released."""
        ...

    async def open_batches(self) -> dict[str, list[str]]:
        """Every provider batch not released yet, with its job ids (to resume after a restart)."""
        ...

    async def release_batch(self, batch_ref: str) -> list[str]:
        """Close a provider batch; its jobs that have no result become claimable again (returned)."""
        ...

    async def complete(self, result: JobResult) -> bool:
        """Store a job's result if it has none yet (True); a second answer changes nothing (False)."""
        ...

    async def result(self, job_id: str) -> JobResult | None:
        """A job's result, or None while it has none (or the job is unknown)."""
        ...

    async def results_of(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        """The results of those jobs that have one (for a Batch API batch's progress)."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """A job by id, or None."""
        ...

    async def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of those ids that are known, by id in the order asked, read in one round trip however
        many (a provider batch's jobs); unknown ids (never enqueued, or past retention) are left out."""
        ...

    async def stats(self) -> QueueStats:
        """How many jobs wait, are claimed or sit in provider batches, and the oldest unanswered one."""
        ...


class ObjectStore(Protocol):
    """Objects kept per kind, id and tenant (the Batch API's files, their contents and its batches)."""

    async def put_object(self, obj: StoredObject) -> None:
        """Keep an object (replacing one of the same kind and id)."""
        ...

    async def get_object(self, kind: str, obj_id: str) -> StoredObject | None:
        """An object by kind and id, or None."""
        ...

    async def list_objects(
        self, kind: str, tenant: str, *, after: str | None = None, limit: int = 20
    ) -> list[StoredObject]:
        """A tenant's objects of a kind, newest first; ``after``: the id of the last one already seen."""
        ...

    async def delete_object(self, kind: str, obj_id: str) -> bool:
        """Forget an object; False if there was none."""
        ...


class JobsAndObjects(JobQueue, ObjectStore, Protocol):
    """Jobs and stored objects together (the Batch API keeps files and batches and enqueues their jobs)."""


class JobStore(JobQueue, ObjectStore, Lifecycle, Protocol):
    """Everything a job store backend does: the queue, stored objects, its lifecycle."""
