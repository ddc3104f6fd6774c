"""One evaluation of the meter store's traffic: read the window's buckets, replay them, keep the state.

Run by the advisor's worker process (``worker.py``) for the proxy, and in-process by ``tokenyard advise``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from tokenyard.advisor import report
from tokenyard.advisor.catalog import Catalog
from tokenyard.advisor.decide import Advice
from tokenyard.advisor.live import STATE_DOC, load_document
from tokenyard.advisor.plan import gpu_plans
from tokenyard.advisor.profiles import ProfileError, ProfileKey, load_profiles
from tokenyard.advisor.service import evaluate_all, grouping
from tokenyard.advisor.traffic import MINUTE_S, TrafficBuilder
from tokenyard.advisor.workloads import BusyMinute, first_dedicated
from tokenyard.capacity import envelope, gpu_plan
from tokenyard.capacity.envelope import Capacity
from tokenyard.config import TokenyardConfig
from tokenyard.meter.model import AggKey, GpuKey
from tokenyard.meter.shapes import SHAPE_COUNT
from tokenyard.meter.store import UsageStore
from tokenyard.stores.protocols import DocumentStore


class EvaluationStore(UsageStore, DocumentStore, Protocol):
    """What an evaluation asks of a store: the usage it replays, and the stability state it keeps."""


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


def busy_minutes(
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


def shapes_of(fields: dict[str, int]) -> list[tuple[int, float, float, float]]:
    """A stored bucket's requests by shape: (shape index, requests, prompt, completion) of those it saw."""
    out: list[tuple[int, float, float, float]] = []
    for k in range(SHAPE_COUNT):
        requests = fields.get(f"s{k}_requests", 0)
        if requests:
            out.append((k, requests, fields.get(f"s{k}_prompt", 0), fields.get(f"s{k}_completion", 0)))
    return out


def measured_shapes(config: TokenyardConfig, document: dict[str, Any] | None) -> dict[str, dict[int, float]]:
    """Per model, the output tokens/s per replica its current dedicated backend's envelope shows for each
    request shape with enough data of its own (shape index → tokens/s)."""
    out: dict[str, dict[int, float]] = {}
    for model in config.models:
        name = first_dedicated(config, model)
        if name is None:
            continue
        backend = config.backends[name]
        found = envelope.envelope_shape_capacity(document, name, backend.sla, backend.max_concurrency)
        if found:
            out[model] = found
    return out


def measured_envelopes(config: TokenyardConfig, document: dict[str, Any] | None) -> dict[str, Capacity]:
    """Per model, the capacity per replica its current dedicated backend's measured envelope shows
    (``capacity:envelope``), where that backend has an SLA and a measured level."""
    out: dict[str, Capacity] = {}
    for model in config.models:
        name = first_dedicated(config, model)
        if name is None:
            continue
        backend = config.backends[name]
        measured = envelope.backend_envelope(document, name, backend.sla, backend.max_concurrency).capacity
        if measured is not None:
            out[model] = measured
    return out


async def evaluate_store(
    store: EvaluationStore, config: TokenyardConfig, catalog: Catalog, *, now: float, keep_state: bool
) -> Evaluation:
    """Evaluate the configured window of the store's traffic (advancing the stability state if asked)."""
    start = int(now - config.advisor.window_days * 86400) // MINUTE_S * MINUTE_S
    end = (int(now) // MINUTE_S + 1) * MINUTE_S
    rows = await store.aggregates(start, end)
    gpu = await store.gpu(start, end)
    previous = await load_document(store, STATE_DOC) or {}
    stored_envelope = await load_document(store, envelope.DOCUMENT)
    envelopes = measured_envelopes(config, stored_envelope)
    shapes = measured_shapes(config, stored_envelope)
    try:  # checked when the proxy started; a file that went away since costs its profile, not the advice
        imported = load_profiles(config.advisor)
        unreadable = []
    except ProfileError as exc:
        imported, unreadable = {}, [f"imported capacity profiles not used: {exc}"]
    # A workload younger than the window is replayed from 00:00 UTC of its first request's day (decide.py),
    # not from that request: its quiet first hours count, as its replicas' cost would.
    advices, states, skipped = _evaluate_rows(
        config, catalog, rows, gpu, previous, now, start, end, envelopes, shapes, imported
    )
    skipped += unreadable
    if keep_state:
        await store.put_document(STATE_DOC, orjson.dumps(states))
        # Every replica's router follows it (models with ``routing: plan``); written even when empty, so a
        # model that lost its second GPU type loses its plan.
        document = gpu_plan.plan_document(gpu_plans(config, catalog, advices), now_wall=now)
        await store.put_document(gpu_plan.DOCUMENT, orjson.dumps(document))
    return Evaluation(advices, states, skipped, now, start, end)


def _evaluate_rows(
    config: TokenyardConfig,
    catalog: Catalog,
    rows: list[tuple[AggKey, dict[str, int]]],
    gpu: list[tuple[GpuKey, dict[str, int]]],
    previous: dict[str, Any],
    now: float,
    start: int,
    end: int,
    envelopes: dict[str, Capacity],
    shapes: dict[str, dict[int, float]] | None = None,
    imported: Mapping[ProfileKey, Mapping[int, float]] | None = None,
) -> tuple[list[Advice], dict[str, dict[str, Any]], list[str]]:
    """The stored aggregates of ``[start, end)`` as per-workload traffic, evaluated."""
    workload_of, eligible = grouping(config)
    days = config.advisor.window_days
    basis = f"the last {days:g} days (advisor.window_days)"
    builder = TrafficBuilder(start, end, workload_of, eligible, basis=basis)
    for key, fields in sorted(rows, key=lambda row: row[0].minute):  # in time order: series append
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
                shapes=shapes_of(fields),
            )
    return evaluate_all(
        builder.workloads,
        config,
        catalog,
        now=now,
        today=datetime.fromtimestamp(now, UTC).date(),
        previous=previous,
        measured=busy_minutes(config, rows, gpu),
        envelopes=envelopes,
        shapes=shapes,
        imported=imported,
    )
