"""The meter store contract: a small protocol with a Redis and an embedded (SQLite) implementation.

The meter writes one ``FlushBatch`` at a time from a background task (never from the request path) and
reads aggregates for the usage API, reports and the advisor. Every implementation passes the same
contract tests (``tests/meter/test_store_contract.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenyard.meter.model import AggKey, FlushBatch, GpuKey, UsageRecord


class MeterStore(Protocol):
    """Where metered usage lives. Implementations raise ``StoreUnavailable`` when they cannot be reached."""

    async def write(self, batch: FlushBatch) -> None:
        """Apply a batch atomically and exactly once.

        Aggregate fields are added to what is stored (creating buckets as needed, with the retention TTL);
        GPU accruals advance each backend's watermark (see ``GpuAccrual``); records are appended to the
        capped record log. A batch whose ``id`` was already applied is ignored, so retrying a write whose
        outcome is unknown is always safe.
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

    async def records(self, since: float, until: float, limit: int | None = None) -> Sequence[UsageRecord]:
        """Request records with ``since <= ts < until``, oldest first, at most ``limit`` (None: all kept)."""
        ...

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the lock ``name`` for ``owner`` until ``ttl_s`` from now, or renew it if ``owner`` holds it.

        Returns False while someone else holds it. A holder that dies loses it when the time runs out, so
        singleton work (the advisor's evaluation) moves to another replica by itself.
        """
        ...

    async def release_lock(self, name: str, owner: str) -> None:
        """Give the lock up, if ``owner`` holds it (a lock that expired and moved on is left alone)."""
        ...

    async def heartbeat(self, member: str, ttl_s: float) -> int:
        """Say ``member`` (a proxy replica) is alive for ``ttl_s`` more; how many members are alive now.

        A replica that stops beating drops out when its time runs out; ``ttl_s`` 0 leaves at once.
        """
        ...

    async def put_document(self, name: str, body: bytes) -> None:
        """Keep a small named document (the latest advice, the advisor's state), replacing any before."""
        ...

    async def get_document(self, name: str) -> bytes | None:
        """A document kept by ``put_document``, or None."""
        ...

    async def ping(self) -> None:
        """Return if the store answers; raise ``StoreUnavailable`` if not."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and files."""
        ...
