"""The ids tokenyard makes, each made one way: request ids, object ids and this process's replica name.

Random, not seeded (the simulator seeds its own, so simulators with one seed hand out the same ids).
"""

from __future__ import annotations

import os
import uuid


def new_request_id() -> str:
    """A fresh ``x-request-id``: ``req_`` and 24 hex digits, as OpenAI's look."""
    return "req_" + os.urandom(12).hex()


def new_object_id(prefix: str) -> str:
    """A fresh id for a stored object (``file-``, ``batch_``, ``batch_req_``, ``job_``): 24 hex digits."""
    return prefix + os.urandom(12).hex()


def new_replica_id() -> str:
    """A name for this running replica, made once at start-up and handed to every part that needs one
    (heartbeat member, lock owner, queue consumer, the advice document's author)."""
    return f"replica-{uuid.uuid4().hex[:12]}"
