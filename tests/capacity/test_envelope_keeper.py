"""The envelope keeper on real stores (SQLite, Redis): merging under the lock, waiting its turn when another
replica merges, and keeping its counts when the store is away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from tests.support.clocks import T0
from tests.support.net import free_port
from tests.support.stores import PROXY_STORES, open_proxy_store
from tokenyard.capacity import envelope
from tokenyard.capacity.envelope_keeper import EnvelopeKeeper
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import EnvelopeSettings, Sla
from tokenyard.meter.open_store import open_store
from tokenyard.meter.store import MeterStore

SLA = Sla(min_stream_tokens_per_s=30)


def keeper(store: MeterStore, replica: str) -> EnvelopeKeeper:
    return EnvelopeKeeper(
        store, {"ded": envelope.Recorder(SLA)}, EnvelopeSettings, replica=replica, wall=lambda: T0
    )


def answer(k: EnvelopeKeeper, count: int, concurrency: int = 4) -> None:
    for _ in range(count):
        k.recorders["ded"].observe(LatencySample(0.1, 1.1, 100, 61, True, concurrency), 1)


def samples(cells: envelope.Cells) -> float:
    return sum(sums[envelope.N] for sums in cells.values())


@pytest_asyncio.fixture(params=PROXY_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MeterStore]:
    async with open_proxy_store(request.param, tmp_path) as where:
        opened = open_store(where.url, prefix=where.prefix, retention_s=86400, records_max=100)
        try:
            yield opened
        finally:
            await opened.aclose()


async def test_replicas_merge_in_turn_and_read_back_the_cluster(store: MeterStore) -> None:
    one, two = keeper(store, "r1"), keeper(store, "r2")
    answer(one, 3)
    assert await store.try_lock(envelope.DOCUMENT, "r2", 30)  # r2 is merging right now
    assert not await one.tick()
    assert await store.get_document(envelope.DOCUMENT) is None
    assert samples(one.recorders["ded"].peek()) == 3  # kept for the next round
    await store.release_lock(envelope.DOCUMENT, "r2")

    assert await one.tick()
    answer(two, 2, concurrency=8)
    assert await two.tick()
    assert samples(two.cells("ded")) == 5
    assert await one.tick()  # nothing new: it reads the cluster's document
    assert samples(one.cells("ded")) == 5
    answer(one, 1)
    assert samples(one.cells("ded")) == 6  # what it has not merged yet shows too
    assert one.recorders["ded"].peek() != {}
    assert await store.try_lock(envelope.DOCUMENT, "r3", 1)  # the lock was given back after each merge


async def test_a_store_that_is_away_loses_nothing() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    away = open_store(url, prefix="tytest-away", retention_s=60, records_max=1)
    try:
        k = keeper(away, "r1")
        answer(k, 4)
        assert not await k.tick()
        assert samples(k.recorders["ded"].peek()) == 4
    finally:
        await away.aclose()


async def test_the_cluster_capacity_is_read_off_the_merged_curve(store: MeterStore) -> None:
    one, two = keeper(store, "r1"), keeper(store, "r2")
    for k, share in ((one, 30), (two, 20)):  # 50 per level, split between the replicas
        for concurrency in (5, 10, 20):
            answer(k, share, concurrency=concurrency)  # 60 tok/s per stream: within 30 at every level
        assert await k.tick()
    assert await one.tick()
    cap = one.capacity("ded", SLA, ceiling=20)
    assert cap is not None
    assert cap.enough
    assert (cap.concurrency, cap.aggregate_tokens_per_s) == (20, pytest.approx(20 * 60))
    assert one.capacity("ded", None, ceiling=20) is None


async def test_each_merge_records_the_learned_limits_for_every_replica_and_the_advisor(
    store: MeterStore,
) -> None:
    limits: dict[str, int] = {}
    one = EnvelopeKeeper(
        store,
        {"ded": envelope.Recorder(SLA)},
        EnvelopeSettings,
        replica="r1",
        wall=lambda: T0,
        learned_limits=lambda: limits,
    )
    two = keeper(store, "r2")  # a replica whose own limit has not moved
    answer(one, 150, concurrency=4)  # every stream at 60 tok/s (SLA 30): c=4 makes 240 tok/s
    answer(one, 50, concurrency=3)
    answer(one, 50, concurrency=2)
    limits["ded"] = 4  # the limiter holds 4 per replica (of 64): the level above breached
    assert two.capacity("ded", SLA, 64) is None  # nothing merged yet

    assert await one.tick()
    stored = orjson.loads(await store.get_document(envelope.DOCUMENT) or b"")
    assert stored["limits"] == {"ded": {"per_replica": 4, "at": T0}}
    assert await two.tick()
    for k in (one, two):
        cap = k.capacity("ded", SLA, 64)
        assert cap is not None
        assert (cap.concurrency, cap.aggregate_tokens_per_s, cap.enough) == (4, pytest.approx(240), True)
        assert cap.why == "knee at c=5: the SLA limiter holds 4 per replica (ceiling 64)"
    measured = envelope.backend_envelope(stored, "ded", SLA, 64)  # what the advisor reads
    assert measured.capacity == one.capacity("ded", SLA, 64)
