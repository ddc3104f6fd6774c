"""The meter store backends' contracts, one per protocol they implement (huey's idea): ``UsageStore`` (with
its engine buckets),
``Coordination``, ``DocumentStore`` and ``Lifecycle``, each run against every backend (Redis, a Redis
Cluster, SQLite) through the same tests. The ``Lifecycle`` suite is a mixin the job stores run too
(``tests.support.contracts``); the batches written are built with ``tests.support.usage_records``.

Each test gets a fresh namespace and a clock standing at ``T0``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.clocks import T0, FakeClock
from tests.support.contracts import LifecycleContract
from tests.support.polling import eventually
from tests.support.stores import Stores
from tests.support.usage_records import (
    BASE_MS,
    GAP_MS,
    PRICE,
    Aggregates,
    accrual,
    batch,
    key,
    record,
    scrape,
)
from tokenyard.errors import StoreUnavailable
from tokenyard.meter.model import (
    AGG_FIELDS,
    ENGINE_FIELDS,
    AggKey,
    EngineKey,
    GpuKey,
    UsageRecord,
    engine_row,
    merge_engine_fields,
)
from tokenyard.meter.store import MeterStore, UsageStore
from tokenyard.stores.protocols import BudgetHold, BudgetStore, Lifecycle, Reserved, Settlement

ALL_TIME = (0, 2**31)


def gpu_row(*segments_ms: int, gpus: int = 8, price: int = PRICE) -> dict[str, int]:
    """A GPU bucket that accrued these segments: the cost of each is floored on its own."""
    return {
        "wall_ms": sum(segments_ms),
        "gpu_ms": sum(segments_ms) * gpus,
        "cost_pusd": sum(ms * gpus * price // 3_600_000 for ms in segments_ms),
    }


async def read_aggregates(store: UsageStore, start: int = 0, end: int = 2**31) -> Aggregates:
    rows = await store.aggregates(start, end)
    assert len(rows) == len(dict(rows)), "a bucket was returned twice"
    return dict(rows)


async def read_gpu(store: UsageStore) -> dict[GpuKey, dict[str, int]]:
    return dict(await store.gpu(*ALL_TIME))


def only(fields: dict[str, int]) -> dict[str, int]:
    """A full AGG_FIELDS row with these values and zeros elsewhere."""
    return {name: fields.get(name, 0) for name in AGG_FIELDS}


AWKWARD = ["team:a%20b c", "llama/3.1:8b ü 模型", "ded:1%", "", "a:b:c:d:e:f", "%3A", " "]

_keys = st.builds(
    AggKey,
    minute=st.sampled_from([T0, T0 + 60, T0 + 3600]),
    tenant=st.sampled_from(["a", "b:c", "ü %"]),
    model=st.sampled_from(["m1", "m2"]),
    backend=st.sampled_from(["", "ded"]),
    kind=st.sampled_from(["", "dedicated"]),
    mode=st.sampled_from(["realtime", "async"]),
)
_fields = st.dictionaries(st.sampled_from(AGG_FIELDS), st.integers(0, 10**15), max_size=4)
_batches = st.lists(st.dictionaries(_keys, _fields, min_size=1, max_size=5), min_size=1, max_size=6)


class TestUsageStore:
    """``UsageStore``: flush batches in exactly once; aggregates, GPU accruals and records out."""

    # -- aggregates -------------------------------------------------------------------------------------

    async def test_aggregates_add_up_per_key_across_batches(self, store: UsageStore) -> None:
        a, b = key(), key(tenant="beta")
        await store.write(batch({a: {"requests": 2, "prompt_tokens": 100, "cost_pusd": 7 * 10**15}}))
        await store.write(batch({a: {"requests": 1, "prompt_tokens": 5}, b: {"requests": 4, "errors": 1}}))
        assert await read_aggregates(store) == {
            a: only({"requests": 3, "prompt_tokens": 105, "cost_pusd": 7 * 10**15}),
            b: only({"requests": 4, "errors": 1}),
        }

    async def test_absent_fields_read_as_zero_and_unknown_ones_are_not_kept(self, store: UsageStore) -> None:
        await store.write(batch({key(): {"completion_tokens": 9, "no_such_field": 5}}))
        [(_, fields)] = await store.aggregates(*ALL_TIME)
        assert fields == only({"completion_tokens": 9})
        assert list(fields) == list(AGG_FIELDS)

    async def test_per_shape_fields_add_up_and_read_back(self, store: UsageStore) -> None:
        # The shapes a minute saw are written; the rest read as zero (a bucket carries only its own).
        await store.write(
            batch({key(): {"requests": 2, "s0_requests": 2, "s0_prompt": 40, "s0_completion": 9}})
        )
        await store.write(batch({key(): {"requests": 1, "s19_requests": 1, "s19_prompt": 9000}}))
        [(_, fields)] = await store.aggregates(*ALL_TIME)
        assert fields == only(
            {
                "requests": 3,
                "s0_requests": 2,
                "s0_prompt": 40,
                "s0_completion": 9,
                "s19_requests": 1,
                "s19_prompt": 9000,
            }
        )

    async def test_aggregates_are_read_from_start_minute_inclusive_to_end_exclusive(
        self, store: UsageStore
    ) -> None:
        minutes = [T0 - 60, T0, T0 + 60, T0 + 120]
        await store.write(batch({key(m): {"requests": 1} for m in minutes}))
        assert {k.minute for k in await read_aggregates(store, T0, T0 + 120)} == {T0, T0 + 60}
        assert await read_aggregates(store, T0 + 180, T0 + 600) == {}

    async def test_a_batch_written_twice_counts_once(self, store: UsageStore) -> None:
        first = batch({key(): {"requests": 1}}, [accrual(BASE_MS)], [record(T0 + 1.5)], batch_id="flush-1")
        await store.write(first)
        await store.write(first)  # a retry after a lost reply
        # Same id, other content: still the same batch as far as the store knows.
        await store.write(batch({key(): {"requests": 10}}, records=[record(T0 + 2.5)], batch_id="flush-1"))
        following = batch({key(): {"requests": 1}}, [accrual(BASE_MS + 1000)], batch_id="flush-2")
        await store.write(following)
        await store.write(following)
        assert (await read_aggregates(store))[key()]["requests"] == 2
        assert await store.records(*ALL_TIME) == [record(T0 + 1.5)]
        assert await read_gpu(store) == {GpuKey(T0, "ded"): gpu_row(1000)}

    # -- GPU accrual ------------------------------------------------------------------------------------

    async def test_the_first_accrual_only_sets_the_watermark(self, store: UsageStore) -> None:
        await store.write(batch(gpu=[accrual(BASE_MS + 20_000)]))
        assert await read_gpu(store) == {}

    async def test_accruals_add_the_time_since_the_watermark_split_at_minutes(
        self, store: UsageStore
    ) -> None:
        await store.write(batch(gpu=[accrual(BASE_MS + 20_000)]))
        await store.write(batch(gpu=[accrual(BASE_MS + 100_000)]))  # 40 s in T0's minute, 40 s in the next
        # By hand: 40 s x 8 GPUs = 320,000 GPU-ms; x $2.50 per GPU-hour = 8e17 / 3.6e6 pico-USD, floored.
        minute = {"wall_ms": 40_000, "gpu_ms": 320_000, "cost_pusd": 222_222_222_222}
        assert await read_gpu(store) == {GpuKey(T0, "ded"): minute, GpuKey(T0 + 60, "ded"): minute}
        await store.write(batch(gpu=[accrual(BASE_MS + 130_000, gpus=2)]))  # 20 s + 10 s, at 2 GPUs
        rows = await read_gpu(store)
        assert rows[GpuKey(T0 + 60, "ded")] == {
            "wall_ms": 60_000,
            "gpu_ms": 320_000 + 20_000 * 2,
            "cost_pusd": 222_222_222_222 + 27_777_777_777,  # 40,000 GPU-ms x 2.5e12 / 3.6e6, floored
        }
        assert rows[GpuKey(T0 + 120, "ded")] == {
            "wall_ms": 10_000,
            "gpu_ms": 20_000,
            "cost_pusd": 13_888_888_888,
        }

    async def test_an_older_or_equal_accrual_adds_nothing(self, store: UsageStore) -> None:
        await store.write(batch(gpu=[accrual(BASE_MS)]))
        await store.write(batch(gpu=[accrual(BASE_MS + 30_000)]))
        await store.write(batch(gpu=[accrual(BASE_MS + 30_000), accrual(BASE_MS + 10_000)]))
        await store.write(batch(gpu=[accrual(BASE_MS + 45_000)]))  # the watermark stayed at +30 s
        assert await read_gpu(store) == {GpuKey(T0, "ded"): gpu_row(30_000, 15_000)}

    async def test_a_gap_longer_than_max_gap_restarts_without_accruing(self, store: UsageStore) -> None:
        await store.write(batch(gpu=[accrual(BASE_MS)]))
        await store.write(batch(gpu=[accrual(BASE_MS + GAP_MS)]))  # exactly max_gap: still accrued
        restart = BASE_MS + 2 * GAP_MS + 1  # a millisecond more: nobody was metering, nothing is billed
        await store.write(batch(gpu=[accrual(restart)]))
        await store.write(batch(gpu=[accrual(restart + 1_000)]))
        rows = await read_gpu(store)
        assert sum(row["wall_ms"] for row in rows.values()) == GAP_MS + 1_000
        assert rows[GpuKey(restart // 60_000 * 60, "ded")] == gpu_row(1_000)

    async def test_two_replicas_sending_overlapping_accruals_count_each_ms_once(self, stores: Stores) -> None:
        replica_a, replica_b = stores.open(), stores.open()
        timeline = [(replica_a, 10_000), (replica_b, 15_000), (replica_a, 30_000), (replica_b, 25_000)]
        timeline += [(replica_b, 70_000), (replica_a, 70_000), (replica_a, 69_000)]
        for replica, offset_ms in timeline:
            await replica.write(batch(gpu=[accrual(BASE_MS + offset_ms)]))
        await replica_a.write(batch(gpu=[accrual(BASE_MS + 80_000)] * 2))  # even twice in one batch
        assert await read_gpu(replica_b) == {
            GpuKey(T0, "ded"): gpu_row(5_000, 15_000, 30_000),
            GpuKey(T0 + 60, "ded"): gpu_row(10_000, 10_000),
        }

    async def test_backends_accrue_independently(self, store: UsageStore) -> None:
        await store.write(batch(gpu=[accrual(BASE_MS, backend="a"), accrual(BASE_MS + 5_000, backend="b")]))
        await store.write(batch(gpu=[accrual(BASE_MS + 10_000, backend=name) for name in ("a", "b")]))
        assert await read_gpu(store) == {GpuKey(T0, "a"): gpu_row(10_000), GpuKey(T0, "b"): gpu_row(5_000)}

    async def test_gpu_cost_stays_exact_for_big_fleets_and_prices(self, store: UsageStore) -> None:
        gpus, price = 999, 333_333_333_333_337  # ~$333 per GPU-hour: products far beyond 2**53
        await store.write(batch(gpu=[accrual(BASE_MS + 1, gpus, price=price)]))
        await store.write(batch(gpu=[accrual(BASE_MS + 119_999, gpus, price=price)]))
        assert await read_gpu(store) == {
            GpuKey(T0, "ded"): gpu_row(59_999, gpus=gpus, price=price),
            GpuKey(T0 + 60, "ded"): gpu_row(59_999, gpus=gpus, price=price),
        }

    # -- request records --------------------------------------------------------------------------------

    async def test_records_round_trip(self, store: UsageStore) -> None:
        full = record(
            T0 + 0.123456789,
            "req-1",
            status=429,
            prompt_tokens=1000,
            cached_tokens=200,
            completion_tokens=30,
            estimated=True,
            ttfb_ms=12,
            latency_ms=340,
            cost_pusd=123_456_789_012_345,
        )
        await store.write(batch(records=[full, record(T0 + 1)]))
        got = await store.records(*ALL_TIME)
        assert got == [full, record(T0 + 1)]
        assert [UsageRecord.from_json(r.to_json()) for r in got] == got

    async def test_records_are_read_since_inclusive_until_exclusive_oldest_first(
        self, store: UsageStore
    ) -> None:
        times = [T0 + offset for offset in (0.0, 1.0, 1.5, 2.0, 3.0, 3.25)]
        shuffled = random.Random(5).sample(times, len(times))  # replicas flush out of order
        await store.write(batch(records=[record(ts) for ts in shuffled[:3]]))
        await store.write(batch(records=[record(ts) for ts in shuffled[3:]]))
        assert [r.ts for r in await store.records(T0 + 1.0, T0 + 3.0)] == [T0 + 1.0, T0 + 1.5, T0 + 2.0]
        assert [r.ts for r in await store.records(T0 + 1.0, T0 + 3.0, limit=2)] == [T0 + 1.0, T0 + 1.5]
        assert [r.ts for r in await store.records(*ALL_TIME, limit=0)] == []
        assert [r.ts for r in await store.records(*ALL_TIME)] == times

    async def test_records_with_equal_timestamps_page_through_in_order(self, store: UsageStore) -> None:
        # Enough to take several pages, with runs of equal ts that straddle page boundaries.
        written = [record(T0 + i // 700, f"req-{i}") for i in range(2_500)]
        await store.write(batch(records=written[:1_300]))
        await store.write(batch(records=written[1_300:]))
        assert await store.records(*ALL_TIME) == written
        assert await store.records(*ALL_TIME, limit=1_500) == written[:1_500]
        assert await store.records(T0 + 1, T0 + 3) == written[700:2_100]

    async def test_the_record_cap_keeps_the_newest(self, stores: Stores, clock: FakeClock) -> None:
        store = stores.open(records_max=5)
        await store.write(batch(records=[record(T0 + s) for s in (3, 1, 4, 2)]))
        clock.advance(61)  # the cap may be applied up to a minute of writes late
        await store.write(batch(records=[record(T0 + s) for s in (8, 5, 7, 6)]))
        assert [r.ts for r in await store.records(*ALL_TIME)] == [T0 + s for s in (4, 5, 6, 7, 8)]

    # -- retention --------------------------------------------------------------------------------------

    async def test_buckets_older_than_the_retention_are_dropped(
        self, stores: Stores, clock: FakeClock
    ) -> None:
        store = stores.open(retention_s=600)
        await store.write(batch({key(T0 - 1200): {"requests": 1}, key(T0 - 300): {"requests": 1}}))
        await store.write(batch(gpu=[accrual((T0 - 360) * 1000)]))
        await store.write(batch(gpu=[accrual((T0 - 240) * 1000)]))
        assert set(await read_aggregates(store)) == {key(T0 - 300)}
        assert set(await read_gpu(store)) == {GpuKey(T0 - 360, "ded"), GpuKey(T0 - 300, "ded")}
        clock.advance(400)  # T0 - 300 is now older than 600 s; the next write prunes it
        await store.write(batch({key(T0 + 360): {"requests": 1}}))
        assert set(await read_aggregates(store)) == {key(T0 + 360)}
        assert await read_gpu(store) == {}

    # -- names ------------------------------------------------------------------------------------------

    async def test_names_with_separators_percent_signs_spaces_and_unicode_round_trip(
        self, store: UsageStore
    ) -> None:
        rotations = [AWKWARD[i:] + AWKWARD[:i] for i in range(len(AWKWARD))]
        keys = [AggKey(T0, *names[:4], "async") for names in rotations]
        first = [accrual(BASE_MS, backend=name) for name in AWKWARD]
        await store.write(batch({k: {"requests": 1} for k in keys}, gpu=first))
        then = [accrual(BASE_MS + 1000, backend=name) for name in AWKWARD]
        await store.write(batch(gpu=then, records=[record(T0, tenant=AWKWARD[0])]))
        assert set(await read_aggregates(store)) == set(keys)
        assert set(await read_gpu(store)) == {GpuKey(T0, name) for name in AWKWARD}
        assert [r.tenant for r in await store.records(*ALL_TIME)] == [AWKWARD[0]]

    async def test_record_text_that_looks_like_a_record_boundary_round_trips(self, store: UsageStore) -> None:
        # The Redis store splits one serialised list of records on the raw text },{"ts": between them.
        tricky = ['},{"ts":1,"x":', "}, {", "]", "\\", "line\nbreak", '{"ts":2}']
        records = [record(T0 + i, tenant=name, model=name, route=name) for i, name in enumerate(tricky)]
        await store.write(batch(records=records))
        assert list(await store.records(*ALL_TIME)) == records

    # -- the sums, for any sequence of batches ----------------------------------------------------------

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(batches=_batches)
    async def test_any_sequence_of_batches_sums_like_a_dict(
        self, stores: Stores, batches: list[Aggregates]
    ) -> None:
        store = stores.open(namespace=stores.fresh_namespace())
        expected: dict[AggKey, Counter[str]] = {}
        for aggregates in batches:
            await store.write(batch(aggregates))
            for agg_key, fields in aggregates.items():
                expected.setdefault(agg_key, Counter()).update(fields)
        # A bucket that never got a non-zero increment does not exist.
        assert await read_aggregates(store) == {k: only(f) for k, f in expected.items() if any(f.values())}

    # -- reachability -----------------------------------------------------------------------------------

    async def test_an_unreachable_store_fails_writes_and_reads_quickly(self, stores: Stores) -> None:
        store: UsageStore = stores.open_unreachable()
        for attempt in (store.write(batch({key(): {"requests": 1}})), store.aggregates(*ALL_TIME)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(attempt, timeout=5)
            assert time.monotonic() - started < 2


class TestCoordination:
    """``Coordination``: locks for singleton work across replicas, and who is alive."""

    async def test_a_lock_is_held_by_one_owner_at_a_time_and_renewed_by_it(self, stores: Stores) -> None:
        a, b = stores.open(), stores.open()  # two replicas on one store
        assert await a.try_lock("advisor", "replica-a", 30)
        assert not await b.try_lock("advisor", "replica-b", 30)
        assert await a.try_lock("advisor", "replica-a", 30), "the holder renews"
        await b.release_lock("advisor", "replica-b")  # not the holder: ignored
        assert not await b.try_lock("advisor", "replica-b", 30)
        await a.release_lock("advisor", "replica-a")
        assert await b.try_lock("advisor", "replica-b", 30)
        assert await a.try_lock("other-work", "replica-a", 30), "locks are independent by name"

    async def test_a_lock_whose_holder_died_moves_on_when_it_expires(
        self, stores: Stores, clock: FakeClock
    ) -> None:
        a, b = stores.open(), stores.open()
        assert await a.try_lock("advisor", "replica-a", 30)  # far longer than any round trip
        assert not await b.try_lock("advisor", "replica-b", 30)
        # The holder's last renewal runs out at once, then it dies. SQLite reads the fake clock; Redis expires
        # the key on its own clock, so b tries until the server has seen the millisecond pass.
        assert await a.try_lock("advisor", "replica-a", 0.001)
        clock.advance(1)

        async def b_takes_it() -> None:
            assert await b.try_lock("advisor", "replica-b", 30)

        await eventually(b_takes_it)
        assert not await a.try_lock("advisor", "replica-a", 30)

    async def test_replicas_count_themselves_alive_until_they_stop_beating(
        self, stores: Stores, clock: FakeClock
    ) -> None:
        a, b = stores.open(), stores.open()
        assert await a.heartbeat("replica-a", 6) == 1
        assert await b.heartbeat("replica-b", 6) == 2
        assert await a.heartbeat("replica-a", 6) == 2, "a beat refreshes, it does not add"
        clock.advance(7)  # b stopped beating (killed); a beats on
        assert await a.heartbeat("replica-a", 6) == 1
        assert await b.heartbeat("replica-b", 0) == 1  # leaving: gone at once
        assert await a.heartbeat("replica-a", 6) == 1


class TestDocumentStore:
    """``DocumentStore``: small named documents every replica reads (the latest advice)."""

    async def test_documents_are_kept_replaced_and_shared(self, stores: Stores) -> None:
        a, b = stores.open(), stores.open()
        assert await a.get_document("advice") is None
        await a.put_document("advice", b'{"v": 1, "name": "caf\xc3\xa9"}')
        assert await b.get_document("advice") == b'{"v": 1, "name": "caf\xc3\xa9"}'
        await b.put_document("advice", b'{"v": 2}')
        assert await a.get_document("advice") == b'{"v": 2}'
        assert await a.get_document("other") is None


class TestKeyStore:
    """``KeyStore``: virtual key records, written compare-and-set, every replica reading one version."""

    async def test_a_record_is_made_once_and_every_replica_reads_it(self, stores: Stores) -> None:
        a, b = stores.open(), stores.open()
        assert await a.keys_version() == 0
        assert await a.all_keys() == (0, [])
        assert await a.put_key("key_1", b'{"v": 1}', expected=None)
        assert not await b.put_key("key_1", b'{"v": 2}', expected=None), "made twice"
        assert await b.get_key("key_1") == b'{"v": 1}'
        assert await b.get_key("key_2") is None
        assert await b.all_keys() == (1, [b'{"v": 1}'])

    async def test_a_change_lands_only_on_the_record_it_was_made_from(self, stores: Stores) -> None:
        a, b = stores.open(), stores.open()
        await a.put_key("key_1", b'{"v": 1}', expected=None)
        assert await a.put_key("key_1", b'{"v": 2}', expected=b'{"v": 1}')
        assert not await b.put_key("key_1", b'{"v": 3}', expected=b'{"v": 1}'), "a stale read overwrote"
        assert not await b.put_key("key_9", b'{"v": 1}', expected=b'{"v": 1}'), "changed one never made"
        assert await b.get_key("key_1") == b'{"v": 2}'
        assert await b.keys_version() == 2, "a refused write moved the version"

    async def test_the_version_moves_with_every_write_and_all_keys_reads_it_with_them(
        self, stores: Stores
    ) -> None:
        store = stores.open()
        bodies = {f"key_{i}": f'{{"n": {i}, "name": "caf\u00e9 ü"}}'.encode() for i in range(5)}
        for n, (key_id, body) in enumerate(bodies.items(), 1):
            await store.put_key(key_id, body, expected=None)
            assert await store.keys_version() == n
        version, records = await stores.open().all_keys()
        assert version == 5
        assert sorted(records) == sorted(bodies.values())

    async def test_racing_writers_to_one_record_land_exactly_one_each_round(self, stores: Stores) -> None:
        writers = [stores.open() for _ in range(4)]
        await writers[0].put_key("key_1", b"0", expected=None)
        for round_ in range(5):
            current = str(round_).encode()
            won = await asyncio.gather(
                *(
                    w.put_key("key_1", f"{round_ + 1}-{i}".encode(), expected=current)
                    for i, w in enumerate(writers)
                )
            )
            assert sum(won) == 1
            winner = won.index(True)
            assert await writers[0].get_key("key_1") == f"{round_ + 1}-{winner}".encode()
            await writers[0].put_key(
                "key_1", str(round_ + 1).encode(), expected=f"{round_ + 1}-{winner}".encode()
            )


def hold(
    budget_id: str = "key:k1:30d", limit: int = 100, *, oldest: int = T0, bucket: int = T0, hard: bool = True
) -> BudgetHold:
    return BudgetHold(budget_id, limit, oldest, bucket, ttl_s=86400, hard=hard)


async def reserve(
    store: BudgetStore, holds: list[BudgetHold], reservation: str, amount: int, *, until: float, now: float
) -> Reserved:
    """One reservation, alone in its round trip."""
    [reserved] = await store.reserve_many([(holds, reservation, amount, until)], now)
    return reserved


async def settle(
    store: BudgetStore,
    holds: list[BudgetHold],
    reservation: str,
    spent: int,
    *,
    now: float,
    draw_down: bool = False,
) -> list[int]:
    """One settlement, alone in its round trip."""
    return await store.settle_many([Settlement(holds, reservation, spent, draw_down)], now)


class TestBudgetStore:
    """``BudgetStore``: reservations against limits, all or none, settled to what was spent; nano-USD."""

    async def test_a_reservation_is_taken_while_it_fits_and_refused_once_it_would_pass_the_limit(
        self, store: MeterStore
    ) -> None:
        budget = [hold(limit=100)]
        assert await reserve(store, budget, "r1", 60, until=T0 + 60, now=T0) == Reserved(True, None, [60])
        assert await reserve(store, budget, "r2", 41, until=T0 + 60, now=T0) == Reserved(False, 0, [60])
        assert await reserve(store, budget, "r3", 40, until=T0 + 60, now=T0) == Reserved(True, None, [100])
        assert await reserve(store, budget, "r4", 1, until=T0 + 60, now=T0) == Reserved(False, 0, [100]), (
            "a budget whose count reached its limit takes nothing more (>= at the limit)"
        )

    async def test_settling_replaces_the_reservation_with_what_was_spent(self, stores: Stores) -> None:
        a, b = stores.open(), stores.open()
        budget = [hold(limit=100)]
        await reserve(a, budget, "r1", 60, until=T0 + 60, now=T0)
        assert await settle(b, budget, "r1", 25, now=T0 + 1) == [25]
        assert await a.counted(budget, now=T0 + 2) == [25]
        assert (await reserve(b, budget, "r2", 75, until=T0 + 60, now=T0 + 2)).taken
        assert await settle(a, budget, "r2", 0, now=T0 + 3) == [25], "a failed request spends nothing"

    async def test_a_reservation_is_held_on_every_budget_or_on_none(self, store: MeterStore) -> None:
        key, tenant = hold("key:k1:30d", 100), hold("tenant:acme:day", 50)
        await reserve(store, [tenant], "other", 30, until=T0 + 60, now=T0)
        refused = await reserve(store, [key, tenant], "r1", 30, until=T0 + 60, now=T0)
        assert refused == Reserved(False, 1, [0, 30])
        assert await store.counted([key, tenant], now=T0) == [0, 30], "the key held nothing"
        assert await reserve(store, [key, tenant], "r2", 20, until=T0 + 60, now=T0) == Reserved(
            True, None, [20, 50]
        )

    async def test_a_soft_budget_counts_but_never_refuses(self, store: MeterStore) -> None:
        soft = [hold(limit=10, hard=False)]
        assert await reserve(store, soft, "r1", 50, until=T0 + 60, now=T0) == Reserved(True, None, [50])
        assert await settle(store, soft, "r1", 70, now=T0) == [70]

    async def test_a_reservation_never_settled_lets_go_when_its_time_is_up(self, store: MeterStore) -> None:
        budget = [hold(limit=100)]
        await reserve(store, budget, "dead-replica", 90, until=T0 + 900, now=T0)
        assert not (await reserve(store, budget, "r1", 20, until=T0 + 960, now=T0 + 60)).taken
        assert await store.counted(budget, now=T0 + 900) == [90], "held until its time, inclusive"
        assert await reserve(store, budget, "r1", 20, until=T0 + 960, now=T0 + 901) == Reserved(
            True, None, [20]
        )
        assert await settle(store, budget, "dead-replica", 90, now=T0 + 902) == [110], (
            "a late settlement still counts what was spent"
        )

    async def test_spend_leaves_the_window_bucket_by_bucket(self, store: MeterStore) -> None:
        for hour in range(3):
            now = T0 + hour * 3600
            await reserve(store, [hold(bucket=now)], f"r{hour}", 10, until=now + 60, now=now)
            await settle(store, [hold(bucket=now)], f"r{hour}", 10 + hour, now=now)
        assert await store.counted([hold(oldest=T0)], now=T0 + 7200) == [33]
        assert await store.counted([hold(oldest=T0 + 3600)], now=T0 + 7200) == [23]
        assert await store.counted([hold(oldest=T0 + 7200)], now=T0 + 7200) == [12]
        assert await store.counted([hold(oldest=T0)], now=T0 + 7200) == [12], (
            "older buckets are gone for good"
        )

    async def test_reservations_sent_together_are_taken_in_turn_each_all_or_none(
        self, store: MeterStore
    ) -> None:
        key, tenant = hold("key:k1:30d", 100), hold("tenant:acme:day", 50)
        asks = [
            ([key, tenant], "r1", 30, T0 + 60),
            ([tenant], "r2", 30, T0 + 60),
            ([key, tenant], "r3", 20, T0 + 60),
        ]
        assert await store.reserve_many(asks, now=T0) == [
            Reserved(True, None, [30, 30]),
            Reserved(False, 0, [30]),
            Reserved(True, None, [50, 50]),
        ]
        counts = await store.settle_many(
            [Settlement([key, tenant], "r1", 10), Settlement([key, tenant], "r3", 0)], now=T0
        )
        assert counts == [30, 30, 10, 10]
        assert await store.counted([key, tenant], now=T0) == [10, 10]

    async def test_a_batch_hold_is_drawn_down_by_each_answer_never_below_0_and_let_go_at_the_end(
        self, stores: Stores
    ) -> None:
        """A batch reserves its lines' worst case at once; each line's answer adds what it spent and takes
        as much off the hold, so every nano-dollar counts once; the rest is released when the batch ends."""
        a, b = stores.open(), stores.open()
        key, tenant = hold("key:k1:30d", 1000), hold("tenant:acme:day", 1000)
        both = [key, tenant]
        assert (await reserve(a, both, "batch:b1", 300, until=T0 + 86400, now=T0)).taken
        assert await settle(b, both, "batch:b1", 120, now=T0 + 1, draw_down=True) == [300, 300], (
            "120 spent, 180 still held"
        )
        assert await settle(a, both, "batch:b1", 100, now=T0 + 2, draw_down=True) == [300, 300]
        assert await settle(b, both, "batch:b1", 130, now=T0 + 3, draw_down=True) == [350, 350], (
            "a line past the hold's rest: the hold stops at 0, the spend counts in full"
        )
        assert await settle(a, both, "batch:b1", 10, now=T0 + 4, draw_down=True) == [360, 360]
        assert await reserve(b, both, "r1", 640, until=T0 + 60, now=T0 + 5) == Reserved(
            True, None, [1000, 1000]
        )
        await settle(b, both, "r1", 0, now=T0 + 6)
        assert await settle(a, both, "batch:b1", 0, now=T0 + 7) == [360, 360], "released: nothing was left"
        assert await settle(b, both, "batch:b1", 40, now=T0 + 8, draw_down=True) == [400, 400], (
            "a line answered after the batch ended draws nothing down and still counts"
        )

    async def test_a_batch_hold_released_early_leaves_only_what_was_spent(self, store: MeterStore) -> None:
        budget = [hold(limit=1000)]
        await reserve(store, budget, "batch:b1", 600, until=T0 + 86400, now=T0)
        await settle(store, budget, "batch:b1", 50, now=T0 + 1, draw_down=True)
        assert await store.counted(budget, now=T0 + 1) == [600]
        assert await settle(store, budget, "batch:b1", 0, now=T0 + 2) == [50], "cancelled: the rest goes"
        assert await store.counted(budget, now=T0 + 3) == [50]

    async def test_a_drawn_down_hold_still_lapses_at_its_time(self, store: MeterStore) -> None:
        budget = [hold(limit=1000)]
        await reserve(store, budget, "batch:b1", 600, until=T0 + 100, now=T0)
        assert await settle(store, budget, "batch:b1", 200, now=T0 + 50, draw_down=True) == [600]
        assert await store.counted(budget, now=T0 + 100) == [600], "held until its time, inclusive"
        assert await store.counted(budget, now=T0 + 101) == [200], "nobody ended the batch: it lapsed"
        assert await settle(store, budget, "batch:b1", 30, now=T0 + 102, draw_down=True) == [230], (
            "a lapsed hold is not brought back by a line drawing it down"
        )

    async def test_replicas_racing_for_the_last_of_a_budget_never_pass_it(self, stores: Stores) -> None:
        replicas = [stores.open() for _ in range(4)]
        budget = [hold(limit=1000)]
        taken = await asyncio.gather(
            *(reserve(replicas[i % 4], budget, f"r{i}", 70, until=T0 + 60, now=T0) for i in range(40))
        )
        assert sum(r.taken for r in taken) == 14  # 14 x 70 = 980; a 15th would pass 1000
        assert await replicas[0].counted(budget, now=T0) == [980]


@pytest.fixture
def lifecycle(store: MeterStore) -> Lifecycle:
    return store


@pytest.fixture
def unreachable(stores: Stores) -> Lifecycle:
    return stores.open_unreachable()


class TestMeterStoreLifecycle(LifecycleContract):
    """The meter stores' lifecycle."""


_engine_keys = st.builds(
    EngineKey, minute=st.sampled_from([T0, T0 + 60, T0 + 3600]), backend=st.sampled_from(["ded", "b:ü %"])
)
_engine_fields = st.dictionaries(st.sampled_from(list(ENGINE_FIELDS)), st.integers(0, 10**15), max_size=5)
_engine_batches = st.lists(
    st.dictionaries(_engine_keys, _engine_fields, min_size=1, max_size=4), min_size=1, max_size=6
)


class TestUsageStoreEngine:
    """``UsageStore``'s engine buckets: each field merged by its rule, so that every replica scraping the
    same engine may write what it saw."""

    async def test_counters_keep_the_minutes_highest_and_lowest_and_gauges_add_up(
        self, store: UsageStore
    ) -> None:
        first = scrape(prompt_tokens_total=1_000, running=2, kv_cache_usage=0.5)
        await store.write(batch(engine={EngineKey(T0, "ded"): first}))
        later = scrape(prompt_tokens_total=1_250, running=4, kv_cache_usage=0.25, waiting=1)
        await store.write(batch(engine={EngineKey(T0, "ded"): later}))
        [(key_read, fields)] = await store.engine(*ALL_TIME)
        assert key_read == EngineKey(T0, "ded")
        assert fields == engine_row(
            {
                "scrapes": 2,
                "prompt_tokens_max": 1_250,
                "prompt_tokens_min": 1_000,
                "running_milli_n": 2,
                "running_milli_sum": 6_000,
                "running_milli_max": 4_000,
                "waiting_milli_n": 1,
                "waiting_milli_sum": 1_000,
                "waiting_milli_max": 1_000,
                "kv_cache_usage_ppm_n": 2,
                "kv_cache_usage_ppm_sum": 750_000,
                "kv_cache_usage_ppm_max": 500_000,
            }
        )
        # Figures the engine never gave are absent, not 0 (a counter at 0 is a figure like any other).
        assert not {"busy_ms_max", "generation_tokens_min"} & set(fields)

    async def test_a_counter_at_zero_is_kept(self, store: UsageStore) -> None:
        await store.write(batch(engine={EngineKey(T0, "ded"): scrape(busy_seconds_total=0)}))
        [(_, fields)] = await store.engine(*ALL_TIME)
        assert (fields["busy_ms_min"], fields["busy_ms_max"]) == (0, 0)

    async def test_two_replicas_writing_the_same_scrapes_keep_the_same_counters(self, stores: Stores) -> None:
        replica_a, replica_b = stores.open(), stores.open()
        scrapes = [scrape(generation_tokens_total=n, busy_seconds_total=n / 100) for n in (500, 900, 700)]
        for replica in (replica_a, replica_b, replica_a):
            for fields in scrapes:
                await replica.write(batch(engine={EngineKey(T0, "ded"): fields}))
        [(_, fields)] = await replica_b.engine(*ALL_TIME)
        assert (fields["generation_tokens_min"], fields["generation_tokens_max"]) == (500, 900)
        assert (fields["busy_ms_min"], fields["busy_ms_max"]) == (5_000, 9_000)
        assert fields["scrapes"] == 9  # every scrape counts: gauge means stay means

    async def test_a_batch_written_twice_merges_once(self, store: UsageStore) -> None:
        once = batch(engine={EngineKey(T0, "ded"): scrape(running=3)}, batch_id="flush-e")
        await store.write(once)
        await store.write(once)
        [(_, fields)] = await store.engine(*ALL_TIME)
        assert (fields["scrapes"], fields["running_milli_sum"]) == (1, 3_000)

    async def test_engine_buckets_are_read_by_minute_and_kept_apart_by_backend(
        self, store: UsageStore
    ) -> None:
        buckets = {EngineKey(m, b): scrape(running=1) for m in (T0 - 60, T0, T0 + 60) for b in AWKWARD[:3]}
        await store.write(batch(engine=buckets))
        assert {k for k, _ in await store.engine(T0, T0 + 60)} == {EngineKey(T0, b) for b in AWKWARD[:3]}
        assert len(await store.engine(*ALL_TIME)) == 9

    async def test_engine_buckets_older_than_the_retention_are_dropped(
        self, stores: Stores, clock: FakeClock
    ) -> None:
        store = stores.open(retention_s=600)
        await store.write(batch(engine={EngineKey(T0 - 1200, "ded"): scrape(running=1)}))
        await store.write(batch(engine={EngineKey(T0 - 300, "ded"): scrape(running=1)}))
        assert [k.minute for k, _ in await store.engine(*ALL_TIME)] == [T0 - 300]
        clock.advance(400)
        await store.write(batch(engine={EngineKey(T0 + 360, "ded"): scrape(running=1)}))
        assert [k.minute for k, _ in await store.engine(*ALL_TIME)] == [T0 + 360]

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(batches=_engine_batches)
    async def test_any_sequence_of_batches_merges_like_the_rules_say(
        self, stores: Stores, batches: list[dict[EngineKey, dict[str, int]]]
    ) -> None:
        store = stores.open(namespace=stores.fresh_namespace())
        expected: dict[EngineKey, dict[str, int]] = {}
        for buckets in batches:
            await store.write(batch(engine=buckets))
            for engine_key, fields in buckets.items():
                kept = {n: v for n, v in fields.items() if v or ENGINE_FIELDS[n] != "sum"}
                if kept:
                    merge_engine_fields(expected.setdefault(engine_key, {}), kept)
        got = dict(await store.engine(*ALL_TIME))
        assert got == {k: engine_row(f) for k, f in expected.items()}
