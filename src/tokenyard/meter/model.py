"""The meter's data, defined once: a request's usage record, aggregate keys and fields, a flush batch.

Money is integer **pico-USD** (1e-12 USD) everywhere it is stored or summed, so totals are exact: a price of
$0.075 per 1M tokens is 75,000 pico-USD a token. Durations are integer milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import orjson

PUSD_PER_USD = 10**12

# Upper bounds (ms) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS_MS: tuple[int, ...] = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

# Aggregate fields, all integers, all summed when merged.
AGG_FIELDS: tuple[str, ...] = (
    "requests",
    "errors",
    "estimated",  # requests whose tokens were counted locally (the upstream sent no usage)
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_pusd",  # per-token cost; dedicated backends cost GPU time instead (see GPU_FIELDS)
    "latency_ms",  # sum; busy time on the backend
    "ttfb_ms",  # sum of time to first byte
    *(f"le_{bound}" for bound in LATENCY_BUCKETS_MS),
    "le_inf",
)

# GPU accrual fields per minute × dedicated backend, summed.
GPU_FIELDS: tuple[str, ...] = (
    "wall_ms",  # how long the backend was provisioned in this minute (watermarked: counted once)
    "gpu_ms",  # wall_ms × replicas × GPUs per replica
    "cost_pusd",  # gpu_ms × price per GPU-ms
)


class AggKey(NamedTuple):
    """One aggregate bucket: a minute (unix seconds at its start) and the dimensions usage is grouped by."""

    minute: int
    tenant: str
    model: str
    backend: str  # "" when no backend answered
    kind: str  # the backend's kind, "" likewise
    mode: str  # realtime | async


class GpuKey(NamedTuple):
    """One GPU accrual bucket: a minute and a dedicated backend."""

    minute: int
    backend: str


@dataclass(slots=True)
class UsageRecord:
    """What one request used and cost; the meter's unit of truth and the line format of `tokenyard export`."""

    ts: float  # unix seconds when the request finished; stays the first field (redis_store splits on it)
    request_id: str
    tenant: str
    model: str
    backend: str
    backend_kind: str
    mode: str
    route: str  # primary | spillover | fallback | failover | "" (no backend)
    status: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    ttfb_ms: int = 0
    latency_ms: int = 0
    cost_pusd: int = 0
    reason: str = ""  # why this mode: "default", "Prefer: respond-async", "key batch: async", ...

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (``cost_usd`` added for people; ``cost_pusd`` is exact)."""
        out = asdict(self)
        out["cost_usd"] = self.cost_pusd / PUSD_PER_USD
        return out

    def stored(self) -> bytes:
        """The record as the stores keep it: its own fields only, serialised by orjson (~1 µs)."""
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UsageRecord:
        """The inverse of ``to_json`` (extra keys ignored)."""
        return cls(**{name: obj[name] for name in cls.__dataclass_fields__ if name in obj})


@dataclass(frozen=True, slots=True)
class GpuAccrual:
    """A request to the store: the backend was provisioned up to ``until_ms`` with ``gpus`` GPUs.

    The store keeps a watermark per backend and accrues only ``(watermark, until_ms]``, split at minute
    boundaries, so any number of proxy replicas (or a retried batch) can send the same accrual and it counts
    once. A watermark older than ``max_gap_ms`` (no proxy was metering) restarts at ``until_ms`` without
    accruing the gap.
    """

    backend: str
    until_ms: int
    gpus: int  # replicas × GPUs per replica, now
    pusd_per_gpu_hour: int  # cost of a segment: gpu_ms * pusd_per_gpu_hour // 3_600_000 (floor)
    max_gap_ms: int


@dataclass(slots=True)
class FlushBatch:
    """One flush: aggregate increments, GPU accruals and request records, applied atomically, exactly once.

    ``id`` is unique per batch; a store that already applied a batch with this id ignores it, so a flush
    retried after an ambiguous failure (the reply was lost) never counts twice.
    """

    id: str
    aggregates: dict[AggKey, dict[str, int]] = field(default_factory=dict)
    gpu: list[GpuAccrual] = field(default_factory=list)
    records: list[UsageRecord] = field(default_factory=list)

    def is_empty(self) -> bool:
        """Whether there is nothing to write."""
        return not (self.aggregates or self.gpu or self.records)
