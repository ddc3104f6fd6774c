"""The one way every embedded (SQLite) store runs its statements: on a thread of its own, errors mapped.

sqlite3 blocks, so each store owns one worker thread, which also owns the connection: the event loop never
waits on the disk, and no two statements of a store ever race. The file is opened on first use, in WAL
mode, with the store's schema applied.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Self, TypeVar

from tokenyard.errors import StoreError, StoreUnavailable

T = TypeVar("T")

# SQLite result codes (the low byte of sqlite_errorcode) that mean "cannot get at the file right now".
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def select(sql: str, *params: object) -> Callable[[sqlite3.Connection], list[Any]]:
    """A job that runs one query and returns its rows."""
    return lambda conn: conn.execute(sql, params).fetchall()


class SqliteWorker:
    """A SQLite file and the thread its statements run on, and its lifecycle (``ping``, ``aclose``).
    Subclasses give ``schema`` and ``what``."""

    schema: str = ""  # executed on open (CREATE … IF NOT EXISTS)
    what: str = "store"  # how errors name it: "meter store", "job queue"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 2.0) -> None:
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenyard-{self.what}")
        self._closed = False
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(connection)`` on the worker thread, with foreign errors mapped."""
        if self._closed:
            raise StoreUnavailable(f"the SQLite {self.what} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._in_worker, job)

    async def ping(self) -> None:
        """Return if the file can be opened and read; raise ``StoreUnavailable`` if not."""
        await self._run(select("SELECT 1"))

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- on the worker thread ---------------------------------------------------------------------------

    def _in_worker(self, job: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return job(self._conn or self._open())
        except (sqlite3.Error, OSError) as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: sqlite3.Error | OSError) -> StoreError:
        """The store's exception for a foreign one (the caller raises it ``from exc``)."""
        if isinstance(exc, OSError) or (
            isinstance(exc, sqlite3.OperationalError) and (exc.sqlite_errorcode & 0xFF) in _UNAVAILABLE_CODES
        ):
            return StoreUnavailable(f"the SQLite {self.what} is unavailable: {exc}")
        return StoreError(f"the SQLite {self.what} failed: {exc}")

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun and ended explicitly by the store.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            self._set_up(conn, time.monotonic() + self._busy_timeout_s)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _set_up(self, conn: sqlite3.Connection, until: float) -> None:
        """WAL mode, the schema, the migrations; tried again until ``until`` (monotonic) while the file is
        busy. Two processes opening a new file at once can find it so without SQLite's busy wait: turning a
        file to WAL wants an exclusive lock, and SQLite refuses at once rather than deadlock with a
        connection that holds a lock and wants more."""
        while True:
            try:
                # Set only when it is not WAL yet: setting it takes that exclusive lock even when it is.
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(self.schema)
                self._migrate(conn)
                return
            except sqlite3.OperationalError as exc:
                busy = (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() >= until:
                    raise
                time.sleep(random.uniform(0.005, 0.05))  # on the worker thread: the event loop goes on

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring a file written by an older tokenyard up to date (after the schema ran)."""

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
