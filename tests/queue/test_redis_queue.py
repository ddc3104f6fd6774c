"""What only the Redis job store promises: its keys are where they always were, and a read of many jobs or
objects costs a fixed number of round trips, not one per item.

Round trips are counted at the far edge: every write redis-py makes to its socket (a pipeline is one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from tests.support.clocks import T0, FakeClock
from tests.support.jobs import answer, job
from tests.support.stores import JobStores
from tokenyard.queue.model import Job, QueueStats, StoredObject
from tokenyard.queue.redis_queue import RedisJobStore


class RoundTrips:
    """How many times the client has sent to Redis."""

    def __init__(self) -> None:
        self.count = 0

    async def of(self, call: Any) -> int:
        """The round trips one awaited call makes."""
        before = self.count
        await call
        return self.count - before


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counter.count += 1
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return counter


@pytest.fixture
async def job_stores(tmp_path: Path, clock: FakeClock) -> AsyncIterator[JobStores]:
    """Redis job stores only (this module overrides the three-kind fixture)."""
    stores = JobStores("redis", tmp_path, clock)
    try:
        yield stores
    finally:
        await stores.close()


async def warm(store: RedisJobStore) -> None:
    """Connect, create the consumer group and load every script, so later counts are steady-state."""
    await store.ping()
    await store.enqueue(warmup := job(-1))
    await store.claim("warm", 1, stale_after_s=60)
    await store.hold_in_batch("warm", [warmup.id])
    await store.release_batch("warm")
    await store.complete(answer(warmup.id))
    await store.put_object(StoredObject("warm", "w", "warm", float(T0), b""))
    await store.delete_object("warm", "w")
    await store.delete_object("warm", "w")


@pytest.mark.parametrize("objects", [1, 40])
async def test_listing_objects_takes_the_same_round_trips_however_many(
    job_stores: JobStores, round_trips: RoundTrips, objects: int
) -> None:
    store = job_stores.open()
    assert isinstance(store, RedisJobStore)
    await warm(store)
    for n in range(objects + 1):
        await store.put_object(StoredObject("file", f"file-{n:03}", "acme", float(T0 + n), b"x"))
    first = await round_trips.of(store.list_objects("file", "acme", limit=objects))
    after = await round_trips.of(
        store.list_objects("file", "acme", after=f"file-{objects:03}", limit=objects)
    )
    assert (first, after) == (2, 3)  # (range, objects) and (rank, range, objects)
    assert len(await store.list_objects("file", "acme", after=f"file-{objects:03}", limit=objects)) == objects


@pytest.mark.parametrize("batches", [1, 30])
async def test_stats_take_the_same_round_trips_however_many_open_batches(
    job_stores: JobStores, round_trips: RoundTrips, batches: int
) -> None:
    store = job_stores.open()
    assert isinstance(store, RedisJobStore)
    await warm(store)
    jobs = [job(n) for n in range(batches + 1)]
    for j in jobs:
        await store.enqueue(j)
    claimed = await store.claim("d", batches, stale_after_s=60)
    for n, j in enumerate(claimed):
        await store.hold_in_batch(f"batch-{n}", [j.id])
    assert (
        await round_trips.of(store.stats()) == 2
    )  # the counts and the batch refs; their sizes and the oldest
    assert await store.stats() == QueueStats(1, 0, batches, float(T0 + batches))


@pytest.mark.parametrize("gone", [1, 30])
async def test_claiming_cleans_up_entries_of_gone_jobs_in_one_round_trip(
    job_stores: JobStores, round_trips: RoundTrips, raw: aioredis.Redis, gone: int
) -> None:
    store = job_stores.open()
    assert isinstance(store, RedisJobStore)
    await warm(store)
    jobs = [job(n) for n in range(gone + 1)]
    for j in jobs:
        await store.enqueue(j)
    for j in jobs[:gone]:  # past retention: the job expired, its stream entry did not
        await raw.delete(store.keys.job(j.id))
    claiming = store.claim("d", gone + 1, stale_after_s=60)
    # XAUTOCLAIM, XREADGROUP, the jobs and their results, then one round trip to clean up every gone entry
    assert await round_trips.of(claiming) == 4
    assert await raw.xlen(store.keys.stream) == 1
    assert [j.id for j in await store.claim("d2", 10, stale_after_s=0)] == [jobs[-1].id]


@pytest.mark.parametrize("jobs", [1, 50])
async def test_reading_many_jobs_takes_one_round_trip_however_many(
    job_stores: JobStores, round_trips: RoundTrips, jobs: int
) -> None:
    store = job_stores.open()
    assert isinstance(store, RedisJobStore)
    await warm(store)
    stored = [job(n) for n in range(jobs)]
    for j in stored:
        await store.enqueue(j)
    ids = [j.id for j in stored] + ["job_unknown"]
    assert await round_trips.of(store.get_many(ids)) == 1  # a pipeline, not a GET each
    assert await store.get_many(ids) == {j.id: j for j in stored}


async def test_jobs_results_and_objects_are_found_under_the_keys_they_always_had(
    job_stores: JobStores, raw: aioredis.Redis
) -> None:
    """Data written by an earlier tokenyard (the layout spelled out by hand) reads back through the store."""
    store = job_stores.open()
    base = "{" + job_stores.prefix + "}:q"
    stored = job(7, id="job_layout")
    await raw.set(f"{base}:job:job_layout", stored.dumps())
    await raw.set(f"{base}:result:job_layout", answer("job_layout").dumps())
    await raw.hset(
        f"{base}:obj:file:file-1", mapping={"tenant": "acme", "created_at": repr(T0 + 1.5), "body": "b"}
    )
    await raw.zadd(f"{base}:objs:file:acme", {"file-1": T0 + 1.5})
    await raw.sadd(f"{base}:batches", "ded/b1")
    await raw.sadd(f"{base}:batch:ded/b1", "job_layout")
    assert await store.get("job_layout") == stored
    assert await store.result("job_layout") == answer("job_layout")
    assert await store.results_of(["job_layout"]) == {"job_layout": answer("job_layout")}
    assert await store.get_object("file", "file-1") == StoredObject("file", "file-1", "acme", T0 + 1.5, b"b")
    assert await store.list_objects("file", "acme") == [
        StoredObject("file", "file-1", "acme", T0 + 1.5, b"b")
    ]
    assert await store.open_batches() == {"ded/b1": ["job_layout"]}
    assert (await store.stats()).in_batches == 1
    # And what the store writes lands there too.
    fresh = job(8)
    await store.enqueue(fresh)
    assert Job.loads(await raw.get(f"{base}:job:{fresh.id}")) == fresh
    assert await raw.hget(f"{base}:entry", fresh.id) is not None
    assert orjson.loads(await raw.get(f"{base}:result:job_layout"))  # untouched, still JSON
