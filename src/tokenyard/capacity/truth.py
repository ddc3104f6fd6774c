"""Metered engine truth: every good scrape of a backend's engine handed to the meter (pure, no I/O).

The scraper (``scraper.py``) calls ``on_snapshot(backend_name, snapshot)`` after each good scrape, off the
request path; ``engine_metering(meter, wall)`` is that callback. The meter keeps each minute's readings per
backend (``meter/model.py``, ``ENGINE_FIELDS``) and the usage API, ``tokenyard report`` and the dashboard
turn them into the tokens, busy time, queue and KV use the engine itself reported
(``meter/engine_usage.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tokenyard.capacity.engine import EngineSnapshot
from tokenyard.meter.model import EngineReading


class EngineMeter(Protocol):
    """What keeps engine readings: the meter (``Meter.record_engine``)."""

    def record_engine(self, backend: str, reading: EngineReading, wall: float) -> None:
        """Keep one scrape of ``backend``'s engine, taken at ``wall`` (unix s). Never awaits."""
        ...


def engine_reading(snapshot: EngineSnapshot) -> EngineReading:
    """A snapshot as the meter keeps it. Prompt tokens served from the prefix cache are SGLang's
    ``cached_tokens_total``, else vLLM's prefix-cache hits (counted in tokens)."""
    cached = snapshot.cached_tokens_total
    if cached is None:
        cached = snapshot.prefix_cache_hits_total
    return EngineReading(
        running=snapshot.running,
        waiting=snapshot.waiting,
        kv_cache_usage=snapshot.kv_cache_usage,
        prompt_tokens_total=snapshot.prompt_tokens_total,
        generation_tokens_total=snapshot.generation_tokens_total,
        cached_tokens_total=cached,
        busy_seconds_total=snapshot.busy_seconds_total,
    )


def meter_engine(meter: EngineMeter, backend_name: str, snapshot: EngineSnapshot, wall: float) -> None:
    """Meter one good scrape of ``backend_name``'s engine, taken at ``wall`` (unix s)."""
    meter.record_engine(backend_name, engine_reading(snapshot), wall)


def engine_metering(meter: EngineMeter, wall: Callable[[], float]) -> Callable[[str, EngineSnapshot], None]:
    """The scraper's ``on_snapshot`` callback: meter each snapshot at the wall time it arrives."""

    def on_snapshot(backend_name: str, snapshot: EngineSnapshot) -> None:
        meter_engine(meter, backend_name, snapshot, wall())

    return on_snapshot
