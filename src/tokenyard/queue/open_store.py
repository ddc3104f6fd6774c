"""The job store a config's meter store implies: the same Redis (and prefix), or the same SQLite file."""

from __future__ import annotations

from tokenyard.config import MeterConfig
from tokenyard.meter.open_store import REDIS_SCHEMES, SQLITE_PREFIX
from tokenyard.queue.store import JobStore


def open_job_store(meter: MeterConfig, *, retention_s: int = 7 * 86400) -> JobStore:
    """The async track keeps its jobs where the meter keeps its usage; nothing connects until first used."""
    url = meter.store
    if url.partition("://")[0].lower() in REDIS_SCHEMES:
        from tokenyard.queue.redis_queue import RedisJobStore

        return RedisJobStore(url, prefix=meter.redis_prefix, retention_s=retention_s)
    if url.startswith(SQLITE_PREFIX):
        from tokenyard.queue.sqlite_queue import SqliteJobStore

        return SqliteJobStore(url[len(SQLITE_PREFIX) :], retention_s=retention_s)
    raise ValueError(f"no job store for meter.store {url!r}")
