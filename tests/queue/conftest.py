"""Fixtures: every ``JobStore`` behind one factory (``tests.support.stores.JobStores``), each test in a
namespace of its own; and a loopback receiver for callbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.clocks import FakeClock
from tests.support.receiver import Received, receiving
from tests.support.redis_servers import redis_url_for
from tests.support.stores import CONTRACT_STORES, JobStores
from tokenyard.queue.store import JobStore


@pytest.fixture(params=CONTRACT_STORES)
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
async def receiver() -> AsyncIterator[tuple[int, Received]]:
    """An HTTP server on loopback that keeps every POST it gets."""
    async with receiving() as running:
        yield running
