"""The ids tokenyard makes, each made one way: request ids, object ids and this process's replica name.

Random, not seeded (the simulator seeds its own, so simulators with one seed hand out the same ids).
"""

from __future__ import annotations

import os
import random
import uuid

# Request ids need to be unique, not unguessable (they grant nothing): 96 bits from a generator seeded
# from the OS once per process, and again in a forked child, cost no system call a request (os.urandom's
# did: ~0.6 µs of the hot path). Object ids, which name what a key may fetch, stay os.urandom's.
_REQUEST_IDS = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _REQUEST_IDS.seed(os.urandom(32)))


def new_request_id() -> str:
    """A fresh ``x-request-id``: ``req_`` and 24 hex digits, as OpenAI's look."""
    return f"req_{_REQUEST_IDS.getrandbits(96):024x}"


def new_object_id(prefix: str) -> str:
    """A fresh id for a stored object (``file-``, ``batch_``, ``batch_req_``, ``job_``): 24 hex digits."""
    return prefix + os.urandom(12).hex()


def new_replica_id() -> str:
    """A name for this running replica, made once at start-up and handed to every part that needs one
    (heartbeat member, lock owner, queue consumer, the advice document's author)."""
    return f"replica-{uuid.uuid4().hex[:12]}"
