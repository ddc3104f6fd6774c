"""Fixtures: every ``MeterStore`` implementation behind one factory, each test in a namespace of its own.

Redis is the machine's server at 127.0.0.1:6379 (``TOKENYARD_TEST_REDIS`` to change it); if it is not
reachable the Redis tests fail, they do not skip. The factory is ``tests.support.stores.Stores``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.clocks import FakeClock
from tests.support.redis_servers import redis_url_for
from tests.support.stores import CONTRACT_STORES, Stores
from tokenyard.meter.store import MeterStore


@pytest.fixture(params=CONTRACT_STORES)
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
