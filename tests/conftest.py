"""Fixtures every test folder may use; their helpers live in ``tests.support``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import settings

from tests.support.clocks import T0, FakeClock
from tests.support.redis_servers import RedisClusterServers, delete_prefix, raw_client
from tests.support.stores import PROXY_STORES, ProxyStore, fresh_prefix, open_proxy_store
from tokenyard.adapters.webhook import WebhookSender

# The contract mixins hold test bodies, so their asserts should explain a failure as a test module's do.
# Nothing imported above imports them; the test modules that do are collected after this conftest.
pytest.register_assert_rewrite("tests.support.contracts")

# Hypothesis times each example against a wall-clock deadline by default; on this shared machine a first
# example that builds an SDK's validators can take a quarter of a second. No test here waits on wall time.
settings.register_profile("tokenyard", deadline=None)
settings.load_profile("tokenyard")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a private three-master Redis Cluster, started once for the session (about 2 s)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def clock() -> FakeClock:
    """The stores' clock, standing at ``T0``."""
    return FakeClock(T0)


@pytest.fixture(params=PROXY_STORES)
async def proxy_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProxyStore]:
    """Where the proxy under test meters, once on SQLite (in ``tmp_path``) and once on the machine's Redis
    (a fresh prefix, deleted afterwards)."""
    async with open_proxy_store(request.param, tmp_path) as store:
        yield store


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix on the machine's Redis, its keys deleted after the test."""
    prefix = fresh_prefix()
    try:
        yield prefix
    finally:
        await delete_prefix(prefix)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain client of the machine's Redis, to look at (or plant) a store's keys directly."""
    async with raw_client() as client:
        yield client


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookSender]:
    """The adapter that POSTs a job's callback, closed after the test."""
    sender = WebhookSender()
    try:
        yield sender
    finally:
        await sender.aclose()
