"""``meter.store`` URLs: which store each names, which are refused, and how they are shown in logs."""

from __future__ import annotations

import pytest

from tokenyard.errors import ConfigError
from tokenyard.meter.open_store import open_store, redacted
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.meter.sqlite_store import SqliteMeterStore
from tokenyard.meter.store import MeterStore


def open_url(url: str) -> MeterStore:
    return open_store(url, prefix="tokenyard", retention_s=86_400, records_max=100)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@cache.example:6380/1",
        "unix:///run/redis.sock?db=2",
        "redis+cluster://node-1.example:6379",
        "rediss+cluster://:pw@node-1.example:6380/0",
    ],
)
async def test_redis_urls_open_the_redis_store(url: str) -> None:
    store = open_url(url)
    await store.aclose()
    assert isinstance(store, RedisMeterStore)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///meter.sqlite3", "meter.sqlite3"),
        ("sqlite:///data/meter.sqlite3", "data/meter.sqlite3"),
        ("sqlite:////var/lib/tokenyard/meter.sqlite3", "/var/lib/tokenyard/meter.sqlite3"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
async def test_sqlite_urls_name_a_path_after_the_third_slash(url: str, path: str) -> None:
    store = open_url(url)
    await store.aclose()  # nothing was opened, so nothing was created
    assert isinstance(store, SqliteMeterStore)
    assert store.path == path


@pytest.mark.parametrize(
    ("url", "prefix", "where"),
    [
        ("memcached://localhost", "tokenyard", "meter.store"),
        ("sqlite://meter.db", "tokenyard", "meter.store"),
        ("sqlite:///", "tokenyard", "meter.store"),
        ("redis://localhost:port/0", "tokenyard", "meter.store"),
        ("redis://localhost:6379/0", "a}b", "meter.redis_prefix"),
        ("redis+cluster://localhost:6379/1", "tokenyard", "meter.store"),  # a Cluster has db 0 only
    ],
)
def test_unusable_settings_are_config_errors_named_by_path(url: str, prefix: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url, prefix=prefix, retention_s=86_400, records_max=100)
    assert [path for path, _ in caught.value.problems] == [where]


def test_an_unknown_scheme_does_not_echo_a_password() -> None:
    with pytest.raises(ConfigError) as caught:
        open_url("memcache://user:hunter2@host")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://alice:p%40ss@host/1", "rediss://alice:***@host/1"),
        ("redis://host:6379/0?password=s3cret&db=2", "redis://host:6379/0?password=***&db=2"),
        ("unix://bob:pw@/run/redis.sock?db=0", "unix://bob:***@/run/redis.sock?db=0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:////var/lib/meter.sqlite3", "sqlite:////var/lib/meter.sqlite3"),
        ("redis://:s3cret@[::1", "redis://***"),
        ("redis+cluster://carol:s3cret@node:6379", "redis+cluster://carol:***@node:6379"),
        ("redis+cluster://u:s3/cr#et@node:6379", "redis+cluster://u:***@node:6379"),  # raw '/' and '#'
    ],
)
def test_redacted_hides_passwords_and_nothing_else(url: str, shown: str) -> None:
    assert redacted(url) == shown
