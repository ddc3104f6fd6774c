"""The replicas every proxy replica counts for each dedicated backend, shared through the store.

A replica count set on one proxy replica (``PUT /admin/backends/{name}/replicas``, or a successful
actuation) is written to the ``capacity:replicas`` document; every replica reads it at its membership beat
and applies it to the backend's routing cap and the meter's GPU accrual. The document is read, changed and
written under a short store lock, so two changes at once both land.

A count set this way wins over the config file's ``replicas`` while the file still says what it said
when the count was set (each entry records it as ``config_replicas``): the running deployment was scaled,
the file was not. A redeploy with a changed ``replicas:`` in the file wins over the older entry.

Nothing counts a change before it is published: the admin API answers 503 and the actuator logs a failed
action when the store cannot take it, so no replica reverts another's count at its next beat.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any, Final

import orjson

from tokenyard.errors import StoreError
from tokenyard.stores.documents import read_json_dict
from tokenyard.stores.protocols import CoordinatedDocuments, DocumentStore

# {backend: {"replicas": N, "config_replicas": the file's N then, "at": unix s, "by": member, "source"}}
REPLICAS_DOC: Final = "capacity:replicas"
_LOCK: Final = "capacity:replicas"
_LOCK_TTL_S: Final = 5.0
_LOCK_WAIT_S: Final = 3.0
_LOCK_POLL_S: Final = 0.02


async def published(store: DocumentStore) -> dict[str, dict[str, Any]]:
    """The document: per backend, the count last set and by whom (empty when none was)."""
    return await read_json_dict(store, REPLICAS_DOC) or {}


async def published_replicas(store: DocumentStore, configured: Mapping[str, int | None]) -> dict[str, int]:
    """Per backend, the replica count every proxy replica should count; ``configured``: each backend's
    ``replicas`` in the config file now (an entry set under another file value is stale: the file wins)."""
    counts = {}
    for name, entry in (await published(store)).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("replicas"), int):
            continue
        if entry.get("config_replicas") != configured.get(name):
            continue
        counts[name] = int(entry["replicas"])
    return counts


async def publish_replicas(
    store: CoordinatedDocuments,
    backend: str,
    replicas: int,
    *,
    config_replicas: int | None,
    by: str,
    source: str,
    at: float,
) -> None:
    """Set ``backend``'s count for every proxy replica (``source``: "admin" or "actuator";
    ``config_replicas``: the config file's count now). Raises ``StoreError`` when it could not."""
    owner = f"{by}:{os.urandom(6).hex()}"  # two writers on one replica must not share the lock
    deadline = asyncio.get_running_loop().time() + _LOCK_WAIT_S
    while not await store.try_lock(_LOCK, owner, _LOCK_TTL_S):
        if asyncio.get_running_loop().time() > deadline:
            raise StoreError(f"the {REPLICAS_DOC} document stayed locked for {_LOCK_WAIT_S:g} s")
        await asyncio.sleep(_LOCK_POLL_S)
    try:
        document = await published(store)
        document[backend] = {
            "replicas": replicas,
            "config_replicas": config_replicas,
            "at": at,
            "by": by,
            "source": source,
        }
        await store.put_document(REPLICAS_DOC, orjson.dumps(document))
    finally:
        await store.release_lock(_LOCK, owner)
