"""Scraping the engines' ``/metrics``: one background task per proxy process, off the request path.

Every backend with a ``metrics_url`` is read every ``engine.interval_s``, in groups of ``GROUP`` staggered
over one interval: fifty backends do not all parse in the same tick (a burst on the event loop), nor each in
a tick of its own (a read every 100 ms costs twice the CPU of ten read together: cold caches and a wake-up
each; ``bench/scrape.py``). Each good read replaces the backend's
``EngineState.latest`` and is handed to ``on_snapshot`` (the meter's engine truth). A failed read keeps the
last snapshot, which ages out after ``stale_after_s``: routing then goes by tokenyard's own count.

One engine that never answers cannot hold the others up: every read has its own deadline
(``engine.timeout_s``, enforced here whatever the source does), its peers' figures are recorded as they
come, and a group lasts at most its slowest timeout. Whatever goes wrong unexpectedly is logged (once per
run of failures) and the loop goes on: scraping never ends silently.

The request path never waits for any of this: routing reads ``EngineState.saturated(now)``, a comparison.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

from tokenyard.capacity.engine import EngineSnapshot, EngineState, parse_metrics
from tokenyard.errors import EngineMetricsInvalid, UpstreamError, UpstreamStatusError, UpstreamTimeout

log = logging.getLogger("tokenyard.capacity")

GROUP: Final = 10  # backends read together

OnSnapshot = Callable[[str, EngineSnapshot], None]
"""Called with the backend's name and each good snapshot (``capacity.truth`` meters them)."""


class MetricsSource(Protocol):
    """Where the text comes from (``adapters.engine_metrics.EngineMetricsClient`` is one)."""

    async def get_text(self, url: str, timeout_s: float) -> str:
        """The page's text, or an ``Upstream*`` error."""
        ...


def _ignore(backend: str, snapshot: EngineSnapshot) -> None:
    """No consumer of snapshots wired."""


class EngineScraper:
    """Reads every engine's metrics on its interval until cancelled."""

    def __init__(
        self,
        engines: Mapping[str, EngineState],
        source: MetricsSource,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        on_snapshot: OnSnapshot | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.engines = engines
        self.source = source
        self.clock = clock
        self.wall = wall
        self.on_snapshot = on_snapshot or _ignore
        self.sleep = sleep
        now, groups = clock(), max(1, math.ceil(len(engines) / GROUP))
        self._due = {
            name: now + state.settings.interval_s * (i // GROUP) / groups
            for i, (name, state) in enumerate(engines.items())
        }

    async def run(self) -> None:
        """Scrape what is due, sleep until the next one is, forever (until cancelled)."""
        failing = False
        while True:
            try:
                await self.scrape_due()
                failing = False
            except Exception:  # a bug must not end the scraping routing relies on, silently or at all
                if not failing:  # once per run of failures, not every interval
                    log.exception("engine metrics: scraping failed; trying again when the next read is due")
                failing = True
            await self.sleep(max(0.0, min(self._due.values(), default=self.clock() + 60) - self.clock()))

    async def scrape_due(self) -> None:
        """Scrape every engine whose time has come (at once), and schedule each one's next read. Raises the
        first unexpected error of any read, once every read has ended."""
        now = self.clock()
        due = [name for name, at in self._due.items() if at <= now]
        for name in due:
            # From when it was due, not when it ended: no drift, and a slow engine does not slow the rest.
            self._due[name] = max(self._due[name] + self.engines[name].settings.interval_s, now)
        if due:
            ended = await asyncio.gather(*(self.scrape(name) for name in due), return_exceptions=True)
            for outcome in ended:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def scrape(self, name: str) -> None:
        """Read one engine's metrics now and record what came of it; never longer than its timeout."""
        state = self.engines[name]
        timeout_s = state.settings.timeout_s
        try:
            try:
                # The source has the timeout too; this deadline holds even when it does not keep it.
                async with asyncio.timeout(timeout_s):
                    text = await self.source.get_text(state.url, timeout_s)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"{state.url} did not answer within {timeout_s:g} s") from exc
            snapshot = parse_metrics(
                text, state.profile or state.settings.profile, scraped_at=self.clock(), wall_at=self.wall()
            )
        except EngineMetricsInvalid as exc:
            self._failed(name, state, "invalid", exc.message)
            if state.settings.profile == "auto":
                state.profile = None  # detect afresh: the engine behind the URL may have changed
            return
        except UpstreamStatusError as exc:
            self._failed(name, state, "http_error", exc.message)
            return
        except UpstreamError as exc:
            self._failed(name, state, "unreachable", exc.message)
            return
        if state.failures:
            log.info("engine metrics of %s: read again (%s)", name, snapshot.profile)
        state.record(snapshot, self.clock())
        try:
            self.on_snapshot(name, snapshot)
        except Exception:  # a consumer's bug must not stop the scraping routing relies on
            log.exception("engine metrics of %s: the snapshot's consumer failed", name)

    def _failed(self, name: str, state: EngineState, outcome: str, error: str) -> None:
        if not state.failures:  # once per outage, not every interval
            log.warning(
                "engine metrics of %s: %s; tokenyard's own in-flight count decides until they are back",
                name,
                error,
            )
        state.record_failure(outcome, error)
