"""The advisor in the proxy: evaluate the meter store's traffic every few minutes, once across all replicas.

Each tick, the replica that takes the ``advisor`` lock (held for one interval, never released early: it also
marks the interval as done) reads the window's aggregates, evaluates every workload, and stores the advice
and the stability state as documents. Every other replica reads the stored advice, so the advice API and
the gauges agree everywhere. A replica that dies mid-evaluation loses the lock when the interval ends and
another one evaluates.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from tokenyard.errors import StoreError
from tokenyard.router.advisor import report
from tokenyard.router.advisor.catalog import Catalog
from tokenyard.router.advisor.decide import Advice
from tokenyard.router.advisor.service import evaluate_all, grouping
from tokenyard.router.advisor.traffic import MINUTE_S, TrafficBuilder
from tokenyard.router.advisor.workloads import BusyMinute
from tokenyard.router.config import TokenyardConfig
from tokenyard.router.meter.model import AggKey, GpuKey
from tokenyard.router.meter.store import MeterStore

log = logging.getLogger("tokenyard.advisor")

LOCK = "advisor"
ADVICE_DOC = "advisor:advice"
STATE_DOC = "advisor:state"
FIRST_TICK_S = 2.0  # after start-up: let the meter flush once first
RETRY_S = 5.0


@dataclass(slots=True)
class Evaluation:
    """One evaluation of the store's traffic."""

    advices: list[Advice]
    states: dict[str, dict[str, Any]]
    skipped: list[str]
    generated_at: float
    window_start: int
    window_end: int

    def document(self, replica: str) -> dict[str, Any]:
        """The advice API's body (and what is stored for the other replicas)."""
        return {
            "object": "advice",
            "format": report.FORMAT_VERSION,
            "generated_at": round(self.generated_at, 3),
            "generated_by": replica,
            "window": {"start": self.window_start, "end": self.window_end},
            "workloads": [report.advice_json(a) for a in self.advices],
            "skipped": self.skipped,
        }


def _busy_minutes(
    config: TokenyardConfig,
    rows: list[tuple[AggKey, dict[str, int]]],
    gpu: list[tuple[GpuKey, dict[str, int]]],
) -> dict[str, list[BusyMinute]]:
    """Per model, what its dedicated backends served each minute and how busy their slots were."""
    provisioned = {(key.minute, key.backend): fields for key, fields in gpu}
    served: dict[tuple[str, int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for key, fields in rows:
        backend = config.backends.get(key.backend)
        if backend is None or backend.kind != "dedicated":
            continue
        sums = served[(key.model, key.minute, key.backend)]
        sums[0] += fields["prompt_tokens"]
        sums[1] += fields["cached_tokens"]
        sums[2] += fields["completion_tokens"]
        sums[3] += fields["latency_ms"]
    out: dict[str, list[BusyMinute]] = defaultdict(list)
    for (model, minute, name), (prompt, cached, completion, busy_ms) in served.items():
        backend = config.backends[name]
        accrued = provisioned.get((minute, name))
        if (
            not accrued
            or not accrued["gpu_ms"]
            or not backend.gpus_per_replica
            or not backend.max_concurrency
        ):
            continue
        replica_s = accrued["gpu_ms"] / backend.gpus_per_replica / 1000
        utilization = busy_ms / 1000 / (backend.max_concurrency * replica_s)
        out[model].append(BusyMinute(prompt, cached, completion, utilization, replica_s))
    return out


async def evaluate_store(
    store: MeterStore, config: TokenyardConfig, catalog: Catalog, *, now: float, keep_state: bool
) -> Evaluation:
    """Evaluate the configured window of the store's traffic (advancing the stability state if asked)."""
    start = int(now - config.advisor.window_days * 86400) // MINUTE_S * MINUTE_S
    end = (int(now) // MINUTE_S + 1) * MINUTE_S
    rows = await store.aggregates(start, end)
    gpu = await store.gpu(start, end)
    previous = await _load(store, STATE_DOC) or {}
    # Weeks of minutes are CPU work: a worker thread keeps the event loop (the proxy's requests) moving.
    advices, states, skipped = await asyncio.to_thread(
        _evaluate_rows, config, catalog, rows, gpu, previous, now
    )
    if keep_state:
        await store.put_document(STATE_DOC, orjson.dumps(states))
    return Evaluation(advices, states, skipped, now, start, end)


def _evaluate_rows(
    config: TokenyardConfig,
    catalog: Catalog,
    rows: list[tuple[AggKey, dict[str, int]]],
    gpu: list[tuple[GpuKey, dict[str, int]]],
    previous: dict[str, Any],
    now: float,
) -> tuple[list[Advice], dict[str, dict[str, Any]], list[str]]:
    """The stored aggregates as per-workload traffic, evaluated (on a worker thread)."""
    start = int(now - config.advisor.window_days * 86400) // MINUTE_S * MINUTE_S
    end = (int(now) // MINUTE_S + 1) * MINUTE_S
    # A young store holds less than the window: its series start at the first minute stored.
    start = max(start, min((key.minute for key, _ in rows), default=start))
    workload_of, eligible = grouping(config)
    builder = TrafficBuilder(start, end, workload_of, eligible)
    for key, fields in rows:
        if fields["requests"] or fields["prompt_tokens"] or fields["completion_tokens"]:
            builder.add(
                key.minute,
                model=key.model,
                tenant=key.tenant,
                mode=key.mode,
                requests=fields["requests"],
                prompt=fields["prompt_tokens"],
                cached=fields["cached_tokens"],
                completion=fields["completion_tokens"],
            )
    return evaluate_all(
        builder.workloads,
        config,
        catalog,
        now=now,
        today=datetime.fromtimestamp(now, UTC).date(),
        previous=previous,
        measured=_busy_minutes(config, rows, gpu),
    )


async def _load(store: MeterStore, name: str) -> dict[str, Any] | None:
    body = await store.get_document(name)
    if body is None:
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        log.warning("advisor: the stored %s is not JSON; starting afresh", name)
        return None
    return value if isinstance(value, dict) else None


class AdvisorLoop:
    """The background evaluation and the latest advice, for the advice API and the gauges."""

    def __init__(
        self,
        store: MeterStore,
        config: TokenyardConfig,
        catalog: Catalog,
        *,
        wall: Callable[[], float] = time.time,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.catalog = catalog
        self.wall = wall
        self.replica = replica or f"replica-{uuid.uuid4().hex[:12]}"
        self.latest: dict[str, Any] | None = None  # the advice document, as the API serves it
        self._evaluating = asyncio.Lock()

    async def run(self) -> None:
        """Tick every ``advisor.interval_s`` until cancelled."""
        await asyncio.sleep(FIRST_TICK_S)
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("advisor: the meter store failed (%s); trying again next interval", exc)
            except Exception:
                log.exception("advisor: evaluation failed; trying again next interval")
            # Until some replica has stored advice (the holder may still be evaluating), look again soon.
            interval = self.config.advisor.interval_s
            await asyncio.sleep(interval if self.latest is not None else min(interval, RETRY_S))

    async def tick(self) -> None:
        """Evaluate if this replica takes the lock for the interval; otherwise read what the holder stored."""
        if await self.store.try_lock(LOCK, self.replica, self.config.advisor.interval_s):
            await self.evaluate(keep_state=True)
        else:
            self.latest = await _load(self.store, ADVICE_DOC) or self.latest

    async def evaluate(self, *, keep_state: bool) -> dict[str, Any]:
        """Evaluate now and store the advice; ``keep_state`` advances the stability count (the ticks do)."""
        async with self._evaluating:
            started = time.perf_counter()
            result = await evaluate_store(
                self.store, self.config, self.catalog, now=self.wall(), keep_state=keep_state
            )
            document = result.document(self.replica)
            await self.store.put_document(ADVICE_DOC, orjson.dumps(document))
            self.latest = document
            log.info(
                "advisor: %d workload(s) evaluated in %.2f s",
                len(result.advices),
                time.perf_counter() - started,
            )
            return document
