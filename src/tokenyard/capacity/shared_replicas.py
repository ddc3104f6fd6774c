"""The replicas every proxy replica counts for each dedicated backend, shared through the store.

A replica count set on one proxy replica (``PUT /admin/backends/{name}/replicas``, or a successful
actuation) is written to the ``capacity:replicas`` document; every replica reads it at its membership beat
and applies it to the backend's routing cap and the meter's GPU accrual. The document is read, changed and
written under a short store lock, so two changes at once both land.

A count set this way wins over the config file's ``replicas`` until it is set again: the running
deployment was scaled, the file was not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import orjson

from tokenyard.errors import StoreError
from tokenyard.stores.protocols import CoordinatedDocuments, DocumentStore

log = logging.getLogger("tokenyard.capacity")

REPLICAS_DOC: Final = "capacity:replicas"  # {backend: {"replicas": N, "at": unix s, "by": member, "source"}}
_LOCK: Final = "capacity:replicas"
_LOCK_TTL_S: Final = 5.0
_LOCK_WAIT_S: Final = 3.0
_LOCK_POLL_S: Final = 0.02


async def published(store: DocumentStore) -> dict[str, dict[str, Any]]:
    """The document: per backend, the count last set and by whom (empty when none was)."""
    body = await store.get_document(REPLICAS_DOC)
    if body is None:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        log.warning("capacity: the stored %s is not JSON; ignored", REPLICAS_DOC)
        return {}
    return value if isinstance(value, dict) else {}


async def published_replicas(store: DocumentStore) -> dict[str, int]:
    """Per backend, the replica count every proxy replica should count."""
    return {
        name: int(entry["replicas"])
        for name, entry in (await published(store)).items()
        if isinstance(entry, dict) and isinstance(entry.get("replicas"), int)
    }


async def publish_replicas(
    store: CoordinatedDocuments, backend: str, replicas: int, *, by: str, source: str, at: float
) -> None:
    """Set ``backend``'s count for every proxy replica (``source``: "admin" or "actuator")."""
    deadline = asyncio.get_running_loop().time() + _LOCK_WAIT_S
    while not await store.try_lock(_LOCK, by, _LOCK_TTL_S):
        if asyncio.get_running_loop().time() > deadline:
            raise StoreError(f"the {REPLICAS_DOC} document stayed locked for {_LOCK_WAIT_S:g} s")
        await asyncio.sleep(_LOCK_POLL_S)
    try:
        document = await published(store)
        document[backend] = {"replicas": replicas, "at": at, "by": by, "source": source}
        await store.put_document(REPLICAS_DOC, orjson.dumps(document))
    finally:
        await store.release_lock(_LOCK, by)
