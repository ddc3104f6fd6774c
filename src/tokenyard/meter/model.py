"""The meter's data, defined once: a request's usage record, aggregate keys and fields, an engine's reading,
a flush batch.

Money is integer **pico-USD** (1e-12 USD) everywhere it is stored or summed, so totals are exact: a price of
$0.075 per 1M tokens is 75,000 pico-USD a token. Durations are integer milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from tokenyard.meter.shapes import SHAPE_FIELDS

PUSD_PER_USD = 10**12

# Upper bounds (ms) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS_MS: tuple[int, ...] = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

# Aggregate fields, all integers, all summed when merged.
AGG_FIELDS: tuple[str, ...] = (
    "requests",
    "errors",
    "estimated",  # requests whose tokens were counted locally (the upstream sent no usage)
    "prompt_tokens",
    "cached_tokens",  # read from a prompt cache; part of prompt_tokens
    "completion_tokens",
    "cache_write_tokens",  # written into a prompt cache (Anthropic's cache_creation); part of prompt_tokens
    "reasoning_tokens",  # part of completion_tokens, billed as output
    "cost_pusd",  # per-token cost; dedicated backends cost GPU time instead (see GPU_FIELDS)
    "latency_ms",  # sum; busy time on the backend
    "ttfb_ms",  # sum of time to first byte
    *(f"le_{bound}" for bound in LATENCY_BUCKETS_MS),
    "le_inf",
    # Last: requests, prompt and completion tokens per request shape (meter/shapes.py), so the advisor can
    # price each minute by its own mix of shapes. A bucket stores only the shapes it saw.
    *SHAPE_FIELDS,
)

# GPU accrual fields per minute × dedicated backend, summed.
GPU_FIELDS: tuple[str, ...] = (
    "wall_ms",  # how long the backend was provisioned in this minute (watermarked: counted once)
    "gpu_ms",  # wall_ms × replicas × GPUs per replica
    "cost_pusd",  # gpu_ms × price per GPU-ms
)


# What an engine said about itself (its /metrics), per minute x backend. Each field is merged by its own
# rule, so that any number of proxy replicas scraping the same engine store the same thing:
#   max / min - a counter's highest and lowest running total seen in the minute. Idempotent: two replicas
#               sending the same scrape, or a retried batch, change nothing. Tokens processed are the
#               differences between consecutive minutes, taken when read (``engine_usage.py``), where a
#               drop shows that the engine restarted.
#   sum       - gauges (requests running and waiting, KV-cache use) as sums and sample counts, for a mean,
#               and the scrapes behind them (every replica's scrapes count: the mean stays unbiased).
# A max/min field is absent until some scrape carried that figure (0 is a running total like any other).
EngineMerge = Literal["sum", "max", "min"]
ENGINE_COUNTERS: tuple[str, ...] = ("prompt_tokens", "generation_tokens", "cached_tokens", "busy_ms")
# Gauges as integers: requests in thousandths, KV-cache use in millionths of the cache.
ENGINE_GAUGES: tuple[str, ...] = ("running_milli", "waiting_milli", "kv_cache_usage_ppm")
ENGINE_FIELDS: dict[str, EngineMerge] = {"scrapes": "sum"}
for _name in ENGINE_COUNTERS:
    ENGINE_FIELDS.update({f"{_name}_max": "max", f"{_name}_min": "min"})
for _name in ENGINE_GAUGES:
    ENGINE_FIELDS.update({f"{_name}_n": "sum", f"{_name}_sum": "sum", f"{_name}_max": "max"})
_EXACT = 2**53  # every store keeps these as integers a Lua double holds exactly


def engine_row(stored: Mapping[str, int]) -> dict[str, int]:
    """A stored engine bucket as the stores return it: every sum (0 if absent), and the max/min fields some
    scrape carried."""
    return {
        name: stored.get(name, 0) if rule == "sum" else stored[name]
        for name, rule in ENGINE_FIELDS.items()
        if rule == "sum" or stored.get(name) is not None
    }


def merge_engine_fields(row: dict[str, int], fields: Mapping[str, int]) -> None:
    """Merge one scrape's (or another row's) engine fields into ``row`` by each field's rule."""
    for name, value in fields.items():
        rule = ENGINE_FIELDS.get(name)
        if rule is None:
            continue
        held = row.get(name)
        if held is None:
            row[name] = value
        elif rule == "sum":
            row[name] = held + value
        elif rule == "max":
            row[name] = max(held, value)
        else:
            row[name] = min(held, value)


class AggKey(NamedTuple):
    """One aggregate bucket: a minute (unix seconds at its start) and the dimensions usage is grouped by."""

    minute: int
    tenant: str
    model: str
    backend: str  # "" when no backend answered
    kind: str  # the backend's kind, "" likewise
    mode: str  # realtime | async
    key: str = ""  # the caller's key (its config name or its id), "" when none was needed
    team: str = ""  # the key's team, "" when it has none


class GpuKey(NamedTuple):
    """One GPU accrual bucket: a minute and a dedicated backend."""

    minute: int
    backend: str


class EngineKey(NamedTuple):
    """One engine bucket: a minute and the backend whose engine was scraped."""

    minute: int
    backend: str


@dataclass(frozen=True, slots=True)
class EngineReading:
    """One scrape of a backend's engine, as the meter keeps it (the capacity room converts its snapshot to
    this). A figure the engine does not expose is None. Counters are running totals since the engine
    started."""

    running: float | None = None  # requests being generated
    waiting: float | None = None  # requests queued in the engine
    kv_cache_usage: float | None = None  # 0..1
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    cached_tokens_total: float | None = None  # prompt tokens served from the prefix cache
    busy_seconds_total: float | None = None  # time the engine was executing (SGLang, TGI)

    def fields(self) -> dict[str, int]:
        """The reading as one scrape's ``ENGINE_FIELDS``."""
        out = {"scrapes": 1}
        counters = (
            ("prompt_tokens", self.prompt_tokens_total, 1),
            ("generation_tokens", self.generation_tokens_total, 1),
            ("cached_tokens", self.cached_tokens_total, 1),
            ("busy_ms", self.busy_seconds_total, 1000),
        )
        for name, total, scale in counters:
            if (scaled := _scaled(total, scale)) is not None:
                out[f"{name}_max"] = out[f"{name}_min"] = scaled
        gauges = (
            ("running_milli", self.running, 1000),
            ("waiting_milli", self.waiting, 1000),
            ("kv_cache_usage_ppm", self.kv_cache_usage, 1_000_000),
        )
        for name, value, scale in gauges:
            if (scaled := _scaled(value, scale)) is not None:
                out[f"{name}_n"], out[f"{name}_sum"], out[f"{name}_max"] = 1, scaled, scaled
        return out


def _scaled(value: float | None, scale: int) -> int | None:
    """``value`` in integer units of 1/``scale``; None if absent, negative, NaN or too big to keep exactly."""
    if value is None or not 0 <= value < _EXACT / scale:  # False for NaN too
        return None
    return round(value * scale)


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
    cached_tokens: int = 0  # read from a prompt cache: part of prompt_tokens
    completion_tokens: int = 0
    estimated: bool = False
    cache_write_tokens: int = 0  # written into a prompt cache: part of prompt_tokens
    reasoning_tokens: int = 0  # part of completion_tokens
    ttfb_ms: int = 0
    latency_ms: int = 0
    cost_pusd: int = 0
    reason: str = ""  # why this mode: "default", "Prefer: respond-async", "key batch: async", ...
    key_id: str = ""  # the caller's key: its name in the config file or its id (never its secret)
    team: str = ""  # the key's team when the request was made

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
    """One flush: aggregate increments, GPU accruals, request records and engine readings (merged per minute
    by ``ENGINE_FIELDS``), applied atomically, exactly once.

    ``id`` is unique per batch; a store that already applied a batch with this id ignores it, so a flush
    retried after an ambiguous failure (the reply was lost) never counts twice.
    """

    id: str
    aggregates: dict[AggKey, dict[str, int]] = field(default_factory=dict)
    gpu: list[GpuAccrual] = field(default_factory=list)
    records: list[UsageRecord] = field(default_factory=list)
    engine: dict[EngineKey, dict[str, int]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """Whether there is nothing to write."""
        return not (self.aggregates or self.gpu or self.records or self.engine)
