"""The job store backends' contracts, one per protocol they implement: ``JobQueue``, ``ObjectStore`` and
``Lifecycle`` (a mixin the meter stores run too), each run against Redis (Streams), a Redis Cluster and
SQLite.

At least once: a claim that is not answered in time is handed out again. Exactly one result: the first
answer wins. Provider batches keep their jobs out of reach until released, and survive a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.clocks import T0, FakeClock
from tests.support.contracts import LifecycleContract
from tests.support.jobs import answer, job
from tests.support.net import free_port
from tests.support.stores import JobStores
from tokenyard.errors import StoreUnavailable
from tokenyard.queue.model import QueueStats, StoredObject
from tokenyard.queue.redis_queue import RedisJobStore
from tokenyard.queue.sqlite_queue import SqliteJobStore
from tokenyard.queue.store import JobQueue, JobStore, ObjectStore
from tokenyard.stores.protocols import Lifecycle


class TestJobQueue:
    """``JobQueue``: jobs claimed at least once, answered exactly once, held in provider batches."""

    async def test_a_job_round_trips_exactly_and_is_enqueued_once(self, queue: JobQueue) -> None:
        original = job()
        assert await queue.enqueue(original)
        assert not await queue.enqueue(job(id=original.id, tenant="someone-else"))
        assert await queue.get(original.id) == original
        assert await queue.get("job_unknown") is None

    async def test_many_jobs_read_at_once_leave_out_the_unknown(self, queue: JobQueue) -> None:
        asked = [job(n) for n in range(1203)]
        known = [asked[1202], asked[700], asked[0]]  # in different pages where a backend reads in pages
        for j in known:
            await queue.enqueue(j)
        got = await queue.get_many([j.id for j in asked])
        assert got == {j.id: j for j in (asked[0], asked[700], asked[1202])}
        assert list(got) == [asked[0].id, asked[700].id, asked[1202].id], "in the order asked"
        assert await queue.get_many([]) == {}
        assert await queue.get_many(["job_unknown"]) == {}

    async def test_claims_hand_each_job_out_once_oldest_first(self, queue: JobQueue) -> None:
        jobs = [job(n) for n in range(5)]
        for j in jobs:
            await queue.enqueue(j)
        first = await queue.claim("dispatcher-a", 3, stale_after_s=60)
        second = await queue.claim("dispatcher-b", 10, stale_after_s=60)
        assert [j.id for j in first] == [j.id for j in jobs[:3]]
        assert [j.id for j in second] == [j.id for j in jobs[3:]]
        assert await queue.claim("dispatcher-c", 10, stale_after_s=60) == []
        assert await queue.stats() == QueueStats(waiting=0, claimed=5, in_batches=0, oldest_created_at=T0)

    async def test_a_stale_claim_is_handed_out_again(self, job_stores: JobStores, clock: FakeClock) -> None:
        a, b = job_stores.open(), job_stores.open()  # two replicas; a is killed after claiming
        j = job()
        await a.enqueue(j)
        assert [x.id for x in await a.claim("replica-a", 10, stale_after_s=0.2)] == [j.id]
        # Not stale within the threshold (a generous one: Redis measures idle time on its own, real clock).
        assert await b.claim("replica-b", 10, stale_after_s=30) == [], "not stale yet"
        # SQLite reads the fake clock; for Redis real time passes too.
        clock.advance(0.3)
        await asyncio.sleep(0.3)
        assert [x.id for x in await b.claim("replica-b", 10, stale_after_s=0.2)] == [j.id]

    async def test_the_first_result_wins_and_the_job_leaves_the_queue(self, queue: JobQueue) -> None:
        j = job()
        await queue.enqueue(j)
        await queue.claim("d", 10, stale_after_s=60)
        assert await queue.complete(answer(j.id, content="first"))
        assert not await queue.complete(answer(j.id, path="provider_batch", content="second"))
        stored = await queue.result(j.id)
        assert stored == answer(j.id, content="first")
        assert await queue.stats() == QueueStats(0, 0, 0, None)
        assert await queue.result("job_unknown") is None

    async def test_results_of_many_jobs_at_once(self, queue: JobQueue) -> None:
        jobs = [job(n) for n in range(1203)]
        for j in jobs[:3]:
            await queue.enqueue(j)
        await queue.complete(answer(jobs[1].id))
        await queue.complete(answer(jobs[1202].id, content="never enqueued, still stored"))
        got = await queue.results_of([j.id for j in jobs])
        assert got == {
            jobs[1].id: answer(jobs[1].id),
            jobs[1202].id: answer(jobs[1202].id, content="never enqueued, still stored"),
        }

    async def test_an_answered_job_is_not_handed_out_again_even_when_its_claim_goes_stale(
        self, queue: JobQueue, clock: FakeClock
    ) -> None:
        j = job()
        await queue.enqueue(j)
        await queue.claim("d", 10, stale_after_s=0.1)
        await queue.complete(answer(j.id))
        clock.advance(1)
        await asyncio.sleep(0.2)
        assert await queue.claim("d2", 10, stale_after_s=0.1) == []

    async def test_a_result_may_arrive_for_a_job_nobody_claimed(self, queue: JobQueue) -> None:
        j = job()
        await queue.enqueue(j)
        assert await queue.complete(answer(j.id))
        assert await queue.claim("d", 10, stale_after_s=60) == []

    async def test_jobs_in_a_provider_batch_are_out_of_reach_and_survive_a_restart(
        self, job_stores: JobStores
    ) -> None:
        before = job_stores.open()
        jobs = [job(n) for n in range(3)]
        for j in jobs:
            await before.enqueue(j)
        claimed = await before.claim("d", 10, stale_after_s=0.1)
        await before.hold_in_batch("batch_abc", [j.id for j in claimed])
        await asyncio.sleep(0.2)
        job_stores.clock.advance(1)
        assert await before.claim("d", 10, stale_after_s=0.1) == [], "held jobs are not stale claims"
        after = job_stores.open()  # the dispatcher restarted: it finds the batch to resume
        assert await after.open_batches() == {"batch_abc": sorted(j.id for j in jobs)}
        assert await after.stats() == QueueStats(waiting=0, claimed=0, in_batches=3, oldest_created_at=None)

    async def test_releasing_a_batch_puts_back_only_its_unanswered_jobs(self, queue: JobQueue) -> None:
        jobs = [job(n) for n in range(3)]
        for j in jobs:
            await queue.enqueue(j)
        await queue.claim("d", 10, stale_after_s=60)
        await queue.hold_in_batch("batch_1", [j.id for j in jobs])
        await queue.complete(answer(jobs[0].id, path="provider_batch"))  # the batch answered one, failed two
        assert await queue.release_batch("batch_1") == sorted([jobs[1].id, jobs[2].id])
        assert await queue.open_batches() == {}
        again = await queue.claim("d", 10, stale_after_s=60)
        assert sorted(j.id for j in again) == sorted([jobs[1].id, jobs[2].id])
        assert await queue.release_batch("batch_1") == [], "releasing twice does nothing"

    async def test_stats_count_each_state_and_the_oldest_open_job(self, queue: JobQueue) -> None:
        jobs = [job(n) for n in (30, 10, 20, 40)]
        for j in sorted(jobs, key=lambda j: j.created_at):
            await queue.enqueue(j)
        claimed = await queue.claim("d", 2, stale_after_s=60)  # created at +10 and +20
        await queue.hold_in_batch("b", [claimed[0].id])
        stats = await queue.stats()
        assert (stats.waiting, stats.claimed, stats.in_batches) == (2, 1, 1)
        assert stats.oldest_created_at == pytest.approx(T0 + 20)

    async def test_an_unreachable_queue_fails_enqueues_and_claims_quickly(
        self, unreachable: JobStore
    ) -> None:
        for attempt in (unreachable.enqueue(job()), unreachable.claim("d", 10, stale_after_s=60)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(attempt, timeout=5)
            assert time.monotonic() - started < 2


class TestObjectStore:
    """``ObjectStore``: the Batch API's files and batches, per kind, id and tenant."""

    async def test_objects_round_trip_and_are_listed_per_tenant_newest_first(
        self, queue: ObjectStore
    ) -> None:
        for n in range(5):
            await queue.put_object(
                StoredObject("file", f"file-{n}", "acme", float(T0 + n), f"body {n} é".encode())
            )
        await queue.put_object(StoredObject("file", "file-other", "beta", float(T0 + 9), b"theirs"))
        await queue.put_object(StoredObject("batch", "batch-0", "acme", float(T0), b"{}"))
        assert await queue.get_object("file", "file-2") == StoredObject(
            "file", "file-2", "acme", T0 + 2, "body 2 é".encode()
        )
        assert await queue.get_object("batch", "file-2") is None
        page = await queue.list_objects("file", "acme", limit=2)
        assert [o.id for o in page] == ["file-4", "file-3"]
        page = await queue.list_objects("file", "acme", after="file-3", limit=10)
        assert [o.id for o in page] == ["file-2", "file-1", "file-0"]
        assert await queue.list_objects("file", "acme", after="file-0") == []
        assert [o.id for o in await queue.list_objects("file", "beta")] == ["file-other"]
        assert await queue.delete_object("file", "file-4")
        assert not await queue.delete_object("file", "file-4")
        assert await queue.get_object("file", "file-4") is None
        assert [o.id for o in await queue.list_objects("file", "acme", limit=1)] == ["file-3"]
        # Replacing keeps one object.
        await queue.put_object(
            StoredObject("batch", "batch-0", "acme", float(T0), b'{"status": "completed"}')
        )
        assert [o.body for o in await queue.list_objects("batch", "acme")] == [b'{"status": "completed"}']


@pytest.fixture
def lifecycle(queue: JobStore) -> Lifecycle:
    return queue


@pytest.fixture
async def unreachable(job_stores: JobStores, tmp_path: Path) -> AsyncIterator[JobStore]:
    """A job store that cannot be reached: a port nobody listens on, a file under a regular file."""
    store: JobStore
    if job_stores.kind.startswith("redis"):
        scheme = "redis+cluster" if job_stores.kind == "redis-cluster" else "redis"
        store = RedisJobStore(f"{scheme}://127.0.0.1:{free_port()}/0", prefix="tytest-dead")
    else:
        blocker = tmp_path / "regular-file"
        blocker.write_text("not a directory")
        store = SqliteJobStore(blocker / "queue.sqlite3")
    try:
        yield store
    finally:
        await store.aclose()


class TestJobStoreLifecycle(LifecycleContract):
    """The job stores' lifecycle."""
