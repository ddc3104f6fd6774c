"""The embedded job store: one SQLite file (WAL) for a single proxy.

A job's row carries its state: ``waiting`` → ``claimed`` (by a consumer, at a time; claimable again once
that claim is stale) → ``done``, or ``batch`` (inside a provider batch) until the batch is released.
A result is inserted once (the first wins), in the same transaction that marks its job done.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from tokenyard.queue.model import Job, JobResult, QueueStats, StoredObject
from tokenyard.stores.sqlite_worker import SqliteWorker, select

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, json TEXT NOT NULL, created_at REAL NOT NULL, state TEXT NOT NULL,
    holder TEXT, claimed_at REAL, batch TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;
CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, json TEXT NOT NULL, finished_at REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, tenant TEXT NOT NULL, created_at REAL NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_tenant ON objects (kind, tenant, created_at, id);
"""


class SqliteJobStore(SqliteWorker):
    """``JobStore`` in one SQLite file, for a single proxy (or ``:memory:`` for tests and trials)."""

    schema = _SCHEMA
    what = "job queue"

    def __init__(
        self,
        path: str | Path,
        *,
        retention_s: int = 7 * 86400,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self._retention_s = retention_s  # answered jobs and their results are kept this long
        self._clock = clock  # unix seconds; decides when a claim is stale

    async def enqueue(self, job: Job) -> bool:
        """Keep a job and make it claimable, once per id."""

        def insert(conn: sqlite3.Connection) -> bool:
            added = conn.execute(
                "INSERT INTO jobs (id, json, created_at, state) VALUES (?, ?, ?, 'waiting')"
                " ON CONFLICT DO NOTHING",
                (job.id, job.dumps().decode(), job.created_at),
            )
            return added.rowcount > 0

        return await self._run(insert)

    async def claim(self, consumer: str, count: int, *, stale_after_s: float) -> list[Job]:
        """New jobs, and jobs whose claim went stale, for ``consumer``; oldest first."""

        def take(conn: sqlite3.Connection) -> list[Job]:
            now = self._clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "UPDATE jobs SET state = 'claimed', holder = ?, claimed_at = ? WHERE id IN ("
                    " SELECT id FROM jobs WHERE state = 'waiting'"
                    " OR (state = 'claimed' AND claimed_at <= ?) ORDER BY created_at LIMIT ?)"
                    " RETURNING json",
                    (consumer, now, now - stale_after_s, count),
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return sorted((Job.loads(text) for (text,) in rows), key=lambda j: j.created_at)

        return await self._run(take)

    async def hold_in_batch(self, batch_ref: str, job_ids: Sequence[str]) -> None:
        """The jobs are inside a provider batch: nobody may claim them until it is released."""
        marks = ", ".join("?" * len(job_ids))
        sql = f"UPDATE jobs SET state = 'batch', batch = ? WHERE id IN ({marks}) AND state != 'done'"
        if job_ids:
            await self._run(lambda conn: conn.execute(sql, (batch_ref, *job_ids)))

    async def open_batches(self) -> dict[str, list[str]]:
        """Every provider batch not released yet, with its jobs."""
        rows = await self._run(select("SELECT batch, id FROM jobs WHERE state = 'batch' ORDER BY batch, id"))
        out: dict[str, list[str]] = {}
        for ref, job_id in rows:
            out.setdefault(ref, []).append(job_id)
        return out

    async def release_batch(self, batch_ref: str) -> list[str]:
        """Close a provider batch; its unanswered jobs wait to be claimed again."""
        sql = (
            "UPDATE jobs SET state = 'waiting', batch = NULL, holder = NULL"
            " WHERE batch = ? AND state = 'batch' RETURNING id"
        )
        rows = await self._run(lambda conn: conn.execute(sql, (batch_ref,)).fetchall())
        return sorted(job_id for (job_id,) in rows)

    async def complete(self, result: JobResult) -> bool:
        """Store the first result of a job and mark it done; later ones change nothing."""

        def finish(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                added = conn.execute(
                    "INSERT INTO results (id, json, finished_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (result.job_id, result.dumps().decode(), result.finished_at),
                ).rowcount
                if added:
                    conn.execute(
                        "UPDATE jobs SET state = 'done', holder = NULL, batch = NULL WHERE id = ?",
                        (result.job_id,),
                    )
                    self._prune(conn, now)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return added > 0

        return await self._run(finish)

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        """Answered jobs and their results past the retention go (on the worker thread, in a write)."""
        cutoff = now - self._retention_s
        conn.execute("DELETE FROM results WHERE finished_at < ?", (cutoff,))
        conn.execute("DELETE FROM jobs WHERE state = 'done' AND created_at < ?", (cutoff,))

    async def result(self, job_id: str) -> JobResult | None:
        """A job's result, or None."""
        rows = await self._run(select("SELECT json FROM results WHERE id = ?", job_id))
        return JobResult.loads(rows[0][0]) if rows else None

    async def results_of(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        """The results of those jobs that have one."""

        def read(conn: sqlite3.Connection) -> dict[str, JobResult]:
            out: dict[str, JobResult] = {}
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for job_id, text in conn.execute(
                    f"SELECT id, json FROM results WHERE id IN ({marks})", chunk
                ):
                    out[job_id] = JobResult.loads(text)
            return out

        return await self._run(read)

    async def get(self, job_id: str) -> Job | None:
        """A job by id, or None."""
        rows = await self._run(select("SELECT json FROM jobs WHERE id = ?", job_id))
        return Job.loads(rows[0][0]) if rows else None

    async def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The known jobs among ``job_ids``, in the order asked; one trip to the worker thread, a query
        per 500 ids (SQLite caps a statement's parameters)."""

        def read(conn: sqlite3.Connection) -> dict[str, Job]:
            found: dict[str, Job] = {}
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for job_id, text in conn.execute(f"SELECT id, json FROM jobs WHERE id IN ({marks})", chunk):
                    found[job_id] = Job.loads(text)
            return {i: found[i] for i in job_ids if i in found}

        return await self._run(read) if job_ids else {}

    async def put_object(self, obj: StoredObject) -> None:
        """Keep an object (replacing one of the same kind and id)."""
        sql = "INSERT OR REPLACE INTO objects (kind, id, tenant, created_at, body) VALUES (?, ?, ?, ?, ?)"
        await self._run(
            lambda conn: conn.execute(sql, (obj.kind, obj.id, obj.tenant, obj.created_at, obj.body))
        )

    async def get_object(self, kind: str, obj_id: str) -> StoredObject | None:
        """An object by kind and id, or None."""
        sql = "SELECT kind, id, tenant, created_at, body FROM objects WHERE kind = ? AND id = ?"
        rows = await self._run(select(sql, kind, obj_id))
        return _object(rows[0]) if rows else None

    async def list_objects(
        self, kind: str, tenant: str, *, after: str | None = None, limit: int = 20
    ) -> list[StoredObject]:
        """A tenant's objects of a kind, newest first, after the cursor object."""

        def page(conn: sqlite3.Connection) -> list[StoredObject]:
            where, params = "kind = ? AND tenant = ?", [kind, tenant]
            if after is not None:
                cursor = conn.execute(
                    "SELECT created_at FROM objects WHERE kind = ? AND id = ?", (kind, after)
                )
                found = cursor.fetchone()
                if found is None:
                    return []
                where += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                params += [found[0], found[0], after]
            rows = conn.execute(
                f"SELECT kind, id, tenant, created_at, body FROM objects WHERE {where}"
                " ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [_object(row) for row in rows]

        return await self._run(page)

    async def delete_object(self, kind: str, obj_id: str) -> bool:
        """Forget an object; False if there was none."""
        sql = "DELETE FROM objects WHERE kind = ? AND id = ?"
        deleted = await self._run(lambda conn: conn.execute(sql, (kind, obj_id)).rowcount)
        return bool(deleted)

    async def stats(self) -> QueueStats:
        """Waiting, claimed and batched jobs, and the oldest one waiting or claimed."""
        rows = await self._run(
            select(
                "SELECT state, COUNT(*), MIN(created_at) FROM jobs"
                " WHERE state IN ('waiting', 'claimed', 'batch') GROUP BY state"
            )
        )
        by_state = {state: (n, oldest) for state, n, oldest in rows}
        open_ages = [by_state[s][1] for s in ("waiting", "claimed") if s in by_state]
        return QueueStats(
            waiting=by_state.get("waiting", (0, None))[0],
            claimed=by_state.get("claimed", (0, None))[0],
            in_batches=by_state.get("batch", (0, None))[0],
            oldest_created_at=min(open_ages) if open_ages else None,
        )


def _object(row: tuple[str, str, str, float, bytes]) -> StoredObject:
    kind, obj_id, tenant, created_at, body = row
    return StoredObject(kind, obj_id, tenant, created_at, bytes(body))
