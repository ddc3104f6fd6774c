"""Stores for tests: the ``sqlite:///`` URL, fresh Redis prefixes, the store a proxy under test meters into,
and factories that open every ``MeterStore`` and ``JobStore`` implementation on a namespace of its own.

Redis is the machine's server (``tests.support.redis_servers.REDIS_URL``). It is shared, so each namespace is
a fresh key prefix, deleted key by key afterwards (never FLUSHDB). SQLite namespaces are files in the test's
folder. Stores opened on one namespace share its data, like proxy replicas sharing a store.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.clocks import FakeClock
from tests.support.net import free_port
from tests.support.polling import eventually
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.open_store import open_store
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.meter.store import MeterStore
from tokenyard.queue.redis_queue import RedisJobStore
from tokenyard.queue.sqlite_queue import SqliteJobStore
from tokenyard.queue.store import JobStore
from tokenyard.stores.keys import MeterKeys

# What the store contract suites run on: the machine's Redis, a private Redis Cluster, an SQLite file.
CONTRACT_STORES = ("redis", "redis-cluster", "sqlite")
# What a proxy under test meters into when a behaviour must hold on both kinds of store.
PROXY_STORES = ("sqlite", "redis")

RETENTION_S = 7 * 86_400
RECORDS_MAX = 10_000


def sqlite_url(path: Path | str) -> str:
    """The ``meter.store`` URL of an SQLite file (an absolute path gives four slashes, as it should)."""
    return f"sqlite:///{path}"


def fresh_prefix() -> str:
    """A Redis key prefix no test has used: each test's keys stay apart on the shared server."""
    return f"tytest-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class ProxyStore:
    """Where a proxy under test meters: an SQLite file in the test's folder, or the machine's Redis under a
    fresh prefix (the prefix is set either way; SQLite ignores it)."""

    kind: str  # "sqlite" or "redis"
    url: str
    prefix: str


@contextlib.asynccontextmanager
async def open_proxy_store(
    kind: str, folder: Path, file_name: str = "meter.sqlite3"
) -> AsyncIterator[ProxyStore]:
    """A ``ProxyStore`` of ``kind``; on Redis its prefix's keys are deleted when the block ends."""
    prefix = fresh_prefix()
    url = sqlite_url(folder / file_name) if kind == "sqlite" else REDIS_URL
    try:
        yield ProxyStore(kind, url, prefix)
    finally:
        if kind == "redis":
            await delete_prefix(prefix)


@contextlib.asynccontextmanager
async def opened_meter_store(
    kind: str, folder: Path, *, retention_s: int = 40 * 86400
) -> AsyncIterator[MeterStore]:
    """A meter store of ``kind`` opened in process (the advisor's tests read and write it directly)."""
    async with open_proxy_store(kind, folder) as where:
        opened = open_store(where.url, prefix=where.prefix, retention_s=retention_s, records_max=1000)
        try:
            yield opened
        finally:
            await opened.aclose()


async def stored_records(store_url: str, *, since_s: float = 3600) -> list[UsageRecord]:
    """The request records a proxy's meter has flushed to ``store_url`` lately, read directly."""
    store = open_store(store_url, prefix="unused", retention_s=86400, records_max=100_000)
    try:
        return list(await store.records(time.time() - since_s, time.time() + 60))
    finally:
        await store.aclose()


async def metered_records(store_url: str, request_id: str, timeout_s: float = 20) -> list[UsageRecord]:
    """The meter's records of one request, once the proxy has flushed them (at least one)."""
    found: list[UsageRecord] = []

    async def stored() -> None:
        found[:] = [r for r in await stored_records(store_url) if r.request_id == request_id]
        assert found, f"no meter record of {request_id} yet"

    await eventually(stored, timeout_s=timeout_s)
    return found


class Stores:
    """Opens meter stores of one kind; every store opened on a namespace shares its data, like replicas."""

    def __init__(self, kind: str, folder: Path, clock: FakeClock, redis_url: str = REDIS_URL) -> None:
        self.kind = kind
        self.redis_url = redis_url  # the machine's Redis, or a private Redis Cluster
        self.clock = clock
        self._folder = folder
        self._opened: list[MeterStore] = []
        self._prefixes: list[str] = []
        self.namespace = self.fresh_namespace()

    def fresh_namespace(self) -> str:
        """A namespace no store has used yet: a Redis key prefix or an SQLite file."""
        name = fresh_prefix()
        if self.kind.startswith("redis"):
            self._prefixes.append(name)
            return name
        return str(self._folder / f"{name}.sqlite3")

    def open(
        self, *, retention_s: int = RETENTION_S, records_max: int = RECORDS_MAX, namespace: str | None = None
    ) -> MeterStore:
        """A store on this test's namespace (or another one)."""
        where = namespace or self.namespace
        store: MeterStore
        if self.kind.startswith("redis"):
            store = RedisMeterStore(
                self.redis_url,
                prefix=where,
                retention_s=retention_s,
                records_max=records_max,
                clock=self.clock,
            )
        else:
            store = SqliteMeterStore(
                where, retention_s=retention_s, records_max=records_max, clock=self.clock
            )
        self._opened.append(store)
        return store

    def open_unreachable(self) -> MeterStore:
        """A store that cannot be reached: a port nobody listens on, a file under a regular file."""
        store: MeterStore
        if self.kind.startswith("redis"):
            scheme = "redis+cluster" if self.kind == "redis-cluster" else "redis"
            url = f"{scheme}://127.0.0.1:{free_port()}/0"
            store = RedisMeterStore(url, prefix="tytest-dead", retention_s=60, records_max=10)
        else:
            blocker = self._folder / f"regular-file-{uuid.uuid4().hex[:6]}"
            blocker.write_text("not a directory")
            store = SqliteMeterStore(blocker / "meter.sqlite3", retention_s=60, records_max=10)
        self._opened.append(store)
        return store

    async def close(self) -> None:
        """Close every store opened here and delete every Redis key written under its prefixes."""
        for store in self._opened:
            await store.aclose()
        if not self._prefixes or self.kind == "redis-cluster":  # a private cluster: it goes with the session
            return
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            for prefix in self._prefixes:
                doomed = [
                    key async for key in client.scan_iter(match=MeterKeys(prefix).match_all(), count=1000)
                ]
                if doomed:
                    await client.delete(*doomed)
        finally:
            await client.aclose()


class JobStores:
    """Opens job stores of one kind on this test's namespace."""

    def __init__(self, kind: str, folder: Path, clock: FakeClock, redis_url: str = REDIS_URL) -> None:
        self.kind = kind
        self.redis_url = redis_url  # the machine's Redis, or a private Redis Cluster
        self.clock = clock
        self.prefix = fresh_prefix()
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
        """Close every store opened here and delete the namespace's keys on the machine's Redis."""
        for store in self._opened:
            await store.aclose()
        if self.kind == "redis":
            await delete_prefix(self.prefix)
