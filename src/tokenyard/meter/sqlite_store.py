"""The embedded meter store: one SQLite file (WAL) for a single proxy, no server to run.

Statements run on the store's own thread (``sqlite_worker.py``): the event loop never waits on the disk.
A batch is one transaction. Pruning (buckets older than the retention, records beyond ``records_max``,
batch ids older than a day) runs inside a write at most every ``prune_interval_s``, so between prunes a
little more than ``records_max`` records may be kept.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

import orjson

from tokenyard.meter.model import (
    AGG_FIELDS,
    ENGINE_FIELDS,
    GPU_FIELDS,
    AggKey,
    EngineKey,
    FlushBatch,
    GpuAccrual,
    GpuKey,
    UsageRecord,
    engine_row,
)
from tokenyard.stores.protocols import BudgetHold, Reservation, Reserved, Settlement
from tokenyard.stores.sqlite_worker import SqliteWorker, select

_T = TypeVar("_T")

MINUTE_MS: Final = 60_000
MS_PER_HOUR: Final = 3_600_000
BATCH_MEMORY_S: Final = 86_400  # how long an applied batch id is remembered

_DIMS: Final = ("tenant", "model", "backend", "kind", "mode", "key_id", "team")  # an AggKey's, minute aside


def _columns(fields: Sequence[str]) -> str:
    return ", ".join(f'"{name}" INTEGER NOT NULL DEFAULT 0' for name in fields)


def _upsert(table: str, key: Sequence[str], fields: Sequence[str]) -> str:
    """INSERT … ON CONFLICT DO UPDATE that adds every field to the stored row."""
    names = ", ".join([*key, *(f'"{f}"' for f in fields)])
    marks = ", ".join("?" * (len(key) + len(fields)))
    adds = ", ".join(f'"{f}" = "{f}" + excluded."{f}"' for f in fields)
    conflict = ", ".join(key)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {adds}"


def _engine_column(name: str) -> str:
    """An engine field's column: a sum starts at 0; a max/min is NULL until some reading carries it."""
    return f'"{name}" INTEGER NOT NULL DEFAULT 0' if ENGINE_FIELDS[name] == "sum" else f'"{name}" INTEGER'


def _engine_upsert() -> str:
    """INSERT … ON CONFLICT DO UPDATE that merges every engine field by its rule (NULL: not carried)."""
    names = ", ".join(["minute", "backend", *(f'"{f}"' for f in ENGINE_FIELDS)])
    marks = ", ".join("?" * (2 + len(ENGINE_FIELDS)))
    merges = []
    for name, rule in ENGINE_FIELDS.items():
        old, new = f'"{name}"', f'excluded."{name}"'
        if rule == "sum":
            merges.append(f"{old} = {old} + {new}")
        else:  # SQLite's max()/min() of several arguments is NULL if any is: coalesce first
            merges.append(f"{old} = {rule}(coalesce({old}, {new}), coalesce({new}, {old}))")
    return (
        f"INSERT INTO engine ({names}) VALUES ({marks})"
        f" ON CONFLICT (minute, backend) DO UPDATE SET {', '.join(merges)}"
    )


_AGG_TABLE: Final = f"""CREATE TABLE {{table}} (
    minute INTEGER NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL, backend TEXT NOT NULL,
    kind TEXT NOT NULL, mode TEXT NOT NULL, key_id TEXT NOT NULL DEFAULT '', team TEXT NOT NULL DEFAULT '',
    {_columns(AGG_FIELDS)},
    PRIMARY KEY (minute, tenant, model, backend, kind, mode, key_id, team)
) WITHOUT ROWID;"""
_SCHEMA: Final = f"""
{_AGG_TABLE.format(table="IF NOT EXISTS agg")}
CREATE TABLE IF NOT EXISTS gpu (
    minute INTEGER NOT NULL, backend TEXT NOT NULL, {_columns(GPU_FIELDS)},
    PRIMARY KEY (minute, backend)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS engine (
    minute INTEGER NOT NULL, backend TEXT NOT NULL, {", ".join(map(_engine_column, ENGINE_FIELDS))},
    PRIMARY KEY (minute, backend)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gpu_watermark (backend TEXT PRIMARY KEY, ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, ts REAL NOT NULL, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS applied_batches (id TEXT PRIMARY KEY, ts REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_batches_ts ON applied_batches (ts);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (name TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS virtual_keys (id TEXT PRIMARY KEY, body BLOB NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS budget_spend (
    budget TEXT NOT NULL, bucket INTEGER NOT NULL, nusd INTEGER NOT NULL, PRIMARY KEY (budget, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_held (
    budget TEXT NOT NULL, reservation TEXT NOT NULL, nusd INTEGER NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (budget, reservation)
) WITHOUT ROWID;
"""
_AGG_UPSERT: Final = _upsert("agg", ("minute", *_DIMS), AGG_FIELDS)
_GPU_UPSERT: Final = _upsert("gpu", ("minute", "backend"), GPU_FIELDS)
_ENGINE_UPSERT: Final = _engine_upsert()
_ENGINE_SELECT: Final = (
    "SELECT minute, backend, {fields} FROM engine WHERE minute >= ? AND minute < ?".format(
        fields=", ".join(f'"{f}"' for f in ENGINE_FIELDS)
    )
)
_AGG_SELECT: Final = "SELECT minute, {dims}, {fields} FROM agg WHERE minute >= ? AND minute < ?".format(
    dims=", ".join(_DIMS), fields=", ".join(f'"{f}"' for f in AGG_FIELDS)
)
_GPU_SELECT: Final = "SELECT minute, backend, {fields} FROM gpu WHERE minute >= ? AND minute < ?".format(
    fields=", ".join(f'"{f}"' for f in GPU_FIELDS)
)


def _budget_count(conn: sqlite3.Connection, hold: BudgetHold, now: float) -> int:
    """A budget's count: its spend from the oldest bucket counted on, plus the reservations still held
    (older buckets and lapsed reservations are dropped on the way)."""
    conn.execute("DELETE FROM budget_spend WHERE budget = ? AND bucket < ?", (hold.budget_id, hold.oldest))
    conn.execute("DELETE FROM budget_held WHERE budget = ? AND until < ?", (hold.budget_id, now))
    [(spent,)] = conn.execute(
        "SELECT coalesce(sum(nusd), 0) FROM budget_spend WHERE budget = ?", (hold.budget_id,)
    )
    [(held,)] = conn.execute(
        "SELECT coalesce(sum(nusd), 0) FROM budget_held WHERE budget = ?", (hold.budget_id,)
    )
    return int(spent) + int(held)


def _reserve(
    conn: sqlite3.Connection,
    holds: Sequence[BudgetHold],
    reservation: str,
    amount_nusd: int,
    until: float,
    now: float,
) -> Reserved:
    counts = [_budget_count(conn, hold, now) for hold in holds]
    refused = next(
        (i for i, (hold, count) in enumerate(zip(holds, counts, strict=True))
         if hold.hard and count + amount_nusd > hold.limit_nusd),
        None,
    )  # fmt: skip
    if refused is not None:
        return Reserved(False, refused, counts)
    conn.executemany(
        "INSERT OR REPLACE INTO budget_held (budget, reservation, nusd, until) VALUES (?, ?, ?, ?)",
        [(hold.budget_id, reservation, amount_nusd, until) for hold in holds],
    )
    return Reserved(True, None, [count + amount_nusd for count in counts])


def _settle(conn: sqlite3.Connection, settlement: Settlement, now: float) -> list[int]:
    holds, reservation, spent_nusd, draw_down = settlement
    for hold in holds:
        if draw_down:  # what is left of it stays held until its time
            conn.execute(
                "UPDATE budget_held SET nusd = max(0, nusd - ?) WHERE budget = ? AND reservation = ?",
                (spent_nusd, hold.budget_id, reservation),
            )
        else:
            conn.execute(
                "DELETE FROM budget_held WHERE budget = ? AND reservation = ?", (hold.budget_id, reservation)
            )
        if spent_nusd > 0:
            conn.execute(
                "INSERT INTO budget_spend (budget, bucket, nusd) VALUES (?, ?, ?) ON CONFLICT"
                " (budget, bucket) DO UPDATE SET nusd = nusd + excluded.nusd",
                (hold.budget_id, hold.bucket, spent_nusd),
            )
    return [_budget_count(conn, hold, now) for hold in holds]


def _in_transaction(job: Callable[[sqlite3.Connection], _T]) -> Callable[[sqlite3.Connection], _T]:
    """``job`` as one write transaction: IMMEDIATE takes the write lock up front."""

    def run(conn: sqlite3.Connection) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = job(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    return run


def minute_segments(from_ms: int, until_ms: int) -> Iterator[tuple[int, int]]:
    """``(minute, ms)`` pieces of the span from ``from_ms`` to ``until_ms``, split at minute boundaries."""
    while from_ms < until_ms:
        end = min(until_ms, (from_ms // MINUTE_MS + 1) * MINUTE_MS)
        yield from_ms // MINUTE_MS * 60, end - from_ms
        from_ms = end


class SqliteMeterStore(SqliteWorker):
    """``MeterStore`` (usage, coordination, documents) in one SQLite file, for a single proxy (or
    ``:memory:`` for tests and trials)."""

    schema = _SCHEMA
    what = "meter store"

    def __init__(
        self,
        path: str | Path,
        *,
        retention_s: int,
        records_max: int,
        clock: Callable[[], float] = time.time,
        prune_interval_s: float = 60.0,
        busy_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self._retention_s = retention_s
        self._records_max = records_max
        self._clock = clock  # unix seconds; decides what is older than the retention
        self._prune_interval_s = prune_interval_s
        self._pruned_at: float | None = None  # touched only on the worker thread

    async def write(self, batch: FlushBatch) -> None:
        """Apply a batch in one transaction, exactly once (see ``UsageStore.write``)."""
        if not batch.is_empty():
            await self._run(lambda conn: self._write(conn, batch))

    async def aggregates(self, start_minute: int, end_minute: int) -> list[tuple[AggKey, dict[str, int]]]:
        """Every aggregate bucket with ``start_minute <= minute < end_minute``."""
        width = len(AggKey._fields)

        def read(conn: sqlite3.Connection) -> list[tuple[AggKey, dict[str, int]]]:
            # Built on the worker thread: weeks of rows turned into dicts would hold the event loop.
            rows = conn.execute(_AGG_SELECT, (start_minute, end_minute))
            return [(AggKey(*row[:width]), dict(zip(AGG_FIELDS, row[width:], strict=True))) for row in rows]

        return await self._run(read)

    async def gpu(self, start_minute: int, end_minute: int) -> list[tuple[GpuKey, dict[str, int]]]:
        """Every GPU accrual bucket with ``start_minute <= minute < end_minute``."""

        def read(conn: sqlite3.Connection) -> list[tuple[GpuKey, dict[str, int]]]:
            rows = conn.execute(_GPU_SELECT, (start_minute, end_minute))
            return [(GpuKey(*row[:2]), dict(zip(GPU_FIELDS, row[2:], strict=True))) for row in rows]

        return await self._run(read)

    async def engine(self, start_minute: int, end_minute: int) -> list[tuple[EngineKey, dict[str, int]]]:
        """Every engine bucket with ``start_minute <= minute < end_minute`` (see ``UsageStore.engine``)."""

        def read(conn: sqlite3.Connection) -> list[tuple[EngineKey, dict[str, int]]]:
            rows = conn.execute(_ENGINE_SELECT, (start_minute, end_minute))
            return [
                (EngineKey(*row[:2]), engine_row(dict(zip(ENGINE_FIELDS, row[2:], strict=True))))
                for row in rows
            ]

        return await self._run(read)

    async def records(self, since: float, until: float, limit: int | None = None) -> Sequence[UsageRecord]:
        """Request records with ``since <= ts < until``, oldest first, at most ``limit``."""
        sql = "SELECT json FROM records WHERE ts >= ? AND ts < ? ORDER BY ts, id LIMIT ?"
        rows = await self._run(select(sql, since, until, -1 if limit is None else limit))
        return [UsageRecord.from_json(orjson.loads(text)) for (text,) in rows]

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lock ``name`` for ``owner`` (see ``Coordination.try_lock``)."""

        def take(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            taken = conn.execute(
                "INSERT INTO locks (name, owner, expires) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET owner = excluded.owner, expires = excluded.expires"
                " WHERE locks.owner = excluded.owner OR locks.expires <= ?",
                (name, owner, now + ttl_s, now),
            )
            return taken.rowcount > 0

        return await self._run(take)

    async def release_lock(self, name: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it."""
        await self._run(
            lambda conn: conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))
        )

    async def heartbeat(self, member: str, ttl_s: float) -> int:
        """Refresh ``member`` in the live set; count the live."""

        def beat(conn: sqlite3.Connection) -> int:
            now = self._clock()
            conn.execute(
                "INSERT INTO members (name, expires) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET expires = excluded.expires",
                (member, now + ttl_s),
            )
            conn.execute("DELETE FROM members WHERE expires <= ?", (now,))
            count: int = conn.execute("SELECT COUNT(*) FROM members").fetchone()[0]
            return count

        return await self._run(beat)

    async def put_document(self, name: str, body: bytes) -> None:
        """Keep a small named document, replacing any before."""
        sql = (
            "INSERT INTO documents (name, body) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET body = excluded.body"
        )
        await self._run(lambda conn: conn.execute(sql, (name, body)))

    async def get_document(self, name: str) -> bytes | None:
        """A document kept by ``put_document``, or None."""
        rows = await self._run(select("SELECT body FROM documents WHERE name = ?", name))
        return bytes(rows[0][0]) if rows else None

    async def put_key(self, key_id: str, body: bytes, *, expected: bytes | None) -> bool:
        """Keep a key's record if the stored one is ``expected`` (see ``KeyStore.put_key``); the version is
        the highest any record was written at."""

        def put(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT body FROM virtual_keys WHERE id = ?", (key_id,)).fetchone()
            if (None if row is None else bytes(row[0])) != expected:
                return False
            [(version,)] = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM virtual_keys")
            conn.execute(
                "INSERT INTO virtual_keys (id, body, version) VALUES (?, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET body = excluded.body, version = excluded.version",
                (key_id, body, version),
            )
            return True

        # The read and the write as one (another process may share the file).
        return await self._run(_in_transaction(put))

    async def get_key(self, key_id: str) -> bytes | None:
        """The record of ``key_id``, or None."""
        rows = await self._run(select("SELECT body FROM virtual_keys WHERE id = ?", key_id))
        return bytes(rows[0][0]) if rows else None

    async def all_keys(self) -> tuple[int, list[bytes]]:
        """The version and every record, read together."""

        def read(conn: sqlite3.Connection) -> tuple[int, list[bytes]]:
            rows = conn.execute("SELECT body, version FROM virtual_keys").fetchall()
            return max((row[1] for row in rows), default=0), [bytes(row[0]) for row in rows]

        return await self._run(read)

    async def keys_version(self) -> int:
        """The version of the keys: one more with every write."""
        rows = await self._run(select("SELECT coalesce(max(version), 0) FROM virtual_keys"))
        return int(rows[0][0])

    async def reserve_many(self, asks: Sequence[Reservation], now: float) -> list[Reserved]:
        """Several reservations in one transaction, each all or none (see ``BudgetStore.reserve_many``)."""

        def reserve(conn: sqlite3.Connection) -> list[Reserved]:
            return [_reserve(conn, *ask, now) for ask in asks]

        return await self._run(_in_transaction(reserve))

    async def settle_many(self, settlements: Sequence[Settlement], now: float) -> list[int]:
        """Several settlements in one transaction (see ``BudgetStore.settle_many``)."""

        def settle(conn: sqlite3.Connection) -> list[int]:
            return [count for one in settlements for count in _settle(conn, one, now)]

        return await self._run(_in_transaction(settle))

    async def counted(self, holds: Sequence[BudgetHold], now: float) -> list[int]:
        """Each budget's count now."""
        return await self._run(_in_transaction(lambda conn: [_budget_count(conn, h, now) for h in holds]))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """A file written by an older tokenyard lacks the fields added since; they start at 0. Its
        aggregates lack the key and team dimensions, which are in the primary key: the table is rebuilt
        (its rows kept, with no key and no team), in one transaction."""
        for table, fields in (("agg", AGG_FIELDS), ("gpu", GPU_FIELDS), ("engine", tuple(ENGINE_FIELDS))):
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name in fields:
                if name not in present:
                    column = (
                        _engine_column(name) if table == "engine" else f'"{name}" INTEGER NOT NULL DEFAULT 0'
                    )
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        if "key_id" in {row[1] for row in conn.execute("PRAGMA table_info(agg)")}:
            return  # rebuilt already: no write lock taken (every replica opening the file passes here)
        conn.execute("BEGIN IMMEDIATE")  # another process opening the same file waits, then finds it done
        try:
            if "key_id" not in {row[1] for row in conn.execute("PRAGMA table_info(agg)")}:
                kept = ", ".join(["minute", *_DIMS[:5], *(f'"{f}"' for f in AGG_FIELDS)])
                conn.execute("ALTER TABLE agg RENAME TO agg_before_keys")
                conn.execute(_AGG_TABLE.format(table="agg"))
                conn.execute(f"INSERT INTO agg ({kept}) SELECT {kept} FROM agg_before_keys")
                conn.execute("DROP TABLE agg_before_keys")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write(self, conn: sqlite3.Connection, batch: FlushBatch) -> None:
        now = self._clock()
        cutoff = int(now) - self._retention_s
        prune = self._pruned_at is None or now - self._pruned_at >= self._prune_interval_s
        # IMMEDIATE takes the write lock up front, so a busy file fails here, before any work.
        conn.execute("BEGIN IMMEDIATE")
        try:
            marked = conn.execute(
                "INSERT INTO applied_batches (id, ts) VALUES (?, ?) ON CONFLICT DO NOTHING", (batch.id, now)
            )
            if marked.rowcount:  # else: applied before, nothing to do
                self._add_aggregates(conn, batch, cutoff)
                self._merge_engine(conn, batch, cutoff)
                for accrual in batch.gpu:
                    self._accrue(conn, accrual, cutoff)
                conn.executemany(
                    "INSERT INTO records (ts, json) VALUES (?, ?)",
                    [(record.ts, record.stored().decode()) for record in batch.records],
                )
            if prune:
                self._prune(conn, now, cutoff)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # an I/O error may have rolled it back already
                conn.execute("ROLLBACK")
            raise
        if prune:
            self._pruned_at = now

    @staticmethod
    def _add_aggregates(conn: sqlite3.Connection, batch: FlushBatch, cutoff: int) -> None:
        conn.executemany(
            _AGG_UPSERT,
            [
                (*key, *(fields.get(name, 0) for name in AGG_FIELDS))
                for key, fields in batch.aggregates.items()
                # An older bucket would only be pruned again; one with nothing to add is not created.
                if key.minute >= cutoff and any(fields.get(name) for name in AGG_FIELDS)
            ],
        )

    @staticmethod
    def _merge_engine(conn: sqlite3.Connection, batch: FlushBatch, cutoff: int) -> None:
        conn.executemany(
            _ENGINE_UPSERT,
            [
                (
                    *key,
                    *(fields.get(name, 0 if rule == "sum" else None) for name, rule in ENGINE_FIELDS.items()),
                )
                for key, fields in batch.engine.items()
                # As in Redis, a bucket is made only by something to keep: a sum above 0, a max or a min.
                if key.minute >= cutoff
                and any(
                    value or rule != "sum"
                    for name, value in fields.items()
                    if (rule := ENGINE_FIELDS.get(name))
                )
            ],
        )

    @staticmethod
    def _accrue(conn: sqlite3.Connection, accrual: GpuAccrual, cutoff: int) -> None:
        """Advance the backend's watermark to ``until_ms``, accruing the span since (see ``GpuAccrual``)."""
        row = conn.execute("SELECT ms FROM gpu_watermark WHERE backend = ?", (accrual.backend,)).fetchone()
        wm: int | None = None if row is None else row[0]
        if wm is not None and wm >= accrual.until_ms:
            return  # another replica (or this batch, retried) got there first
        if wm is not None and accrual.until_ms - wm <= accrual.max_gap_ms:
            conn.executemany(
                _GPU_UPSERT,
                [
                    (minute, accrual.backend, ms, gpu_ms, gpu_ms * accrual.pusd_per_gpu_hour // MS_PER_HOUR)
                    for minute, ms in minute_segments(wm, accrual.until_ms)
                    for gpu_ms in (ms * accrual.gpus,)
                    if minute >= cutoff
                ],
            )
        conn.execute(
            "INSERT INTO gpu_watermark (backend, ms) VALUES (?, ?)"
            " ON CONFLICT (backend) DO UPDATE SET ms = excluded.ms",
            (accrual.backend, accrual.until_ms),
        )

    def _prune(self, conn: sqlite3.Connection, now: float, cutoff: int) -> None:
        conn.execute("DELETE FROM agg WHERE minute < ?", (cutoff,))
        conn.execute("DELETE FROM gpu WHERE minute < ?", (cutoff,))
        conn.execute("DELETE FROM engine WHERE minute < ?", (cutoff,))
        conn.execute("DELETE FROM applied_batches WHERE ts < ?", (now - BATCH_MEMORY_S,))
        # The newest records_max by ts stay (ties: the later written).
        conn.execute(
            "DELETE FROM records WHERE id IN"
            " (SELECT id FROM records ORDER BY ts DESC, id DESC LIMIT -1 OFFSET ?)",
            (self._records_max,),
        )
