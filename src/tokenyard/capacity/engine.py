"""An engine's own Prometheus metrics, read into one snapshot: the profiles, the parse and saturation.

Pure: the scraper (``scraper.py``) fetches the text and hands it here with the times it read. Each profile
names, per figure, the samples an engine exposes for it, in preference order (vLLM's ``kv_cache_usage_perc``
before the deprecated ``gpu_cache_usage_perc``). The text is parsed by ``prometheus_client``'s parser, fed
only the lines of the samples a profile wants: an engine's ``/metrics`` is tens of kilobytes of histograms
the parser would otherwise walk every few seconds for every backend (``bench/scrape.py``).

Engines label their samples (vLLM by ``model_name`` and ``engine``, one set per data-parallel rank): counts
and counters are summed over the label sets, ratios (KV-cache usage) averaged, so two ranks at 0.9 are 0.9,
not 1.8.

``EngineState`` is what a backend keeps of its engine: the latest snapshot, the last error and the counts
``/metrics`` shows; ``saturated(now)`` says whether the engine, while its figures are fresh, is full.

Saturation has hysteresis: a backend is saturated only once ``engine.saturated_after`` (2) fresh scrapes in a
row said so, and clears at the first fresh scrape that says not. vLLM's waiting queue is briefly non-zero in
normal continuous batching (a request arriving between two scheduler steps waits one step), so one scrape
catching ``waiting 1`` would otherwise spill all real-time traffic for a whole interval. llm-d's saturation
detector tolerates the same noise with a queue-depth threshold (5 by default); a threshold is
``engine.queue_saturated`` here, the streak a second, independent guard that also covers the KV cache.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from tokenyard.capacity.settings import EngineMetrics
from tokenyard.errors import EngineMetricsInvalid


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """What one scrape of an engine's ``/metrics`` said. A figure the engine does not expose is None;
    ``signals`` names the ones it does (shown on ``/admin/backends``). Counters are the engine's running
    totals since it started (a drop means it restarted)."""

    profile: str  # vllm | sglang | tgi | llamacpp
    # Monotonic, by the scraper's clock: when the figures were true. The scrape's time, or earlier when the
    # samples carry timestamps (a caching or federating exporter in front of the engine).
    scraped_at: float
    signals: frozenset[str]
    running: float | None = None  # requests being generated now
    waiting: float | None = None  # requests queued in the engine
    kv_cache_usage: float | None = None  # 0..1
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    busy_seconds_total: float | None = None  # GPU executing (SGLang), batch forward time (TGI)
    cached_tokens_total: float | None = None  # prompt tokens served from the prefix cache
    prefix_cache_queries_total: float | None = None
    prefix_cache_hits_total: float | None = None


_RATIOS: Final = frozenset({"kv_cache_usage"})  # averaged over label sets; everything else is summed


@dataclass(frozen=True, slots=True)
class Profile:
    """One engine's metric names: per figure of ``EngineSnapshot``, the sample names that carry it, the
    first one present winning; ``adds``: samples added to a figure found (a total the engine splits)."""

    name: str
    samples: dict[str, tuple[str, ...]]
    adds: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def sample_names(self) -> frozenset[str]:
        """Every sample name this profile reads."""
        every = (*self.samples.values(), *self.adds.values())
        return frozenset(name for names in every for name in names)


PROFILES: Final = {
    p.name: p
    for p in (
        Profile(
            "vllm",
            {
                "running": ("vllm:num_requests_running",),
                "waiting": ("vllm:num_requests_waiting",),
                "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                "prompt_tokens_total": ("vllm:prompt_tokens_total",),
                "generation_tokens_total": ("vllm:generation_tokens_total",),
                # V1 counts prefix-cache queries and hits in tokens: the hits are the cached prompt tokens.
                "cached_tokens_total": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
                "prefix_cache_queries_total": (
                    "vllm:prefix_cache_queries_total",
                    "vllm:gpu_prefix_cache_queries_total",
                ),
                "prefix_cache_hits_total": (
                    "vllm:prefix_cache_hits_total",
                    "vllm:gpu_prefix_cache_hits_total",
                ),
            },
        ),
        Profile(
            "sglang",
            {
                "running": ("sglang:num_running_reqs",),
                "waiting": ("sglang:num_queue_reqs",),
                "kv_cache_usage": ("sglang:token_usage",),
                "prompt_tokens_total": ("sglang:prompt_tokens_total",),
                "generation_tokens_total": ("sglang:generation_tokens_total",),
                "busy_seconds_total": ("sglang:gpu_execution_seconds_total",),
                "cached_tokens_total": ("sglang:cached_tokens_total",),
            },
        ),
        Profile(
            "tgi",
            {
                "running": ("tgi_batch_current_size",),
                "waiting": ("tgi_queue_size",),
                # Histograms observed per request at its end: their sums are the token totals.
                "prompt_tokens_total": ("tgi_request_input_length_sum",),
                "generation_tokens_total": ("tgi_request_generated_tokens_sum",),
                # Prefill and decode forward passes, one at a time: their summed duration is busy time.
                "busy_seconds_total": ("tgi_batch_forward_duration_sum",),
            },
        ),
        Profile(
            "llamacpp",
            {
                "running": ("llamacpp:requests_processing",),
                "waiting": ("llamacpp:requests_deferred",),
                "kv_cache_usage": ("llamacpp:kv_cache_usage_ratio",),
                "prompt_tokens_total": ("llamacpp:prompt_tokens_total",),
                "generation_tokens_total": ("llamacpp:tokens_predicted_total",),
                "cached_tokens_total": ("llamacpp:prompt_tokens_cached_total",),
            },
            # Its prompt_tokens_total leaves out the tokens reused from the cache: every prompt token the
            # engine took in is both (as vLLM's and SGLang's totals count them).
            adds={"prompt_tokens_total": ("llamacpp:prompt_tokens_cached_total",)},
        ),
    )
}
_ALL_NAMES: Final = frozenset(name for p in PROFILES.values() for name in p.sample_names)
_PREFIXES: Final = {name: tuple(sorted(p.sample_names)) for name, p in PROFILES.items()}
_PREFIXES_ALL: Final = tuple(sorted(_ALL_NAMES))


def parse_metrics(text: str, profile: str, *, scraped_at: float, wall_at: float) -> EngineSnapshot:
    """Read an engine's Prometheus text into a snapshot. ``profile`` is a name of ``PROFILES`` or ``auto``
    (the profile whose figures the text has most of). ``scraped_at`` (monotonic) and ``wall_at`` (unix) are
    when the text was read. Raises ``EngineMetricsInvalid`` for text the parser refuses, or that has none of
    the profile's metrics (an HTML error page, another exporter)."""
    wanted = _PREFIXES_ALL if profile == "auto" else _PREFIXES.get(profile)
    if wanted is None:
        raise EngineMetricsInvalid(f"unknown engine profile {profile!r}")
    values, timestamps = _read_samples(text, wanted)
    candidates = list(PROFILES.values()) if profile == "auto" else [PROFILES[profile]]
    best: tuple[int, Profile, dict[str, float]] | None = None
    for candidate in candidates:
        figures = _figures(candidate, values)
        if figures and (best is None or len(figures) > best[0]):
            best = (len(figures), candidate, figures)
    if best is None:
        said = "any engine's" if profile == "auto" else f"{profile}'s"
        raise EngineMetricsInvalid(f"the metrics text has none of {said} metrics")
    _, chosen, figures = best
    # Timestamped samples were true when stamped, not when read: the oldest one dates the snapshot.
    age_s = max(0.0, wall_at - min(timestamps)) if timestamps else 0.0
    return EngineSnapshot(
        profile=chosen.name, scraped_at=scraped_at - age_s, signals=frozenset(figures), **figures
    )


def _read_samples(text: str, wanted: tuple[str, ...]) -> tuple[dict[str, list[float]], list[float]]:
    """The values of the wanted samples, per sample name (one per label set), and their timestamps."""
    # Only the wanted lines go to the parser (comments dropped: every sample comes back untyped, named as
    # written). A kept line the parser refuses is an error; the rest of the text is none of our business.
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    values: dict[str, list[float]] = {}
    timestamps: list[float] = []
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name in _ALL_NAMES and not math.isnan(sample.value):
                    values.setdefault(sample.name, []).append(float(sample.value))
                    if sample.timestamp is not None:
                        timestamps.append(float(sample.timestamp))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise EngineMetricsInvalid(f"the metrics text is not valid Prometheus text: {exc}") from exc
    return values, timestamps


def _figures(profile: Profile, values: dict[str, list[float]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for figure, names in profile.samples.items():
        for name in names:
            found = values.get(name)
            if found:
                figures[figure] = sum(found) / len(found) if figure in _RATIOS else sum(found)
                break
    for figure, names in profile.adds.items():
        if figure in figures:
            figures[figure] += sum(sum(values.get(name, ())) for name in names)
    return figures


def saturation(snapshot: EngineSnapshot, settings: EngineMetrics) -> str | None:
    """Why the engine is full by its own figures (``queue 3``, ``KV cache 95%``), or None."""
    if snapshot.waiting is not None and snapshot.waiting > settings.queue_saturated:
        return f"queue {snapshot.waiting:g}"
    if snapshot.kv_cache_usage is not None and snapshot.kv_cache_usage > settings.kv_cache_saturated:
        return f"KV cache {snapshot.kv_cache_usage:.0%}"
    return None


@dataclass(slots=True)
class EngineState:
    """What a backend knows of its engine: the latest good snapshot and how scraping goes.

    Stale (older than ``stale_after_s``) or missing figures say nothing: tokenyard's own in-flight count
    decides then (engines' ``/metrics`` lag by seconds; the fast signal is tokenyard's own). Saturated only
    after ``saturated_after`` fresh saturated scrapes in a row (``streak``); a failed scrape neither adds to
    the streak nor ends it (the latest snapshot stays, to age out), a stale or unsaturated one ends it."""

    url: str
    settings: EngineMetrics
    latest: EngineSnapshot | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive failed scrapes
    profile: str | None = None  # detected or configured, once a scrape succeeded
    scrapes: Counter[str] = field(default_factory=Counter)  # by outcome, for /metrics
    streak: int = 0  # good, fresh scrapes in a row whose figures say saturated

    def fresh(self, now: float) -> bool:
        """Whether the latest snapshot is recent enough to act on."""
        latest = self.latest
        return latest is not None and now - latest.scraped_at <= self.settings.stale_after_s

    def saturated(self, now: float) -> str | None:
        """Why the engine is saturated (``queue 3``), while its figures are fresh; None otherwise."""
        latest = self.latest
        if latest is None or now - latest.scraped_at > self.settings.stale_after_s:
            return None
        if self.streak < self.settings.saturated_after:
            return None
        return saturation(latest, self.settings)

    def record(self, snapshot: EngineSnapshot, now: float | None = None) -> None:
        """A good scrape, read at ``now`` (monotonic; None: when the snapshot is dated). A snapshot already
        stale when read (a caching exporter's old figures) says nothing, and ends a saturated streak."""
        read_at = snapshot.scraped_at if now is None else now
        fresh = read_at - snapshot.scraped_at <= self.settings.stale_after_s
        full = fresh and saturation(snapshot, self.settings) is not None
        self.streak = self.streak + 1 if full else 0
        self.latest, self.profile = snapshot, snapshot.profile
        self.last_error, self.failures = None, 0
        self.scrapes["ok"] += 1

    def record_failure(self, outcome: str, error: str) -> None:
        """A failed scrape (``outcome``: unreachable | http_error | invalid); the latest snapshot stays, to
        age out."""
        self.last_error = error
        self.failures += 1
        self.scrapes[outcome] += 1

    def to_json(self, now: float) -> dict[str, Any]:
        """The ``capacity.engine`` object of ``/admin/backends``."""
        latest = self.latest
        why = self.saturated(now)
        return {
            "url": self.url,
            "profile": self.profile or self.settings.profile,
            "signals": sorted(latest.signals) if latest else [],
            "age_s": round(now - latest.scraped_at, 3) if latest else None,
            "fresh": self.fresh(now),
            "saturated": why is not None,
            "why": why,
            "running": latest.running if latest else None,
            "waiting": latest.waiting if latest else None,
            "kv_cache_usage": latest.kv_cache_usage if latest else None,
            "last_error": self.last_error,
            "consecutive_failures": self.failures,
            "saturated_scrapes": self.streak,
        }
