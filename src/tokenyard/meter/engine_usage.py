"""What each engine did, minute by minute, read from its stored readings (pure, no I/O).

The stores keep, per minute × backend, each counter's highest and lowest running total seen that minute and
the gauges' sums (``model.ENGINE_FIELDS``), merged so that any number of proxy replicas scraping one engine
store the same counters. The tokens (and busy time) the engine processed are the differences between
minutes, taken here, per counter:

- the minute's highest total rose past the highest seen before: the rise, and it covers every minute since
  that earlier reading (an engine scraped every two minutes shows its work every other minute);
- it fell, and the minute's lowest total is under half the total before: the engine restarted (its counters
  start again at 0), and the minute's highest total is what it did since. A smaller dip is not a restart but
  two replicas' clocks disagreeing about which minute a scrape fell in: it counts nothing;
- nothing was read in the ``max_gap_s`` before (the first minute read, or after nobody scraped for a while):
  only the rise within the minute itself (highest - lowest) is known, and the minute covers itself.

A restart within a minute after a reading of it is seen one minute late, so the work around it lands in the
next minute; totals over a window stay right. An engine's token counts and tokenyard's records of the same
requests can sit a minute apart (an engine counts as it generates, tokenyard when the answer ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenyard.meter.model import ENGINE_COUNTERS, ENGINE_GAUGES, EngineKey

ENGINE_MAX_GAP_S = 900  # like meter.max_gpu_gap_s: a longer silence is not bridged
# Each gauge as the API names it: its stored name and how many stored units make one.
_GAUGES = {
    "running": ("running_milli", 1_000),
    "waiting": ("waiting_milli", 1_000),
    "kv_cache_usage": ("kv_cache_usage_ppm", 1_000_000),
}


@dataclass(slots=True)
class EngineUsage:
    """What one backend's engine did in one minute, or in a period (minutes added with ``add``)."""

    backend: str
    period: int  # unix s at the start of the minute or period
    covered: set[int] = field(default_factory=set)  # the minutes whose work these counts hold
    # Counter differences (``ENGINE_COUNTERS``); a counter the engine does not expose is absent.
    counts: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    scrapes: int = 0
    gauges: dict[str, int] = field(default_factory=dict)  # ENGINE_GAUGES' _n, _sum and _max fields

    @property
    def tokens(self) -> int | None:
        """Prompt plus generated tokens the engine processed, or None if it counts neither."""
        if "prompt_tokens" not in self.counts and "generation_tokens" not in self.counts:
            return None
        return self.counts.get("prompt_tokens", 0) + self.counts.get("generation_tokens", 0)

    @property
    def busy_s(self) -> float | None:
        """Seconds the engine was executing, where it says (SGLang, TGI)."""
        busy_ms = self.counts.get("busy_ms")
        return None if busy_ms is None else busy_ms / 1000

    @property
    def prefix_cache_hit_ratio(self) -> float | None:
        """The share of prompt tokens served from the prefix cache, where the engine counts both."""
        prompt, cached = self.counts.get("prompt_tokens"), self.counts.get("cached_tokens")
        return None if not prompt or cached is None else min(1.0, cached / prompt)

    def mean(self, gauge: str) -> float | None:
        """A gauge's mean over the scrapes (``running``, ``waiting``, ``kv_cache_usage``), or None."""
        stored, scale = _GAUGES[gauge]
        n = self.gauges.get(f"{stored}_n", 0)
        return self.gauges.get(f"{stored}_sum", 0) / n / scale if n else None

    def peak(self, gauge: str) -> float | None:
        """A gauge's highest reading, or None."""
        stored, scale = _GAUGES[gauge]
        peak = self.gauges.get(f"{stored}_max")
        return None if peak is None else peak / scale

    def add(self, other: EngineUsage) -> None:
        """Add another minute (or period) of the same backend."""
        self.covered |= other.covered
        for name, value in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        self.restarts += other.restarts
        self.scrapes += other.scrapes
        for name, value in other.gauges.items():
            held = self.gauges.get(name)
            is_max = name.endswith("_max")
            self.gauges[name] = value if held is None else max(held, value) if is_max else held + value

    def to_json(self) -> dict[str, Any]:
        """The figures as the usage API returns them."""
        out: dict[str, Any] = {"period_start": self.period, "backend": self.backend}
        for name in ("prompt_tokens", "generation_tokens", "cached_tokens"):
            out[name] = self.counts.get(name)
        out["tokens"] = self.tokens
        out["prefix_cache_hit_ratio"] = self.prefix_cache_hit_ratio
        out["busy_s"] = self.busy_s
        out["restarts"] = self.restarts
        out["scrapes"] = self.scrapes
        for gauge in _GAUGES:
            out[f"{gauge}_mean"] = self.mean(gauge)
            out[f"{gauge}_max"] = self.peak(gauge)
        return out


@dataclass(slots=True)
class _Reference:
    """The highest running total of one counter since the engine last (re)started, and where it was read."""

    total: int
    minute: int


def engine_minutes(
    rows: Iterable[tuple[EngineKey, Mapping[str, int]]], *, max_gap_s: int = ENGINE_MAX_GAP_S
) -> list[EngineUsage]:
    """Each stored engine bucket turned into what the engine did (see the module docstring), oldest first
    per backend. Read a ``max_gap_s`` more before the window wanted, and drop the minutes before it."""
    by_backend: dict[str, list[tuple[int, Mapping[str, int]]]] = {}
    for key, fields in rows:
        by_backend.setdefault(key.backend, []).append((key.minute, fields))
    out: list[EngineUsage] = []
    for backend in sorted(by_backend):
        references: dict[str, _Reference] = {}
        for minute, fields in sorted(by_backend[backend], key=lambda item: item[0]):
            usage = EngineUsage(backend, minute, {minute}, scrapes=fields.get("scrapes", 0))
            for counter in ENGINE_COUNTERS:
                _difference(usage, counter, fields, references, max_gap_s)
            for gauge in ENGINE_GAUGES:
                for part in ("n", "sum", "max"):
                    if (value := fields.get(f"{gauge}_{part}")) is not None and (part == "max" or value):
                        usage.gauges[f"{gauge}_{part}"] = value
            out.append(usage)
    return out


def _difference(
    usage: EngineUsage,
    counter: str,
    fields: Mapping[str, int],
    references: dict[str, _Reference],
    max_gap_s: int,
) -> None:
    """Put one counter's work in this minute into ``usage`` and move its reference on."""
    highest, lowest = fields.get(f"{counter}_max"), fields.get(f"{counter}_min")
    if highest is None or lowest is None:
        return
    minute = usage.period
    before = references.get(counter)
    if before is None or minute - before.minute > max_gap_s:
        usage.counts[counter] = highest - lowest
        references[counter] = _Reference(highest, minute)
        return
    if highest >= before.total:
        usage.counts[counter] = highest - before.total
        before.total = highest
    elif 2 * lowest < before.total:  # the engine restarted: it counts from 0 again
        usage.counts[counter] = highest
        usage.restarts = 1
        before.total = highest
    else:  # a scrape put in this minute by a clock a little ahead: no work, no restart
        usage.counts[counter] = 0
    usage.covered.update(range(before.minute + 60, minute, 60))
    before.minute = minute


def engine_periods(minutes: Iterable[EngineUsage], step: int) -> list[EngineUsage]:
    """Minutes added up per backend and period of ``step`` seconds (0: one period for all)."""
    periods: dict[tuple[int, str], EngineUsage] = {}
    for usage in minutes:
        period = usage.period // step * step if step else 0
        total = periods.get((period, usage.backend))
        if total is None:
            total = periods[(period, usage.backend)] = EngineUsage(usage.backend, period)
        total.add(usage)
    return sorted(periods.values(), key=lambda u: (u.period, u.backend))


def engine_window(
    rows: Iterable[tuple[EngineKey, Mapping[str, int]]],
    start_minute: int,
    end_minute: int,
    *,
    max_gap_s: int = ENGINE_MAX_GAP_S,
) -> list[EngineUsage]:
    """The minutes of ``[start_minute, end_minute)`` whose work lies wholly inside it, from buckets read
    from ``start_minute - max_gap_s`` (its first minutes are taken from the readings before it)."""
    return [
        usage
        for usage in engine_minutes(rows, max_gap_s=max_gap_s)
        if start_minute <= min(usage.covered) and usage.period < end_minute
    ]
