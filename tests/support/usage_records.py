"""What the meter hands its store, built for tests: aggregate keys, flush batches, GPU accruals and usage
records, with the usual tenant, model and backend unless a test says otherwise.

Times are around ``T0`` (``tests.support.clocks``); ``BASE_MS`` is ``T0`` in milliseconds and ``GAP_MS`` the
longest gap an accrual still bridges.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.clocks import T0
from tokenyard.meter.model import AggKey, EngineKey, EngineReading, FlushBatch, GpuAccrual, UsageRecord

BASE_MS = T0 * 1000
GAP_MS = 900_000
PRICE = 2_500_000_000_000  # $2.50 per GPU-hour in pico-USD
Aggregates = dict[AggKey, dict[str, int]]
EngineBuckets = dict[EngineKey, dict[str, int]]


def key(minute: int = T0, tenant: str = "acme", model: str = "llama", mode: str = "realtime") -> AggKey:
    """The aggregate bucket of one minute for the dedicated backend ``ded``."""
    return AggKey(minute, tenant, model, "ded", "dedicated", mode)


def batch(
    aggregates: Aggregates | None = None,
    gpu: list[GpuAccrual] | None = None,
    records: list[UsageRecord] | None = None,
    batch_id: str | None = None,
    engine: EngineBuckets | None = None,
) -> FlushBatch:
    """A flush batch with a fresh id unless given one (a retry reuses its batch's id)."""
    return FlushBatch(batch_id or uuid.uuid4().hex, aggregates or {}, gpu or [], records or [], engine or {})


def scrape(**figures: float) -> dict[str, int]:
    """One engine scrape's stored fields (``EngineReading`` figures: running=3, prompt_tokens_total=100…)."""
    return EngineReading(**figures).fields()


def accrual(until_ms: int, gpus: int = 8, backend: str = "ded", price: int = PRICE) -> GpuAccrual:
    """A backend's GPUs provisioned up to ``until_ms``, bridging gaps up to ``GAP_MS``."""
    return GpuAccrual(backend, until_ms, gpus, price, GAP_MS)


def record(ts: float, request_id: str = "", **overrides: Any) -> UsageRecord:
    """A successful realtime request's record at ``ts``; its id follows from ``ts`` unless given."""
    fields: dict[str, Any] = {
        "ts": ts,
        "request_id": request_id or f"req-{ts}",
        "tenant": "acme",
        "model": "llama",
        "backend": "ded",
        "backend_kind": "dedicated",
        "mode": "realtime",
        "route": "primary",
        "status": 200,
    }
    return UsageRecord(**(fields | overrides))
