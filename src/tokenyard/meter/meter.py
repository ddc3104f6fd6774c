"""The meter: usage records aggregated in memory, flushed to the store in batches, off the request path.

``record()`` is the only thing the request path calls: a few integer additions into dicts. A background
task flushes every ``meter.flush_interval_s`` as one ``FlushBatch``. When the store is down the batch is
kept and retried *with the same id* (the store applies an id once, so a write whose reply was lost never
counts twice); new usage keeps aggregating in memory meanwhile (request records up to
``max_pending_records``, then the oldest are dropped and counted). Shutdown flushes everything it can.

Engines report on themselves too: ``record_engine()`` takes one scrape of a backend's engine (from the
capacity room's scraper, every few seconds, never from the request path) and merges it into the minute's
engine bucket by each field's rule (``ENGINE_FIELDS``), flushed with the same batch.

Dedicated backends accrue GPU time for every second they are provisioned, busy or idle: each flush sends
"provisioned with G GPUs until now" and the store's per-backend watermark turns that into GPU-ms exactly
once, however many proxy replicas send it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from tokenyard.config import BackendConfig, MeterConfig
from tokenyard.errors import StoreError
from tokenyard.meter.model import (
    AGG_FIELDS,
    LATENCY_BUCKETS_MS,
    AggKey,
    EngineKey,
    EngineReading,
    FlushBatch,
    GpuAccrual,
    UsageRecord,
    merge_engine_fields,
)
from tokenyard.meter.pricing import gpu_hour_pusd
from tokenyard.meter.shapes import INPUT_EDGES, OUTPUT_EDGES, SHAPE_FIELDS
from tokenyard.meter.store import MeterStore

log = logging.getLogger("tokenyard.meter")

# Positions in an aggregate row (a plain list of ints: cheapest to add into on the hot path).
_REQUESTS, _ERRORS, _ESTIMATED, _PROMPT, _CACHED, _COMPLETION, _CACHE_WRITE, _REASONING = range(8)
_COST, _LATENCY, _TTFB = range(8, 11)
_FIRST_BUCKET = 11
_ROW_WIDTH = len(AGG_FIELDS)
_FIRST_SHAPE = _ROW_WIDTH - len(SHAPE_FIELDS)  # each shape: requests, prompt, completion
_OUTPUT_BUCKETS = len(OUTPUT_EDGES) + 1

TotalsKey = tuple[str, str, str, str, str]  # tenant, model, backend, kind, mode
BucketKey = tuple[int, str, str, str, str, str, str, str]  # an AggKey's fields, as a plain tuple


def add_record(row: list[int], record: UsageRecord) -> None:
    """Add one request record into an aggregate row laid out as ``AGG_FIELDS``."""
    row[_REQUESTS] += 1
    if record.status >= 400:
        row[_ERRORS] += 1
    if record.estimated:
        row[_ESTIMATED] += 1
    row[_PROMPT] += record.prompt_tokens
    row[_CACHED] += record.cached_tokens
    row[_COMPLETION] += record.completion_tokens
    row[_CACHE_WRITE] += record.cache_write_tokens
    row[_REASONING] += record.reasoning_tokens
    row[_COST] += record.cost_pusd
    row[_LATENCY] += record.latency_ms
    row[_TTFB] += record.ttfb_ms
    row[_FIRST_BUCKET + bisect.bisect_left(LATENCY_BUCKETS_MS, record.latency_ms)] += 1
    # shapes.shape_index, spelled out: this runs for every request.
    at = _FIRST_SHAPE + 3 * (
        bisect.bisect_right(INPUT_EDGES, record.prompt_tokens) * _OUTPUT_BUCKETS
        + bisect.bisect_right(OUTPUT_EDGES, record.completion_tokens)
    )
    row[at] += 1
    row[at + 1] += record.prompt_tokens
    row[at + 2] += record.completion_tokens


def _fold_into(totals: dict[TotalsKey, list[int]], aggregates: Mapping[BucketKey, list[int]]) -> None:
    """Sum per-minute aggregate rows into per-label totals (the minute, key and team dropped: a label per
    key would grow /metrics with every key made)."""
    for key, row in aggregates.items():
        labels = key[1:6]
        total = totals.get(labels)
        if total is None:
            totals[labels] = list(row)
        else:
            for i, value in enumerate(row):
                total[i] += value


@dataclass(slots=True)
class _Dedicated:
    gpus_per_replica: int
    replicas: int
    pusd_per_gpu_hour: int
    accounted_until_s: float  # this process's own GPU-time view (for /metrics) runs up to here
    local_gpu_ms: float = 0.0


def _batch_ids() -> Iterator[str]:
    """A flush batch's id: random, so replicas never collide, and numbered within this process.

    A generator function, not an expression: compiled by mypyc (the ``mypyc`` build), a generator
    expression is built as a list, and this one never ends."""
    for n in itertools.count():
        yield f"{os.urandom(6).hex()}-{n}"


class Meter:
    """Aggregates usage in memory and writes it to a ``UsageStore`` in exact, idempotent batches."""

    def __init__(
        self,
        config: MeterConfig,
        backends: Mapping[str, BackendConfig],
        store: MeterStore | None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        # The meter itself writes and closes (UsageStore, Lifecycle); it takes the whole MeterStore
        # because telemetry reaches the store through the meter (usage reads, the dashboard's salt lock).
        self.store = store
        self._wall = wall
        self._batch_ids = _batch_ids()
        self._aggregates: dict[BucketKey, list[int]] = {}
        self._records: deque[UsageRecord] = deque()
        self._accruals: list[GpuAccrual] = []
        self._engine: dict[EngineKey, dict[str, int]] = {}
        self._unsent: FlushBatch | None = None
        self._flushing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._folded: dict[TotalsKey, list[int]] = {}  # flushed aggregates, summed over time
        self.dropped_records = 0
        self.failed_flushes = 0
        self.store_up = True
        now = wall()
        self._last_accrual_s = now
        self.dedicated = {
            name: _Dedicated(b.gpus_per_replica or 0, b.replicas or 0, gpu_hour_pusd(b), now)
            for name, b in backends.items()
            if b.kind == "dedicated"
        }

    # -- the request path ----------------------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        """Count one finished request. Never awaits, never touches the store."""
        # A plain tuple, not an AggKey: this runs once a request, the named view is made once a flush.
        key = (
            int(record.ts) // 60 * 60,
            record.tenant,
            record.model,
            record.backend,
            record.backend_kind,
            record.mode,
            record.key_id,
            record.team,
        )
        row = self._aggregates.get(key)
        if row is None:
            row = self._aggregates[key] = [0] * _ROW_WIDTH
        add_record(row, record)
        if self.store is None:
            return
        if len(self._records) >= self.config.max_pending_records:
            self._records.popleft()
            self.dropped_records += 1
        self._records.append(record)
        if len(self._records) == self.config.flush_records:
            self._wake.set()  # a busy proxy flushes early: records held briefly stay in the CPU's caches

    def totals(self) -> dict[TotalsKey, list[int]]:
        """Everything counted since this process started, per label set (for /metrics)."""
        out = {key: list(row) for key, row in self._folded.items()}
        _fold_into(out, self._aggregates)
        return out

    # -- engines' own figures -------------------------------------------------------------------------

    def record_engine(self, backend: str, reading: EngineReading, wall: float) -> None:
        """Keep one scrape of ``backend``'s engine, taken at ``wall`` (unix s). Never awaits; dropped when
        nothing is stored (there is nowhere to read it back from)."""
        if self.store is None:
            return
        key = EngineKey(int(wall) // 60 * 60, backend)
        row = self._engine.get(key)
        if row is None:
            row = self._engine[key] = {}
        merge_engine_fields(row, reading.fields())

    # -- dedicated capacity --------------------------------------------------------------------------

    def set_replicas(self, backend: str, replicas: int) -> None:
        """Change a dedicated backend's provisioned replicas; accrual follows from now on."""
        dedicated = self.dedicated[backend]
        self._accrue(self._wall())  # everything up to now at the old count
        dedicated.replicas = replicas

    def replicas(self, backend: str) -> int:
        """A dedicated backend's provisioned replicas now."""
        return self.dedicated[backend].replicas

    def _accrue(self, now: float) -> None:
        self._last_accrual_s = now
        until_ms = int(now * 1000)
        for name, d in self.dedicated.items():
            gpus = d.replicas * d.gpus_per_replica
            d.local_gpu_ms += max(0.0, now - d.accounted_until_s) * 1000 * gpus
            d.accounted_until_s = now
            self._accruals.append(
                GpuAccrual(name, until_ms, gpus, d.pusd_per_gpu_hour, self.config.max_gpu_gap_s * 1000)
            )

    # -- flushing ------------------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        """Request records held in memory, not yet in the store."""
        unsent = len(self._unsent.records) if self._unsent else 0
        return len(self._records) + unsent

    def _take_batch(self) -> FlushBatch:
        self._accrue(self._wall())
        batch = FlushBatch(
            next(self._batch_ids),
            {
                AggKey._make(key): dict(zip(AGG_FIELDS, row, strict=True))
                for key, row in self._aggregates.items()
            },
            self._accruals,
            list(self._records),
            self._engine,
        )
        _fold_into(self._folded, self._aggregates)
        self._aggregates, self._accruals, self._engine = {}, [], {}
        self._records.clear()
        return batch

    async def flush(self) -> bool:
        """Write what is pending; False if the store could not take it (it stays pending, nothing lost)."""
        async with self._flushing:
            if self.store is None:
                self._accrue(self._wall())  # keeps this process's GPU-time view (/metrics) current
                _fold_into(self._folded, self._aggregates)
                self._aggregates.clear()
                self._accruals.clear()
                return True
            if self._unsent is None:
                batch = self._take_batch()
                if batch.is_empty():
                    return True
                # Kept until the store confirms, and retried as is: the same id can never count twice,
                # even if this write is cancelled or its reply is lost.
                self._unsent = batch
            if not await self._write(self._unsent):
                # While the batch waits, keep recording provisioned time in steps shorter than the store's
                # max gap, so a long outage is accrued in full once the store is back.
                if self._wall() - self._last_accrual_s >= self.config.max_gpu_gap_s / 2:
                    self._accrue(self._wall())
                return False
            self._unsent = None
            return True

    def _has_pending(self) -> bool:
        return bool(self._unsent or self._aggregates or self._records or self._accruals or self._engine)

    async def _write(self, batch: FlushBatch) -> bool:
        assert self.store is not None
        try:
            async with asyncio.timeout(max(5.0, self.config.flush_interval_s * 5)):
                await self.store.write(batch)
        except (StoreError, TimeoutError) as exc:
            self.failed_flushes += 1
            if self.store_up:
                log.warning("meter store unavailable, holding usage in memory: %s", exc)
            self.store_up = False
            return False
        except Exception:
            # Not the store being away but a batch it can never take (a bug): retrying it would stop all
            # metering behind it, so it is dropped, loudly.
            self.failed_flushes += 1
            self.dropped_records += len(batch.records)
            log.exception("meter: dropped a batch the store cannot take (%d records)", len(batch.records))
            return True
        if not self.store_up:
            log.warning("meter store is back: held usage written")
        self.store_up = True
        return True

    async def run(self) -> None:
        """Flush every ``flush_interval_s``, or sooner once ``flush_records`` are pending, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the flush loop must outlive any one bad flush
                log.exception("meter: flush failed")

    async def close(self, timeout_s: float) -> None:
        """Flush everything, retrying while the store is down for at most ``timeout_s``, then close it."""
        deadline = time.monotonic() + timeout_s
        while True:
            written = await self.flush()
            if written and not self._has_pending():
                break
            if time.monotonic() >= deadline:
                log.error(
                    "meter: store still down at shutdown; %d request records and their aggregates are lost",
                    self.pending_records,
                )
                break
            if not written:
                await asyncio.sleep(min(0.5, self.config.flush_interval_s))
        if self.store is not None:
            await self.store.aclose()
