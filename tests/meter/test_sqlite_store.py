"""What only the embedded store promises: folder and file appear, in WAL mode; a lock means unavailable."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.clocks import T0
from tests.support.usage_records import batch, key, record
from tokenyard.errors import StoreUnavailable
from tokenyard.meter.model import AGG_FIELDS
from tokenyard.meter.sqlite_store import SqliteMeterStore


async def test_the_folder_and_file_are_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "meter.sqlite3"
    async with SqliteMeterStore(path, retention_s=86_400, records_max=10) as store:
        await store.write(batch({key(): {"requests": 1}}))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_locked_file_is_unavailable_until_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "meter.sqlite3"
    store = SqliteMeterStore(path, retention_s=86_400, records_max=10, busy_timeout_s=0.1)
    await store.ping()  # creates the file
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.write(batch({key(): {"requests": 1}}, batch_id="b1"))
        assert time.monotonic() - started < 1
        other.execute("ROLLBACK")
        await store.write(batch({key(): {"requests": 1}}, batch_id="b1"))
        assert [fields["requests"] for _, fields in await store.aggregates(0, 2**31)] == [1]
    finally:
        other.close()
        await store.aclose()


async def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteMeterStore(":memory:", retention_s=86_400, records_max=10)
    await store.write(batch(records=[record(T0)]))
    assert len(await store.records(0, 2**31)) == 1
    await store.aclose()
    with pytest.raises(StoreUnavailable):
        await store.ping()


def old_file(folder: Path) -> Path:
    """A file as an early tokenyard wrote it: aggregates with one field and no key or team, 5 requests."""
    path = folder / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE agg (minute INTEGER NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,"
            " backend TEXT NOT NULL, kind TEXT NOT NULL, mode TEXT NOT NULL,"
            " requests INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (minute, tenant, model, backend, kind, mode))"
        )
        conn.execute("INSERT INTO agg VALUES (?, 'acme', 'llama', 'ded', 'dedicated', 'realtime', 5)", (T0,))
    return path


async def test_a_file_from_before_new_fields_gains_them_at_zero(tmp_path: Path) -> None:
    path = old_file(tmp_path)
    store = SqliteMeterStore(path, retention_s=10**9, records_max=10)
    try:
        await store.write(batch({key(): {"requests": 1, "le_inf": 1}}))
        [(_, fields)] = await store.aggregates(0, 2**31)
    finally:
        await store.aclose()
    assert fields == {name: {"requests": 6, "le_inf": 1}.get(name, 0) for name in AGG_FIELDS}


async def test_a_file_from_before_key_and_team_keeps_its_usage_under_neither(tmp_path: Path) -> None:
    path = old_file(tmp_path)
    for reopened in range(2):  # the second open finds the table rebuilt already and leaves it be
        store = SqliteMeterStore(path, retention_s=10**9, records_max=10)
        try:
            await store.write(
                batch({key()._replace(key="ci-bot", team="ml"): {"requests": 1}}, batch_id=f"b{reopened}")
            )
            rows = {(k.key, k.team): fields["requests"] for k, fields in await store.aggregates(0, 2**31)}
        finally:
            await store.aclose()
        assert rows == {("", ""): 5, ("ci-bot", "ml"): 1 + reopened}
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "agg_before_keys" not in tables
