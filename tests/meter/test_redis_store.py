"""What only the Redis store promises: keys expire or stay bounded, share one slot, and failures are fast."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.support.clocks import T0, FakeClock
from tests.support.stores import Stores
from tests.support.usage_records import BASE_MS, GAP_MS, accrual, batch, key, record, scrape
from tokenyard.errors import StoreError, StoreUnavailable
from tokenyard.meter.model import EngineKey, GpuKey
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.stores.keys import MeterKeys


@pytest.fixture
async def stores(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Stores]:
    """Redis stores only (this module overrides the two-kind fixture)."""
    factory = Stores("redis", tmp_path, clock)
    try:
        yield factory
    finally:
        await factory.close()


async def written_keys(raw: aioredis.Redis, keys: MeterKeys) -> list[str]:
    return [name async for name in raw.scan_iter(match=keys.match_all(), count=1000)]


async def test_every_key_expires_or_is_bounded_and_all_share_one_hash_slot(
    stores: Stores, raw: aioredis.Redis
) -> None:
    keys = MeterKeys(stores.namespace)
    store = stores.open(retention_s=600)
    await store.write(batch({key(): {"requests": 1}}, [accrual(BASE_MS)], [record(T0)]))
    await store.write(batch(gpu=[accrual(BASE_MS + 5_000)], engine={EngineKey(T0, "ded"): scrape(running=1)}))
    names = await written_keys(raw, keys)
    assert len({key_slot(name.encode()) for name in names}) == 1
    ttl_s = {name: await raw.ttl(name) for name in names}
    # No TTL only where size is bounded by pruning (indexes), the cap (records) or is constant (counter).
    assert {name for name, ttl in ttl_s.items() if ttl == -1} == {
        keys.agg_index,
        keys.gpu_index,
        keys.engine_index,
        keys.records,
        keys.record_seq,
    }
    assert 0 < ttl_s[keys.agg(key())] <= 660
    assert 0 < ttl_s[keys.gpu(GpuKey(T0, "ded"))] <= 660
    assert 0 < ttl_s[keys.engine((T0, "ded"))] <= 660
    assert 0 < await raw.pttl(keys.gpu_watermark("ded")) <= GAP_MS + 86_400_000
    assert 86_000 < max(ttl for name, ttl in ttl_s.items() if ":batch:" in name) <= 86_400


async def test_the_indexes_are_pruned_past_the_retention(
    stores: Stores, raw: aioredis.Redis, clock: FakeClock
) -> None:
    keys = MeterKeys(stores.namespace)
    store = stores.open(retention_s=600)
    await store.write(batch({key(T0 - 300): {"requests": 1}, key(T0): {"requests": 1}}))
    # Buckets an older tokenyard indexed (before key and team) are pruned too, though never written now.
    await raw.zadd(keys.legacy_agg_index, {"old-300": T0 - 300, "old": T0})
    clock.advance(400)
    await store.write(batch({key(T0 + 360): {"requests": 1}}))
    assert await raw.zrange(keys.agg_index, 0, -1) == [keys.agg(key(T0)), keys.agg(key(T0 + 360))]
    assert await raw.zrange(keys.legacy_agg_index, 0, -1) == ["old"]
    # The old hash itself goes when its TTL (on Redis's clock) runs out.
    assert 0 < await raw.ttl(keys.agg(key(T0 - 300))) <= 660


async def test_foreign_data_under_the_prefix_is_a_store_error_and_nothing_is_applied(
    stores: Stores, raw: aioredis.Redis
) -> None:
    keys = MeterKeys(stores.namespace)
    store = stores.open()
    await raw.set(keys.agg(key(tenant="z")), "not a hash")
    aggregates = {key(tenant="a"): {"requests": 1}, key(tenant="z"): {"requests": 1}}
    doomed = batch(aggregates, [accrual(BASE_MS)], [record(T0)], batch_id="doomed")
    with pytest.raises(StoreError, match="WRONGTYPE") as caught:
        await store.write(doomed)
    assert not isinstance(caught.value, StoreUnavailable)
    # Redis would not have rolled back a half-applied script: the script checked before writing.
    assert await written_keys(raw, keys) == [keys.agg(key(tenant="z"))]
    await raw.delete(keys.agg(key(tenant="z")))
    await store.write(doomed)  # it was not marked as applied, so it still applies, once
    assert len(await store.aggregates(0, 2**31)) == 2
    assert len(await store.records(0, 2**31)) == 1


async def test_a_cancelled_call_is_never_swallowed(stores: Stores) -> None:
    store = stores.open()
    rng = random.Random(11)

    async def busy() -> None:
        while True:
            await store.ping()

    # Cancel at many random moments: some land just as a command has been sent, where Python 3.11's
    # asyncio.wait_for (inside redis-py) used to drop the cancellation and the task ran on forever.
    for _ in range(300):
        task = asyncio.create_task(busy())
        await asyncio.sleep(rng.uniform(0, 0.002))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, "the cancellation was swallowed"


async def test_a_dropped_connection_is_not_retried(stores: Stores) -> None:
    connections = 0

    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisMeterStore(f"redis://127.0.0.1:{port}/0", retention_s=60, records_max=10)
    try:
        with pytest.raises(StoreUnavailable):
            await store.write(batch({key(): {"requests": 1}}))
        assert connections == 1
    finally:
        await store.aclose()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisMeterStore(
        f"redis://127.0.0.1:{port}/0", retention_s=60, records_max=10, socket_timeout_s=0.2
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert time.monotonic() - started < 1.5
    finally:
        await store.aclose()
        server.close()
        await server.wait_closed()


async def test_data_under_the_keys_spelled_out_by_hand_reads_back(
    stores: Stores, raw: aioredis.Redis
) -> None:
    """The layout is data that outlives a release: keys written by an earlier tokenyard (here by hand, from
    the layout in ``keys.py``) read back through the store, and the store writes to those same names."""
    p = "{" + stores.namespace + "}"
    bucket = f"{p}:agg:{T0}:team%3Aa:llama:ded:dedicated:realtime"
    await raw.hset(bucket, mapping={"requests": 3, "prompt_tokens": 40})
    await raw.zadd(f"{p}:agg:idx", {bucket: T0})
    await raw.hset(f"{p}:gpu:{T0}:ded", mapping={"wall_ms": 1000, "gpu_ms": 8000, "cost_pusd": 5})
    await raw.zadd(f"{p}:gpu:idx", {f"{p}:gpu:{T0}:ded": T0})
    kept = record(T0 + 0.5)
    await raw.zadd(f"{p}:records", {"1".zfill(16) + kept.stored().decode(): kept.ts})
    await raw.set(f"{p}:doc:advisor%3Aadvice", b'{"v": 1}')
    await raw.set(f"{p}:lock:advisor", "replica-old", px=30_000)
    store = stores.open()
    [(agg_key, fields)] = await store.aggregates(0, 2**31)
    assert agg_key == key(tenant="team:a")
    assert (fields["requests"], fields["prompt_tokens"]) == (3, 40)
    assert await store.gpu(0, 2**31) == [
        (GpuKey(T0, "ded"), {"wall_ms": 1000, "gpu_ms": 8000, "cost_pusd": 5})
    ]
    assert await store.records(0, 2**31) == [kept]
    assert await store.get_document("advisor:advice") == b'{"v": 1}'
    assert not await store.try_lock("advisor", "replica-new", 30)
    await store.write(batch({key(tenant="team:a"): {"requests": 1}}, [accrual(BASE_MS)], batch_id="b 1"))
    # Aggregates are written under the layout with key and team; the older bucket is read, never written.
    assert await raw.hget(bucket, "requests") == "3"
    assert await raw.hget(f"{p}:usage:{T0}:team%3Aa:llama:ded:dedicated:realtime::", "requests") == "1"
    [(agg_key, fields)] = await store.aggregates(0, 2**31)  # one bucket, both layouts added up
    assert (agg_key, fields["requests"], fields["prompt_tokens"]) == (key(tenant="team:a"), 4, 40)
    assert await raw.get(f"{p}:gpu:wm:ded") == str(BASE_MS)
    assert await raw.exists(f"{p}:batch:b%201", f"{p}:records:seq") == 1  # no record written: no counter
    await store.heartbeat("replica-a", 6)
    assert await raw.zscore(f"{p}:members", "replica-a") == T0 + 6
