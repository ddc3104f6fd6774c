"""The advisor in the proxy: evaluate the meter store's traffic every few minutes, once across all replicas.

Each tick, the replica that takes the ``advisor`` lock (held for one interval: it also marks the interval as
done) starts a worker process (``worker.py``) that reads the window's aggregates, evaluates every workload,
and stores the advice and the stability state as documents. Every other replica reads the stored advice, so
the advice API and the gauges agree everywhere. A replica stopped mid-evaluation releases the lock, so the
next replica to look evaluates; one killed loses it when the interval ends. A failed evaluation keeps it:
retrying at once would only fail again on every replica. (A worker stopped between storing the stability
state and the advice lets that interval advance the state twice: at worst a recommendation turns stable one
evaluation early.)

Why a process: replaying weeks of minutes is seconds of CPU. In the proxy's process it would compete for
the GIL with the requests (the event loop stalled up to ~90 ms per evaluation, measured) and stay in its
resident memory; in a child it runs on another core and gives its memory back when it exits. This module
therefore imports none of the cost model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from tokenyard.config import TokenyardConfig
from tokenyard.errors import StoreError
from tokenyard.stores.documents import read_json_dict
from tokenyard.stores.protocols import CoordinatedDocuments, DocumentStore

log = logging.getLogger("tokenyard.advisor")

LOCK = "advisor"
ADVICE_DOC = "advisor:advice"
STATE_DOC = "advisor:state"
FIRST_TICK_S = 2.0  # after start-up: let the meter flush once first
RETRY_S = 5.0


async def load_document(store: DocumentStore, name: str) -> dict[str, Any] | None:
    """A stored JSON document as a dict, or None (absent, or not JSON: a fresh start)."""
    return await read_json_dict(store, name)


def worker_request(config: TokenyardConfig, *, now: float, replica: str, keep_state: bool) -> bytes:
    """What the worker reads on stdin: the config (without the virtual keys, which it does not need)."""
    tree = config.model_dump(mode="json", exclude={"keys"})
    return orjson.dumps({"config": tree, "now": now, "replica": replica, "keep_state": keep_state})


class AdvisorLoop:
    """The background evaluation and the latest advice, for the advice API and the gauges."""

    def __init__(
        self,
        store: CoordinatedDocuments,
        config: Callable[[], TokenyardConfig],
        *,
        replica: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._config = config  # the config in force (a reload may change it)
        self.wall = wall
        self.replica = replica  # this replica's name: the lock owner and the advice's author
        self.latest: dict[str, Any] | None = None  # the advice document, as the API serves it
        self._evaluating = asyncio.Lock()

    @property
    def config(self) -> TokenyardConfig:
        """The config in force."""
        return self._config()

    async def run(self) -> None:
        """Tick every ``advisor.interval_s`` until cancelled."""
        await asyncio.sleep(FIRST_TICK_S)
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("advisor: %s; trying again next interval", exc)
            except Exception:
                log.exception("advisor: evaluation failed; trying again next interval")
            # Until some replica has stored advice (the holder may still be evaluating), look again soon.
            interval = self.config.advisor.interval_s
            await asyncio.sleep(interval if self.latest is not None else min(interval, RETRY_S))

    async def tick(self) -> None:
        """Evaluate if this replica takes the lock for the interval; otherwise read what the holder stored."""
        if await self.store.try_lock(LOCK, self.replica, self.config.advisor.interval_s):
            try:
                await self.evaluate(keep_state=True)
            except asyncio.CancelledError:  # stopping: hand the unfinished interval to another replica
                with contextlib.suppress(StoreError):
                    await self.store.release_lock(LOCK, self.replica)
                raise
        else:
            self.latest = await load_document(self.store, ADVICE_DOC) or self.latest

    async def evaluate(self, *, keep_state: bool) -> dict[str, Any]:
        """Evaluate now in a worker process, which stores the advice; ``keep_state`` advances stability."""
        async with self._evaluating:
            started = time.perf_counter()
            request = worker_request(
                self.config, now=self.wall(), replica=self.replica, keep_state=keep_state
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tokenyard.advisor.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(
                    proc.communicate(request), timeout=self.config.advisor.interval_s
                )
            except BaseException:  # timed out, or the proxy is stopping: do not leave it running
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                raise
            if proc.returncode != 0:
                detail = err.decode(errors="replace").strip().splitlines()
                raise StoreError(
                    f"the evaluation failed: {detail[-1] if detail else f'exit {proc.returncode}'}"
                )
            document: dict[str, Any] = orjson.loads(out)
            self.latest = document
            log.info(
                "advisor: %d workload(s) evaluated in %.2f s",
                len(document["workloads"]),
                time.perf_counter() - started,
            )
            return document
