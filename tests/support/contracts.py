"""Contract mixins that more than one store family runs (huey's idea): a test module subclasses one as a
``Test*`` class and provides the fixtures it names. The mixins are not collected on their own.

Their asserts are rewritten like a test module's (registered in ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tokenyard.errors import StoreUnavailable
from tokenyard.stores.protocols import Lifecycle


class LifecycleContract:
    """``Lifecycle``, for every store: it answers a ping, and when it cannot be reached it says so quickly.

    A mixin (huey's): a test module runs it against its stores by subclassing it and giving the fixtures
    ``lifecycle`` (a store on a fresh namespace) and ``unreachable`` (one nobody answers for).
    """

    async def test_ping_answers(self, lifecycle: Lifecycle) -> None:
        await lifecycle.ping()

    async def test_an_unreachable_store_raises_store_unavailable_quickly(
        self, unreachable: Lifecycle
    ) -> None:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(unreachable.ping(), timeout=5)
        assert time.monotonic() - started < 2
