"""Choose the meter store from ``meter.store``'s URL, and show that URL in logs without its password.

- ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS) or
  ``unix://[[user]:password@]/path.sock?db=0``: ``RedisMeterStore``, shared by any number of replicas.
- ``redis+cluster://[[user]:password@]host:port`` (or ``rediss+cluster://``): the same on a Redis Cluster,
  any node of it named. Every key shares one hash tag, so one shard holds a deployment's data.
- ``sqlite:///<path>``: ``SqliteMeterStore`` at ``<path>``, which is everything after the third slash, taken
  literally (as in SQLAlchemy): ``sqlite:///meter.db`` is relative to the working directory,
  ``sqlite:////var/lib/tokenyard/meter.db`` (four slashes) is absolute.
- ``sqlite:///:memory:``: ``SqliteMeterStore`` in memory, gone when the process ends.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tokenyard.config import MeterConfig
from tokenyard.errors import ConfigError
from tokenyard.meter.store import MeterStore
from tokenyard.stores.keys import hash_tag

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
SQLITE_PREFIX = "sqlite:///"
_HIDDEN = "***"


def open_store(url: str, *, prefix: str, retention_s: int, records_max: int) -> MeterStore:
    """The store ``url`` names; nothing is connected or opened until it is first used.

    Each store's module (and its client library) is imported only when a config names it: a proxy's
    resident memory is mostly the code it has loaded.
    """
    scheme = url.partition("://")[0].lower()
    if scheme in REDIS_SCHEMES:
        try:
            hash_tag(prefix)
        except ValueError as exc:
            raise ConfigError([("meter.redis_prefix", str(exc))]) from exc
        from redis.exceptions import RedisClusterException

        from tokenyard.meter.redis_store import RedisMeterStore

        try:
            return RedisMeterStore(url, prefix=prefix, retention_s=retention_s, records_max=records_max)
        except (ValueError, RedisClusterException) as exc:  # redis-py refused the URL (a Cluster: db 0 only)
            raise ConfigError([("meter.store", f"{redacted(url)}: {exc}")]) from exc
    if scheme == "sqlite":
        if not url.startswith(SQLITE_PREFIX) or url == SQLITE_PREFIX:
            raise ConfigError([("meter.store", f"expected sqlite:///<path>, not {url!r}")])
        from tokenyard.meter.sqlite_store import SqliteMeterStore

        return SqliteMeterStore(url[len(SQLITE_PREFIX) :], retention_s=retention_s, records_max=records_max)
    raise ConfigError(
        [
            (
                "meter.store",
                f"unknown store {redacted(url)!r}: use redis://host:port/db, rediss://…, unix:///path.sock, "
                "redis+cluster://host:port, rediss+cluster://…, sqlite:///path or off",
            )
        ]
    )


def open_configured_store(meter: MeterConfig) -> MeterStore:
    """The store a config's ``meter:`` section names, with its prefix, retention and record cap."""
    return open_store(
        meter.store,
        prefix=meter.redis_prefix,
        retention_s=meter.retention_days * 86400,
        records_max=meter.records_max,
    )


def redacted(url: str) -> str:
    """``url`` with any password (``user:password@`` or ``?password=``) replaced by ``***``, for logs."""
    scheme, _, rest = url.partition("://")
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return scheme + "://" + _HIDDEN  # unparseable: show nothing that could be secret
    if password is None and "@" in rest and scheme.lower() != "sqlite":
        # A password with a raw '/', '?' or '#' hides its '@' from urlsplit: hide up to the last '@'.
        userinfo, _, host = rest.rpartition("@")
        return f"{scheme}://{userinfo.partition(':')[0]}:{_HIDDEN}@{host}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    in_query = any(name == "password" for name, _ in pairs)
    if password is None and not in_query:
        return url  # untouched (urlunsplit would normalise sqlite:////abs to sqlite://abs)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{_HIDDEN}@{host}"
    query = parts.query
    if in_query:
        hidden = [(name, _HIDDEN if name == "password" else value) for name, value in pairs]
        query = urlencode(hidden, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
