"""Membership: the proxy replicas on one store count each other, and split the backends' caps.

Every ``BEAT_S`` each replica says it is alive (for ``TTL_S``) in the meter store and learns how many are;
every backend's concurrency cap and rate limits are then this replica's share. A replica killed with -9
drops out when its time runs out; one that stops gracefully leaves at once. The beat also carries config
reloads: ``POST /admin/reload`` on one replica leaves a note in the store that the others act on, and
replica counts: a dedicated backend's replicas set on one replica (the admin API, the actuator) are in the
``capacity:replicas`` document, which every replica applies to its routing caps and GPU accrual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson

from tokenyard.capacity.shared_replicas import published_replicas
from tokenyard.errors import StoreError
from tokenyard.proxy.backends import Backend
from tokenyard.stores.protocols import CoordinatedDocuments

log = logging.getLogger("tokenyard.cluster")

RELOAD_DOC: Final = "cluster:reload"  # {"at": unix s, "by": member}: re-read your config files
BEAT_S: Final = 2.0
TTL_S: Final = 6.0


class Membership:
    """This replica's heartbeat, and the share of every backend's caps it takes."""

    def __init__(
        self,
        store: CoordinatedDocuments,
        backends: Mapping[str, Backend],
        *,
        member: str,
        on_reload: Callable[[], Awaitable[Any]],
        apply_replicas: Callable[[str, int], None] | None = None,
        on_members: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.backends = backends  # by name, fixed until a restart
        self.on_reload = on_reload  # re-read this replica's config (another replica asked for a reload)
        self.apply_replicas = apply_replicas  # count a backend's replicas here (cap, GPU accrual)
        self.on_members = on_members  # told the live count too (keys' own rate limits are shared by it)
        self.member = member  # this replica's name
        self.live = 1
        self._reload_seen: float | None = None

    async def announce_reload(self) -> None:
        """Ask every replica (each at its next beat) to re-read its config."""
        self._reload_seen = time.time()
        await self.store.put_document(RELOAD_DOC, orjson.dumps({"at": self._reload_seen, "by": self.member}))

    async def _check_reload(self) -> None:
        raw = await self.store.get_document(RELOAD_DOC)
        asked: dict[str, Any] = orjson.loads(raw) if raw is not None else {"at": 0.0, "by": ""}
        at = float(asked["at"])
        if self._reload_seen is None:  # at start-up the config was just read: only later asks count
            self._reload_seen = at
        elif at > self._reload_seen:
            self._reload_seen = at
            if asked["by"] != self.member:
                await self.on_reload()

    async def beat(self) -> None:
        """One heartbeat; apply the live count to every backend."""
        live = await self.store.heartbeat(self.member, TTL_S)
        if live != self.live:
            log.info("cluster: %d replica(s) share the backends' caps", live)
        self.live = live
        for backend in self.backends.values():
            backend.set_cluster_size(live)
        if self.on_members is not None:
            self.on_members(live)
        await self._check_reload()
        if self.apply_replicas is not None:
            configured = {name: backend.config.replicas for name, backend in self.backends.items()}
            for name, replicas in (await published_replicas(self.store, configured)).items():
                self.apply_replicas(name, replicas)

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
