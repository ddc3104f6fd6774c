"""An engine's own Prometheus metrics, read into one snapshot (the profiles and the parser come here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """What one scrape of an engine's ``/metrics`` said. A figure the engine does not expose is None;
    ``signals`` names the ones it does (shown on ``/admin/backends``). Counters are the engine's running
    totals since it started (a drop means it restarted)."""

    profile: str  # vllm | sglang | tgi | llamacpp
    scraped_at: float  # monotonic, by the scraper's clock
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
