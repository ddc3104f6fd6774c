"""Keeps the measured envelope across proxy replicas: every replica merges what it measured into the
store document ``capacity:envelope`` under a short lock, and reads back the whole cluster's.

Off the request path: the request path only counts into each backend's ``envelope.Recorder``; this task
takes those counts every ``capacity.envelope.merge_interval_s``. The sums are additive, so merging under
the lock is exact however many replicas write; a replica that cannot take the lock, or reach the store,
keeps its counts for the next round.

At each merge it also records each backend's learned SLA limit per engine replica (``learned_limits``:
the limits that moved from their ceiling) in the document: the SLA limiter holds the load below the knee,
so the limit is the envelope's evidence of where the knee is (see ``envelope``'s docstring), for every
replica and for the advisor, which reads only the document.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tokenyard.capacity import envelope
from tokenyard.capacity.settings import EnvelopeSettings, Sla
from tokenyard.errors import StoreError
from tokenyard.stores.protocols import CoordinatedDocuments

log = logging.getLogger("tokenyard.capacity")

LOCK_TTL_S = 5.0  # a read, a merge and a write: far less; a holder that died frees it soon


class EnvelopeKeeper:
    """Merges this replica's envelope counts into the shared document; holds the latest document."""

    def __init__(
        self,
        store: CoordinatedDocuments,
        recorders: Mapping[str, envelope.Recorder],
        settings: Callable[[], EnvelopeSettings],
        *,
        replica: str,
        wall: Callable[[], float],
        learned_limits: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.store = store
        self.recorders = recorders  # backend name → its recorder (dedicated kinds only)
        self._settings = settings  # the settings in force (a reload may change them)
        self.replica = replica  # the lock's owner
        self.wall = wall
        # Backend name → its learned limit per engine replica, for the backends whose limit moved.
        self.learned_limits = learned_limits
        self.latest: dict[str, Any] | None = None  # the stored document as last read or written

    async def run(self) -> None:
        """Merge every ``merge_interval_s`` until cancelled (then once more, so little is lost)."""
        try:
            while True:
                await asyncio.sleep(self._settings().merge_interval_s)
                try:
                    await self.tick()
                except Exception:  # a bug must not end the envelope for the process's life
                    log.exception("capacity: merging the envelope failed; trying again next round")
        finally:
            with contextlib.suppress(StoreError, asyncio.CancelledError):
                await asyncio.shield(self.tick())

    async def tick(self) -> bool:
        """Merge what was counted since the last tick; True if it was stored (or there was nothing)."""
        deltas = {name: recorder.take() for name, recorder in self.recorders.items()}
        deltas = {name: cells for name, cells in deltas.items() if cells}
        try:
            if not deltas:
                self.latest = await self._read() or self.latest
                return True
            if not await self.store.try_lock(envelope.DOCUMENT, self.replica, LOCK_TTL_S):
                self._give_back(deltas)  # another replica is merging: next round
                return False
            try:
                merged = envelope.merge_document(
                    await self._read(),
                    deltas,
                    now_wall=self.wall(),
                    keep_samples=self._settings().keep_samples,
                    limits=self.learned_limits(),
                )
                await self.store.put_document(envelope.DOCUMENT, orjson.dumps(merged))
            finally:
                await self.store.release_lock(envelope.DOCUMENT, self.replica)
        except StoreError as exc:
            log.warning("capacity: the envelope was not stored (%s); kept for the next round", exc)
            self._give_back(deltas)
            return False
        except BaseException:
            self._give_back(deltas)
            raise
        self.latest = merged
        return True

    def _give_back(self, deltas: Mapping[str, envelope.Cells]) -> None:
        for name, cells in deltas.items():
            self.recorders[name].give_back(cells)

    async def _read(self) -> dict[str, Any] | None:
        body = await self.store.get_document(envelope.DOCUMENT)
        if body is None:
            return None
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            log.warning("capacity: the stored envelope is not JSON; starting afresh")
            return None
        return value if isinstance(value, dict) else None

    def cells(self, name: str) -> envelope.Cells:
        """A backend's cells as the cluster measured them (the last document read), plus this replica's
        counts not merged yet."""
        stored = (self.latest or {}).get("backends") if self.latest else None
        cells = envelope.cells_from_json(stored.get(name) if isinstance(stored, dict) else None)
        recorder = self.recorders.get(name)
        if recorder is not None:
            envelope.add_cells(cells, recorder.peek())
        return cells

    def capacity(self, name: str, sla: Sla | None, ceiling: int | None) -> envelope.Capacity | None:
        """A backend's capacity per replica as the cluster measured it (None: no SLA, or no measured level
        meets it), its knee read off the curve or off the learned limit (this replica's, else the last one
        stored); only a ``Capacity`` with ``enough`` set should replace a catalog figure. For the desired
        replicas: the measured tokens/s per replica at the SLA is its ``aggregate_tokens_per_s``."""
        if sla is None:
            return None
        points = envelope.curve(self.cells(name).items(), sla.percentile)
        return envelope.capacity(points, ceiling, self.learned_limit(name))

    def learned_limit(self, name: str) -> int | None:
        """A backend's learned limit per engine replica: this replica's if it moved, else the last one
        stored (None: none moved). ``envelope.summary`` takes it to agree with ``capacity``."""
        return self.learned_limits().get(name) or envelope.stored_limit(self.latest, name)
