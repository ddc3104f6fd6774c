"""The usage store protocol, and the meter store: everything one meter store backend (Redis, SQLite) does.

The meter writes one ``FlushBatch`` at a time from a background task (never from the request path) and
reads aggregates for the usage API, reports and the advisor. The same backends also do coordination and
documents (``stores/protocols.py``): ``MeterStore`` is all of it, for the code that opens a store and hands
it on; consumers ask for the small protocols they use. Every implementation passes the contract tests of
each (``tests/meter/test_store_contract.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenyard.meter.model import AggKey, EngineKey, FlushBatch, GpuKey, UsageRecord
from tokenyard.stores.protocols import BudgetStore, Coordination, DocumentStore, KeyStore, Lifecycle


class UsageStore(Protocol):
    """Where metered usage lives: flush batches in; aggregates, GPU accruals, request records and engine
    readings out."""

    async def write(self, batch: FlushBatch) -> None:
        """Apply a batch atomically and exactly once.

        Aggregate fields are added to what is stored (creating buckets as needed, with the retention TTL);
        GPU accruals advance each backend's watermark (see ``GpuAccrual``); records are appended to the
        capped record log; engine fields are merged into their bucket by each field's rule
        (``ENGINE_FIELDS``: summed, or the larger or the smaller kept), with the retention TTL. A batch
        whose ``id`` was already applied is ignored, so retrying a write whose outcome is unknown is always
        safe.
        """
        ...

    async def aggregates(self, start_minute: int, end_minute: int) -> list[tuple[AggKey, dict[str, int]]]:
        """Every aggregate bucket with ``start_minute <= minute < end_minute`` (unix seconds, minute-aligned).

        Fields are those of ``AGG_FIELDS``; absent ones are 0.
        """
        ...

    async def gpu(self, start_minute: int, end_minute: int) -> list[tuple[GpuKey, dict[str, int]]]:
        """Every GPU accrual bucket with ``start_minute <= minute < end_minute`` (``GPU_FIELDS``)."""
        ...

    async def engine(self, start_minute: int, end_minute: int) -> list[tuple[EngineKey, dict[str, int]]]:
        """Every engine bucket with ``start_minute <= minute < end_minute``: every sum field of
        ``ENGINE_FIELDS`` (0 if absent) and the max/min fields some reading carried (``engine_row``)."""
        ...

    async def records(self, since: float, until: float, limit: int | None = None) -> Sequence[UsageRecord]:
        """Request records with ``since <= ts < until``, oldest first, at most ``limit`` (None: all kept)."""
        ...


class MeterStore(UsageStore, Coordination, DocumentStore, KeyStore, BudgetStore, Lifecycle, Protocol):
    """Everything a meter store backend does: usage, coordination, documents, virtual keys, budgets, its
    lifecycle."""
