"""Membership: the proxy replicas on one store count each other, and split the backends' caps.

Every ``BEAT_S`` each replica says it is alive (for ``TTL_S``) in the meter store and learns how many are;
every backend's concurrency cap and rate limits are then this replica's share. A replica killed with -9
drops out when its time runs out; one that stops gracefully leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Final

from tokenyard.errors import StoreError
from tokenyard.router.backends import Backend
from tokenyard.router.meter.store import MeterStore

log = logging.getLogger("tokenyard.cluster")

BEAT_S: Final = 2.0
TTL_S: Final = 6.0


class Membership:
    """This replica's heartbeat, and the share of every backend's caps it takes."""

    def __init__(self, store: MeterStore, backends: Callable[[], Mapping[str, Backend]]) -> None:
        self.store = store
        self.backends = backends
        self.member = f"replica-{uuid.uuid4().hex[:12]}"
        self.live = 1

    async def beat(self) -> None:
        """One heartbeat; apply the live count to every backend."""
        live = await self.store.heartbeat(self.member, TTL_S)
        if live != self.live:
            log.info("cluster: %d replica(s) share the backends' caps", live)
        self.live = live
        for backend in self.backends().values():
            backend.set_cluster_size(live)

    async def run(self) -> None:
        """Beat until cancelled; then leave at once, so the others take the whole caps back."""
        try:
            while True:
                # The store down: keep the last share (the others may be cut off as well).
                with contextlib.suppress(StoreError):
                    await self.beat()
                await asyncio.sleep(BEAT_S)
        finally:
            with contextlib.suppress(StoreError):
                await self.store.heartbeat(self.member, 0)
