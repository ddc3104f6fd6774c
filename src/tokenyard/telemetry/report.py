"""Usage summaries from stored aggregates (pure): spend by any grouping, dedicated utilization, async savings.

Used by the JSON usage API and ``tokenyard report``. A dedicated backend's GPU cost is attributed to the
rows that used it in each period by their share of its tokens; a period in which it served nothing leaves
its cost unattributed (idle, shown under tenant/model/key/team ``(idle)``). Usage is grouped by key (its
config name or its id) and team as the request found them; usage stored before those dimensions existed
has neither ("").

Where a backend's engine reports on itself (``metrics_url``), its own figures win: utilization from the
engine's busy time where it has one (SGLang, TGI), else tokenyard's busy slot-time; $/1M tokens from the
tokens the engine processed, which include traffic that never came through tokenyard (a shared engine), the
difference shown as ``unseen_tokens``. Each figure says which source it used. Engine figures are compared
with tokenyard's over the same minutes: those the engine's readings cover.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tokenyard.config import BackendConfig, TokenyardConfig
from tokenyard.meter.engine_usage import EngineUsage, engine_periods
from tokenyard.meter.model import PUSD_PER_USD, AggKey, GpuKey
from tokenyard.meter.pricing import token_prices

DIMENSIONS = ("tenant", "model", "backend", "kind", "mode", "key", "team")  # an AggKey's, minute aside
GRANULARITY_S = {"minute": 60, "hour": 3600, "day": 86400, "total": 0}
IDLE = "(idle)"
_SUMMED = (
    "requests",
    "errors",
    "estimated",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "reasoning_tokens",
)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(value: str, now: float) -> float:
    """A point in time: unix seconds, ISO 8601, or an age like ``90m``, ``24h``, ``7d`` (that long ago)."""
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use unix seconds, ISO 8601, or an age like 24h)") from None


def parse_window(start: str, end: str | None, now: float, retention_s: float) -> tuple[float, float]:
    """The span an admin read covers: ``start`` and ``end`` as ``parse_when`` reads them (no ``end``: now),
    ``start`` moved up to the oldest usage the store keeps (retention plus a day)."""
    start_s = parse_when(start, now)
    end_s = parse_when(end, now) if end else now
    if not start_s < end_s:
        raise ValueError("need start < end")
    return max(start_s, end_s - retention_s - 86400), end_s


@dataclass(slots=True)
class Row:
    """Usage of one group in one period."""

    period: int  # unix seconds at the period's start (0 for granularity "total")
    group: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SUMMED, 0))
    latency_ms: int = 0
    token_cost_pusd: int = 0
    gpu_cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens: the share a dedicated backend's GPU cost is split by."""
        return self.counts["prompt_tokens"] + self.counts["completion_tokens"]

    def add_fields(self, fields: Mapping[str, int]) -> None:
        """Add a stored aggregate's fields."""
        for name in _SUMMED:
            self.counts[name] += fields.get(name, 0)
        self.latency_ms += fields.get("latency_ms", 0)
        self.token_cost_pusd += fields.get("cost_pusd", 0)

    def add(self, other: Row) -> None:
        """Add another row."""
        for name in _SUMMED:
            self.counts[name] += other.counts[name]
        self.latency_ms += other.latency_ms
        self.token_cost_pusd += other.token_cost_pusd
        self.gpu_cost_usd += other.gpu_cost_usd

    def to_json(self, group_by: Sequence[str]) -> dict[str, Any]:
        """The row as the usage API returns it."""
        out: dict[str, Any] = {"period_start": self.period, **dict(zip(group_by, self.group, strict=True))}
        out.update(self.counts)
        token_cost = self.token_cost_pusd / PUSD_PER_USD
        out["token_cost_usd"] = token_cost
        out["gpu_cost_usd"] = self.gpu_cost_usd
        out["cost_usd"] = token_cost + self.gpu_cost_usd
        requests = self.counts["requests"]
        out["avg_latency_ms"] = self.latency_ms / requests if requests else None
        return out


Source = Literal["engine", "tokenyard"]  # whose figure: the engine's own metrics, or tokenyard's count


@dataclass(slots=True)
class EngineTruth:
    """A dedicated backend's engine over the window, and tokenyard's figures over the minutes it covers."""

    usage: EngineUsage  # what the engine did, its minutes added up
    tokenyard_tokens: int = 0  # tokens metered through tokenyard in the minutes the engine's tokens cover
    token_gpu_cost_usd: float = 0.0  # GPU cost of those minutes
    busy_replica_hours: float = 0.0  # replica-hours provisioned in the minutes its busy time covers

    @property
    def tokens(self) -> int | None:
        """Tokens the engine processed, or None if it does not count them."""
        return self.usage.tokens

    @property
    def unseen_tokens(self) -> int | None:
        """Tokens the engine processed that tokenyard did not meter (traffic to a shared engine)."""
        return None if self.usage.tokens is None else self.usage.tokens - self.tokenyard_tokens

    @property
    def utilization(self) -> float | None:
        """Busy time over replica time, where the engine measures busy time."""
        busy_s = self.usage.busy_s
        if busy_s is None or not self.busy_replica_hours:
            return None
        return min(1.0, busy_s / 3600 / self.busy_replica_hours)

    def to_json(self) -> dict[str, Any]:
        """The engine's own figures, as the usage API returns them."""
        out = self.usage.to_json()
        del out["period_start"], out["backend"]
        out["minutes"] = len(self.usage.covered)
        out["tokenyard_tokens"] = self.tokenyard_tokens
        out["unseen_tokens"] = self.unseen_tokens
        out["utilization"] = self.utilization
        return out


@dataclass(slots=True)
class DedicatedSummary:
    """A dedicated backend over the window: what was provisioned, what was used, what a token cost."""

    backend: str
    gpu_hours: float = 0.0
    provisioned_hours: float = 0.0
    busy_slot_hours: float = 0.0
    max_concurrency: int = 0  # per replica
    gpus_per_replica: int = 1
    tokens: int = 0  # metered through tokenyard
    gpu_cost_usd: float = 0.0
    engine: EngineTruth | None = None  # the engine's own figures, where it reports them

    @property
    def slot_utilization(self) -> float:
        """Busy slot-time over capacity slot-time: max_concurrency x replica-hours provisioned."""
        capacity = self.max_concurrency * self.gpu_hours / self.gpus_per_replica
        return min(1.0, self.busy_slot_hours / capacity) if capacity else 0.0

    @property
    def utilization_source(self) -> Source:
        """Where ``utilization`` comes from: the engine's busy time, or tokenyard's slot-time."""
        return "engine" if self.engine is not None and self.engine.utilization is not None else "tokenyard"

    @property
    def utilization(self) -> float:
        """The engine's busy share where it measures one, else busy slot-time over capacity slot-time."""
        engine = self.engine.utilization if self.engine is not None else None
        return self.slot_utilization if engine is None else engine

    @property
    def tokens_source(self) -> Source:
        """Whose token count $/1M tokens is taken from."""
        return "engine" if self.engine is not None and self.engine.tokens else "tokenyard"

    @property
    def usd_per_1m_tokens(self) -> float | None:
        """GPU cost per million tokens: those the engine processed (in the minutes it covers), else those
        metered through tokenyard."""
        if self.engine is not None and self.engine.tokens:
            return self.engine.token_gpu_cost_usd / self.engine.tokens * 1e6
        return self.gpu_cost_usd / self.tokens * 1e6 if self.tokens else None

    @property
    def source(self) -> Source:
        """``engine`` if any figure here is the engine's own, else ``tokenyard``."""
        engine_used = "engine" in (self.utilization_source, self.tokens_source)
        return "engine" if engine_used else "tokenyard"

    def to_json(self) -> dict[str, Any]:
        """The summary as the usage API returns it."""
        return {
            "backend": self.backend,
            "gpu_hours": self.gpu_hours,
            "provisioned_hours": self.provisioned_hours,
            "busy_slot_hours": self.busy_slot_hours,
            "utilization": self.utilization,
            "tokens": self.tokens,
            "gpu_cost_usd": self.gpu_cost_usd,
            "idle_cost_usd": self.gpu_cost_usd * (1 - self.utilization),
            "effective_usd_per_1m_tokens": self.usd_per_1m_tokens,
            "source": self.source,
            "utilization_source": self.utilization_source,
            "tokens_source": self.tokens_source,
            "slot_utilization": self.slot_utilization,
            "engine_tokens": self.engine.tokens if self.engine else None,
            "unseen_tokens": self.engine.unseen_tokens if self.engine else None,
            "engine": self.engine.to_json() if self.engine else None,
        }


def summarize(
    aggregates: Iterable[tuple[AggKey, Mapping[str, int]]],
    gpu: Iterable[tuple[GpuKey, Mapping[str, int]]],
    *,
    group_by: Sequence[str],
    granularity: str,
) -> list[Row]:
    """Rows of usage grouped by ``group_by`` per period, with dedicated GPU cost attributed by token share."""
    if unknown := set(group_by) - set(DIMENSIONS):
        raise ValueError(f"cannot group by {', '.join(sorted(unknown))}; use {', '.join(DIMENSIONS)}")
    if granularity not in GRANULARITY_S:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITY_S)}")
    step = GRANULARITY_S[granularity]
    # First at the finest grain (period x every dimension), where GPU cost can be attributed.
    fine: dict[tuple[int, AggKey], Row] = {}
    for key, fields in aggregates:
        period = key.minute // step * step if step else 0
        row = fine.get((period, key))
        if row is None:
            row = fine[(period, key)] = Row(period, tuple(key[1:]))
        row.add_fields(fields)
    idle = _attribute_gpu(fine, gpu, step)
    index = [DIMENSIONS.index(name) for name in group_by]
    grouped: dict[tuple[int, tuple[str, ...]], Row] = {}
    for row in [*fine.values(), *idle]:
        group = tuple(row.group[i] for i in index)
        out = grouped.get((row.period, group))
        if out is None:
            out = grouped[(row.period, group)] = Row(row.period, group)
        out.add(row)
    return sorted(grouped.values(), key=lambda r: (r.period, r.group))


def _attribute_gpu(
    fine: Mapping[tuple[int, AggKey], Row], gpu: Iterable[tuple[GpuKey, Mapping[str, int]]], step: int
) -> list[Row]:
    """Share each period's GPU cost among the rows that used the backend; return rows for idle periods."""
    gpu_cost: dict[tuple[int, str], float] = defaultdict(float)
    for gkey, fields in gpu:
        gpu_cost[(gkey.minute // step * step if step else 0, gkey.backend)] += fields.get("cost_pusd", 0)
    users: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for (period, key), row in fine.items():
        users[(period, key.backend)].append(row)
    idle: list[Row] = []
    for (period, backend), cost_pusd in gpu_cost.items():
        rows = users.get((period, backend), [])
        tokens = sum(r.tokens for r in rows)
        cost_usd = cost_pusd / PUSD_PER_USD
        if tokens:
            for r in rows:
                r.gpu_cost_usd += cost_usd * r.tokens / tokens
        else:
            group = (IDLE, IDLE, backend, "dedicated", "realtime", IDLE, IDLE)
            idle.append(Row(period, group, gpu_cost_usd=cost_usd))
    return idle


def dedicated_summaries(
    aggregates: Iterable[tuple[AggKey, Mapping[str, int]]],
    gpu: Iterable[tuple[GpuKey, Mapping[str, int]]],
    backends: Mapping[str, BackendConfig],
    engine: Iterable[EngineUsage] = (),
) -> list[DedicatedSummary]:
    """Per dedicated backend: provisioned vs busy time, utilization, cost, effective $/1M tokens, from the
    engine's own figures (``engine``: its minutes in the window, ``engine_window``) where it has them."""
    aggregates, gpu = list(aggregates), list(gpu)
    out: dict[str, DedicatedSummary] = {}

    def summary(name: str) -> DedicatedSummary:
        if name not in out:
            config = backends.get(name)
            out[name] = DedicatedSummary(
                name,
                max_concurrency=(config.max_concurrency or 0) if config else 0,
                gpus_per_replica=(config.gpus_per_replica or 1) if config else 1,
            )
        return out[name]

    for gkey, fields in gpu:
        s = summary(gkey.backend)
        s.gpu_hours += fields.get("gpu_ms", 0) / 3_600_000
        s.provisioned_hours += fields.get("wall_ms", 0) / 3_600_000
        s.gpu_cost_usd += fields.get("cost_pusd", 0) / PUSD_PER_USD
    for key, fields in aggregates:
        if key.kind == "dedicated":
            s = summary(key.backend)
            s.busy_slot_hours += fields.get("latency_ms", 0) / 3_600_000
            s.tokens += fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0)
    engine_by_backend: dict[str, list[EngineUsage]] = defaultdict(list)
    for usage in engine:
        if usage.backend in out:
            engine_by_backend[usage.backend].append(usage)
    tokens = _tokenyard_tokens(aggregates)
    for name, minutes in engine_by_backend.items():
        out[name].engine = _engine_truth(minutes, tokens, gpu, out[name].gpus_per_replica)
    return sorted(out.values(), key=lambda s: s.backend)


def _tokenyard_tokens(aggregates: Iterable[tuple[AggKey, Mapping[str, int]]]) -> dict[tuple[str, int], int]:
    """Tokens metered through tokenyard per (backend, minute)."""
    tokens: dict[tuple[str, int], int] = defaultdict(int)
    for key, fields in aggregates:
        tokens[(key.backend, key.minute)] += fields.get("prompt_tokens", 0) + fields.get(
            "completion_tokens", 0
        )
    return tokens


def _engine_truth(
    minutes: Sequence[EngineUsage],
    tokens: Mapping[tuple[str, int], int],
    gpu: Iterable[tuple[GpuKey, Mapping[str, int]]],
    gpus_per_replica: int,
) -> EngineTruth:
    """A backend's engine minutes added up, with tokenyard's tokens and GPU figures over the same minutes."""
    [usage] = engine_periods(minutes, 0)
    backend = usage.backend
    token_minutes = {m for u in minutes if u.tokens is not None for m in u.covered}
    busy_minutes = {m for u in minutes if u.busy_s is not None for m in u.covered}
    truth = EngineTruth(usage, sum(tokens.get((backend, m), 0) for m in token_minutes))
    for gkey, fields in gpu:
        if gkey.backend != backend:
            continue
        if gkey.minute in token_minutes:
            truth.token_gpu_cost_usd += fields.get("cost_pusd", 0) / PUSD_PER_USD
        if gkey.minute in busy_minutes:
            truth.busy_replica_hours += fields.get("gpu_ms", 0) / gpus_per_replica / 3_600_000
    return truth


def engine_rows(
    minutes: Iterable[EngineUsage],
    aggregates: Iterable[tuple[AggKey, Mapping[str, int]]],
    granularity: str,
) -> list[dict[str, Any]]:
    """What each engine did per period (the usage API's ``engine``), beside the tokens tokenyard metered
    for that backend in the minutes the engine's figures cover."""
    if granularity not in GRANULARITY_S:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITY_S)}")
    tokens = _tokenyard_tokens(aggregates)
    out = []
    for usage in engine_periods(minutes, GRANULARITY_S[granularity]):
        row = usage.to_json()
        seen = sum(tokens.get((usage.backend, m), 0) for m in usage.covered)
        row["tokenyard_tokens"] = seen
        row["unseen_tokens"] = None if usage.tokens is None else usage.tokens - seen
        out.append(row)
    return out


def async_savings_usd(
    aggregates: Iterable[tuple[AggKey, Mapping[str, int]]], config: TokenyardConfig
) -> float:
    """What async traffic saved against the real-time price of its model's first per-token deployment."""
    return sum(async_saving_pusd(key, fields, config) for key, fields in aggregates) / PUSD_PER_USD


def async_saving_pusd(key: AggKey, fields: Mapping[str, int], config: TokenyardConfig) -> int:
    """What one aggregate of async traffic saved against the real-time price of its model's first
    per-token deployment (0 for real-time traffic, or a model with no per-token deployment)."""
    if key.mode != "async" or key.model not in config.models:
        return 0
    per_token = [
        config.backends[name]
        for name in config.models[key.model].deployments
        if config.backends[name].kind != "dedicated"
    ]
    if not per_token:
        return 0
    realtime = token_prices(per_token[0]).cost_pusd(
        fields.get("prompt_tokens", 0),
        fields.get("cached_tokens", 0),
        fields.get("completion_tokens", 0),
        fields.get("cache_write_tokens", 0),
    )
    return realtime - fields.get("cost_pusd", 0)


def totals(rows: Iterable[Row]) -> dict[str, Any]:
    """All rows summed into one (as JSON)."""
    total = Row(0, ())
    for row in rows:
        total.add(row)
    out = total.to_json(())
    del out["period_start"]
    return out
