"""Fixtures: every ``JobStore`` behind one factory, each test in a namespace of its own.

Redis is the machine's server (``TOKENYARD_TEST_REDIS`` to change it); each namespace is a fresh key
prefix, deleted afterwards. SQLite namespaces are files under ``tmp_path``. Stores opened on one namespace
share its jobs, like proxy replicas sharing a store.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.harness import eventually, free_port
from tests.meter.conftest import FakeClock
from tests.meter.redis_util import REDIS_URL, delete_prefix, redis_url_for
from tokenyard.queue.redis_queue import RedisJobStore
from tokenyard.queue.sqlite_queue import SqliteJobStore
from tokenyard.queue.store import JobStore

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


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, list[tuple[dict[str, str], bytes]]]]:
    """An HTTP server on loopback that keeps every POST it gets."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        got.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    async def started() -> None:
        assert server.started

    await eventually(started)
    try:
        yield port, got
    finally:
        server.should_exit = True
        await task
