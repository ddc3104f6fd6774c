"""Fixtures: every ``JobStore`` behind one factory, each test in a namespace of its own.

Redis is the machine's server (``TOKENYARD_TEST_REDIS`` to change it); each namespace is a fresh key
prefix, deleted afterwards. SQLite namespaces are files under ``tmp_path``. Stores opened on one namespace
share its jobs, like proxy replicas sharing a store.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.meter.conftest import FakeClock
from tests.meter.redis_util import REDIS_URL, delete_prefix, redis_url_for
from tokenyard.router.queue.redis_queue import RedisJobStore
from tokenyard.router.queue.sqlite_queue import SqliteJobStore
from tokenyard.router.queue.store import JobStore

T0 = 1_800_000_000


class JobStores:
    """Opens job stores of one kind on this test's namespace."""

    def __init__(self, kind: str, folder: Path, clock: FakeClock, redis_url: str = REDIS_URL) -> None:
        self.kind = kind
        self.redis_url = redis_url  # the machine's Redis, or a private Redis Cluster
        self.clock = clock
        self.prefix = f"tytest-{uuid.uuid4().hex[:12]}"
        self._path = folder / f"{self.prefix}.sqlite3"
        self._opened: list[JobStore] = []

    def open(self) -> JobStore:
        """A store on the namespace (another replica, if one is open already)."""
        store: JobStore
        if self.kind.startswith("redis"):
            store = RedisJobStore(self.redis_url, prefix=self.prefix, clock=self.clock)
        else:
            store = SqliteJobStore(self._path, clock=self.clock)
        self._opened.append(store)
        return store

    async def close(self) -> None:
        for store in self._opened:
            await store.aclose()
        if self.kind == "redis":
            await delete_prefix(self.prefix)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(float(T0))


@pytest.fixture(params=["redis", "redis-cluster", "sqlite"])
async def job_stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[JobStores]:
    stores = JobStores(request.param, tmp_path, clock, redis_url_for(request.param, request))
    try:
        yield stores
    finally:
        await stores.close()


@pytest.fixture
def queue(job_stores: JobStores) -> JobStore:
    return job_stores.open()
