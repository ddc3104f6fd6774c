"""Reading a stored JSON document that should be an object (one way, for every reader of documents)."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from tokenyard.stores.protocols import DocumentStore

log = logging.getLogger("tokenyard.stores")


async def read_json_dict(store: DocumentStore, name: str) -> dict[str, Any] | None:
    """The stored document ``name`` as a dict; None when absent, not JSON or not a JSON object (a
    fresh start: the writer's next put replaces it). Store failures raise ``StoreError``."""
    body = await store.get_document(name)
    if body is None:
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        log.warning("the stored %s is not JSON; ignored", name)
        return None
    return value if isinstance(value, dict) else None
