"""The one boundary every Redis-backed store crosses: how it connects, and how redis-py's errors map.

Stores (the meter, the job queue) fail fast and never resend on their own: a failure surfaces at once as
``StoreUnavailable`` or ``StoreError`` and the caller decides (the meter holds its batch, the dispatcher
tries again next tick).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Self

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tokenyard.errors import StoreError, StoreUnavailable

# Transient server states: the store is (briefly) unreachable, not broken.
UNAVAILABLE: Final = (
    rex.ConnectionError,  # includes BusyLoadingError and failed AUTH
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica promoted mid-failover
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.SlotNotCoveredError,  # a Cluster mid-failover
    OSError,
)


# ``redis+cluster://host:port`` names any node of a Redis (or Valkey) Cluster: the client learns the rest
# of the topology from it and follows MOVED and ASK redirects.
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Client = aioredis.Redis | aioredis.RedisCluster


def connect(url: str, *, socket_timeout_s: float) -> Client:
    """A client for ``url`` (nothing connects until first used) that never retries on its own."""
    scheme, _, rest = url.partition("://")
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "health_check_interval": 10,
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
    }
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is not None:
        return aioredis.RedisCluster.from_url(f"{plain}://{rest}", **options)
    return aioredis.Redis.from_url(url, **options)


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Around every redis-py call: its exceptions become the store's (``what`` names the store), and no
    cancellation is lost."""
    task = asyncio.current_task()
    cancels_before = task.cancelling() if task is not None else 0
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"the Redis {what} is unavailable: {exc}") from exc
    except rex.RedisClusterException as exc:
        if isinstance(exc.__cause__, UNAVAILABLE):  # no node of the Cluster could be reached
            raise StoreUnavailable(f"the Redis {what} is unavailable: {exc}") from exc
        raise StoreError(f"the Redis {what} failed: {exc}") from exc  # a bug (e.g. keys across slots)
    except rex.RedisError as exc:
        raise StoreError(f"the Redis {what} failed: {exc}") from exc
    if task is not None and task.cancelling() > cancels_before:
        # redis-py sends through asyncio.wait_for, which on Python 3.11 drops a cancellation that arrives
        # as the send completes: the call returns as if nothing happened and a cancelled task runs on
        # forever. Deliver it here (the stores' writes are idempotent, so one that did land is safe).
        raise asyncio.CancelledError


class RedisBacked:
    """What every Redis-backed store shares: its client, its lifecycle (``ping``, ``aclose``) and use as an
    async context manager. Subclasses give ``what``."""

    what: str = "store"  # how errors name it: "meter store", "job queue"

    def __init__(self, url: str, *, socket_timeout_s: float) -> None:
        self._redis = connect(url, socket_timeout_s=socket_timeout_s)

    async def ping(self) -> None:
        """Return if Redis answers; raise ``StoreUnavailable`` if not."""
        with mapped_errors(self.what):
            await self._redis.ping()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
