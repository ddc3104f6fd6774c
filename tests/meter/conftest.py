"""Fixtures: every ``MeterStore`` implementation behind one factory, each test in a namespace of its own.

Redis is the machine's server at 127.0.0.1:6379 (``TOKENYARD_TEST_REDIS`` to change it). It is shared, so
each namespace is a fresh key prefix, deleted key by key afterwards (never FLUSHDB); if it is not
reachable the Redis tests fail, they do not skip. SQLite namespaces are files under ``tmp_path``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.harness import free_port
from tests.meter.redis_util import REDIS_URL, redis_url_for
from tokenyard.config import BackendConfig
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.meter.store import MeterStore
from tokenyard.stores.keys import MeterKeys

TEST_REDIS_URL = REDIS_URL
T0 = 1_800_000_000  # a minute-aligned "now" (unix s) for every test's clock
RETENTION_S = 7 * 86_400
RECORDS_MAX = 10_000


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


def dedicated_config(
    *,
    gpus_per_replica: int = 1,
    replicas: int = 1,
    gpu_hour_price: float = 1.0,
    max_concurrency: int = 4,
    **extra: Any,
) -> BackendConfig:
    """A dedicated backend's config (nothing listens at its URL: for tests of the meter alone)."""
    return BackendConfig(
        kind="dedicated",
        base_url="http://127.0.0.1:9/v1",
        gpu_type="H100",
        gpus_per_replica=gpus_per_replica,
        replicas=replicas,
        gpu_hour_price=gpu_hour_price,
        max_concurrency=max_concurrency,
        **extra,
    )


class Stores:
    """Opens stores of one kind; every store opened on a namespace shares its data, like proxy replicas."""

    def __init__(self, kind: str, folder: Path, clock: FakeClock, redis_url: str = TEST_REDIS_URL) -> None:
        self.kind = kind
        self.redis_url = redis_url  # the machine's Redis, or a private Redis Cluster
        self.clock = clock
        self._folder = folder
        self._opened: list[MeterStore] = []
        self._prefixes: list[str] = []
        self.namespace = self.fresh_namespace()

    def fresh_namespace(self) -> str:
        """A namespace no store has used yet: a Redis key prefix or an SQLite file."""
        name = f"tytest-{uuid.uuid4().hex[:12]}"
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
        client = aioredis.Redis.from_url(TEST_REDIS_URL)
        try:
            for prefix in self._prefixes:
                doomed = [
                    key async for key in client.scan_iter(match=MeterKeys(prefix).match_all(), count=1000)
                ]
                if doomed:
                    await client.delete(*doomed)
        finally:
            await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    """The stores' clock, standing at ``T0``."""
    return FakeClock(T0)


@pytest.fixture(params=["redis", "redis-cluster", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Stores]:
    """A factory of stores of each kind, cleaned up after the test."""
    factory = Stores(request.param, tmp_path, clock, redis_url_for(request.param, request))
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture
def store(stores: Stores) -> MeterStore:
    """One store of each kind, on a fresh namespace."""
    return stores.open()
