"""The adaptive concurrency limit: the in-flight count a backend can carry and still meet its latency SLA,
learned from the latencies tokenyard measures on every answer.

Why this shape, after reading the field's limiters:

- Netflix's ``Gradient2Limit`` and ``VegasLimit`` and Envoy's adaptive concurrency filter infer congestion
  from latency *relative to a no-load baseline* (``gradient = rtt_noload / rtt``; Envoy re-measures its
  minRTT periodically by letting only a very low number of requests through). Their goal is "no queue".
  Ours is different: the SLA states absolute targets, and a GPU is cheapest run as full as the SLA allows.
  A baseline probe that drains a GPU to 3 streams costs real money, and "latency rose" says nothing about
  whether 30 tokens/s per stream still holds.
- AIMD (add one while it holds, cut by a ratio on a breach) needs no model, but climbs one step a window:
  from a ceiling of 64 to the SLA's 20 and back after a capacity change takes many windows, and it
  oscillates around the limit by design (a breach every cycle).

So this is a gradient limiter whose reference is the SLA target instead of a measured baseline. The model
it leans on is how engines batch: past the knee, continuous batching shares an aggregate decode rate among
the running streams, so the concurrency streams ran at × their rate estimates the aggregate, and the
concurrency at which the SLA's low tail still meets the target is that aggregate ÷ the target. Per window
of ``window_samples`` answers (count-based: no clock), for each target the SLA gives:

- per-stream rate: ``estimate = mean concurrency × P_low(rate) / (target × (1 + margin))``, ``P_low`` the
  SLA percentile's low tail (p5 for a p95 SLA), over the streams that ran near the limit (below the knee a
  stream runs at the engine's per-stream maximum and rate × concurrency underestimates the aggregate);
- time to first token (no such law; queueing and prefill grow it): ``estimate = mean concurrency ×
  (target ÷ (1 + margin)) / P_high(ttft)`` (Envoy's ``limit × target / sample``); for ttft = floor + slope ×
  concurrency its fixed point is exactly where ttft meets the target, reached monotonically.

The limit moves to the lowest estimate with Gradient2's guards: half way (its smoothing: one window's
percentile is noisy) unless the window breached twice the SLA's allowance; at most ``max_shrink`` down in
one window (an outlier window must not shed half the traffic twice over); up by at most ``max_growth`` and
only after a window in which routing held the whole limit it can reach (a limit nobody reaches says nothing
about what lies above it: Gradient2's "app limited" check; with N proxy replicas each routes its share rounded
down, so the reachable limit is judged, not the limit); and an estimate only lowers the limit when its own
target is at risk. The margin puts the steady state just under the SLA; floor 1, ceiling ``max_concurrency``.

Everything is per engine replica (a sample's concurrency ÷ the backend's replicas): the whole backend's limit
follows its replicas when they change, as ``max_concurrency`` does. A request the engine failed for overload
(``overloaded``: a timeout, a 5xx, a dedicated engine's 429) counts as a breached answer at its worst, so an
engine that sheds load instead of slowing down still shrinks the limit. Pure: times come in the samples.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import Sla
from tokenyard.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout


@dataclass(frozen=True, slots=True)
class LimiterTuning:
    """How the limit moves; the defaults are what ``bench/limiter.py`` measured as converging fast without
    breaching."""

    window_samples: int = 30  # answers per decision
    margin: float = 0.03  # aim 3 % inside the SLA (rate × 1.03, ttft ÷ 1.03): the steady state sits under it
    # The limit moves this share of the way to a window's estimate (Gradient2's smoothing: one window's
    # percentile is noisy), all the way when the window breached the SLA twice as often as it allows.
    smoothing: float = 0.5
    max_growth: float = 0.25  # a window raises the limit by at most this share of it (at least 1)
    max_shrink: float = 0.5  # and lowers it by at most this share
    pressed: float = 0.9  # grow only when a window's concurrency reached this share of the limit
    # Streams that ran at under this share of the limit are left out of the aggregate estimate (unless too
    # few ran above it): below the knee a stream runs at the engine's per-stream maximum, and rate ×
    # concurrency says less about the aggregate the lower the concurrency.
    near_limit: float = 0.5
    history_size: int = 50  # limit changes kept for /admin/backends


@dataclass(frozen=True, slots=True)
class LimitChange:
    """One change of the limit: when (unix s; and after how many answers), to what (the whole backend's
    limit) and why."""

    at: float
    samples: int
    limit: int
    reason: str


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The latencies behind the last decision: one window's figures, at the SLA's percentile."""

    samples: int
    breached: int  # answers that missed a target
    mean_concurrency: float  # per engine replica
    max_concurrency: float
    ttft_ms: float | None  # the high tail (p95 for a p95 SLA) of streamed answers' time to first token
    stream_tokens_per_s_low: float | None  # the low tail (p5) of per-stream rates
    stream_tokens_per_s_median: float | None
    # Mean concurrency × the low tail of per-stream rates: the aggregate tokens/s per replica the window's
    # slowest streams imply (past the knee, the engine's decode capacity).
    aggregate_tokens_per_s_low: float | None


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def overloaded(error: UpstreamError, *, dedicated: bool) -> bool:
    """Whether a backend's failure says its engine is past its capacity, so the limit must count it as a
    breached answer: no response head in time (a queue too long to reach the front), a 5xx (an engine
    shedding load or out of memory), or a 429 from a ``dedicated`` engine (its own admission control; a
    provider's 429 is a quota, not capacity). A refused connection or a broken stream says nothing of load.
    """
    if isinstance(error, UpstreamTimeout):
        return True
    if isinstance(error, UpstreamStatusError):
        return error.status >= 500 or (dedicated and error.status == 429)
    return False


class AdaptiveLimit:
    """One backend's learned concurrency limit, per engine replica, between 1 and ``ceiling``.

    >>> limit = AdaptiveLimit(Sla(min_stream_tokens_per_s=30), ceiling=64)
    >>> limit.current
    64
    >>> for _ in range(30):  # 32 streams sharing 600 tokens/s: 18.75 each, under the SLA's 30
    ...     _ = limit.observe(LatencySample(0.02, 1.62, 100, 31, True, concurrency=32, ended_at=0.0))
    >>> limit.current  # halved at most in one window
    32
    """

    __slots__ = (
        "_breached",
        "_concurrency_max",
        "_concurrency_sum",
        "_count",
        "_rated",
        "_ttfts_ms",
        "breached_total",
        "ceiling",
        "current",
        "estimate",
        "history",
        "last_window",
        "samples_total",
        "sla",
        "tuning",
    )

    def __init__(self, sla: Sla, ceiling: int, tuning: LimiterTuning | None = None) -> None:
        self.sla = sla
        self.tuning = tuning or LimiterTuning()
        self.ceiling = max(1, ceiling)
        self.estimate = float(self.ceiling)  # kept fractional so small steps add up
        self.current = self.ceiling  # what routing uses: the estimate, whole
        self.history: deque[LimitChange] = deque(maxlen=self.tuning.history_size)
        self.last_window: WindowStats | None = None
        self.samples_total = 0
        self.breached_total = 0
        self._count = 0
        self._breached = 0
        self._concurrency_sum = 0.0
        self._concurrency_max = 0.0
        self._rated: list[tuple[float, float]] = []  # per sample with a rate: (concurrency, per-stream rate)
        self._ttfts_ms: list[float] = []

    def observe(self, sample: LatencySample, replicas: int = 1, cluster_size: int = 1) -> LimitChange | None:
        """Count one answer (``replicas``: the backend's engine replicas now; ``cluster_size``: the proxy
        replicas sharing it, which decides what routing can reach); at the end of a window, decide. The
        change, if the whole limit moved."""
        concurrency = sample.concurrency / max(1, replicas)
        sla = self.sla
        breached = False
        rate = sample.stream_tokens_per_s
        if rate is not None:
            self._rated.append((concurrency, rate))
            breached = sla.min_stream_tokens_per_s is not None and rate < sla.min_stream_tokens_per_s
        if sample.streamed:  # a whole answer's head comes with its last token: no time to first token
            ttft_ms = sample.ttft_s * 1000.0
            self._ttfts_ms.append(ttft_ms)
            breached = breached or (sla.ttft_p95_ms is not None and ttft_ms > sla.ttft_p95_ms)
        return self._count_one(concurrency, breached, sample.ended_at, replicas, cluster_size)

    def observe_overload(
        self, concurrency: int, at: float, replicas: int = 1, cluster_size: int = 1
    ) -> LimitChange | None:
        """Count one request the engine failed for overload (see ``overloaded``) as a breached answer at its
        worst: a stream that delivered nothing (rate 0) and a first token twice the target late. An engine
        that times out or sheds load past its knee must shrink the limit, not be invisible to it.
        ``concurrency`` as in ``LatencySample``; ``at`` (unix s) dates a change."""
        per_replica = concurrency / max(1, replicas)
        sla = self.sla
        if sla.min_stream_tokens_per_s is not None:
            self._rated.append((per_replica, 0.0))
        if sla.ttft_p95_ms is not None:
            self._ttfts_ms.append(2.0 * sla.ttft_p95_ms)
        return self._count_one(per_replica, True, at, replicas, cluster_size)

    def _count_one(
        self, concurrency: float, breached: bool, at: float, replicas: int, cluster_size: int
    ) -> LimitChange | None:
        self._count += 1
        self._concurrency_sum += concurrency
        self._concurrency_max = max(self._concurrency_max, concurrency)
        self.samples_total += 1
        if breached:
            self._breached += 1
            self.breached_total += 1
        if self._count < self.tuning.window_samples:
            return None
        return self._close_window(at, max(1, replicas), max(1, cluster_size))

    def reachable(self, replicas: int, cluster_size: int) -> float:
        """The concurrency per engine replica routing can reach at the current limit: each of the
        ``cluster_size`` proxy replicas takes the whole limit's share rounded down (at least 1), so with 3
        proxies a limit of 11 on one replica reaches 9, never 11."""
        share = max(1, self.current * replicas // cluster_size)
        return share * cluster_size / replicas

    def _close_window(self, at: float, replicas: int, cluster_size: int) -> LimitChange | None:
        stats = self._window_stats()
        self._count = self._breached = 0
        self._concurrency_sum = self._concurrency_max = 0.0
        self._rated, self._ttfts_ms = [], []
        self.last_window = stats
        estimate, why = self._estimate(stats)
        if estimate is None:
            return None
        tuning, limit = self.tuning, self.estimate
        allowance = 1.0 - self.sla.percentile / 100.0
        if stats.breached <= 2 * allowance * stats.samples:
            estimate = limit + tuning.smoothing * (estimate - limit)
        if estimate < limit:
            new = max(estimate, limit * (1.0 - tuning.max_shrink))
        elif stats.max_concurrency >= tuning.pressed * min(
            self.current, self.reachable(replicas, cluster_size)
        ):
            # routing held it to the whole limit it can reach
            new = min(estimate, limit + max(1.0, limit * tuning.max_growth))
        else:
            return None  # not pressed: what lies above the limit is unknown
        self.estimate = min(float(self.ceiling), max(1.0, new))
        current = max(1, math.floor(self.estimate))
        if current == self.current:
            return None
        self.current = current
        change = LimitChange(at, self.samples_total, current * replicas, why)
        self.history.append(change)
        return change

    def _window_stats(self) -> WindowStats:
        high = self.sla.percentile / 100.0
        rated = self._rated
        rates = [rate for _, rate in rated]
        near = [(c, rate) for c, rate in rated if c >= self.tuning.near_limit * self.current]
        basis = near if len(near) * 3 >= len(rated) else rated
        # The low tail of rates at the mean concurrency they ran at: steadier than each stream's own product
        # (a stream's count is taken at its two ends and misses the load between).
        aggregate = (
            sum(c for c, _ in basis) / len(basis) * quantile([rate for _, rate in basis], 1.0 - high)
            if basis
            else None
        )
        return WindowStats(
            samples=self._count,
            breached=self._breached,
            mean_concurrency=self._concurrency_sum / self._count,
            max_concurrency=self._concurrency_max,
            ttft_ms=quantile(self._ttfts_ms, high) if self._ttfts_ms else None,
            stream_tokens_per_s_low=quantile(rates, 1.0 - high) if rates else None,
            stream_tokens_per_s_median=quantile(rates, 0.5) if rates else None,
            aggregate_tokens_per_s_low=aggregate,
        )

    def _estimate(self, stats: WindowStats) -> tuple[float | None, str]:
        """The lowest limit the window's targets call for, and why (None: no target had data)."""
        sla, margin, limit = self.sla, 1.0 + self.tuning.margin, self.estimate
        estimates: list[tuple[float, str]] = []
        target_rate, low = sla.min_stream_tokens_per_s, stats.stream_tokens_per_s_low
        capacity = stats.aggregate_tokens_per_s_low
        if target_rate is not None and low is not None and capacity is not None:
            estimate = capacity / (target_rate * margin)
            at_risk = low < target_rate * margin
            reason = f"stream p{_pct(1 - sla.percentile / 100)} {low:.1f} tok/s"
            reason += f" {'under' if at_risk else 'meets'} {target_rate:g}"
            estimates.append((estimate if at_risk else max(estimate, limit), reason))
        target_ttft, high = sla.ttft_p95_ms, stats.ttft_ms
        if target_ttft is not None and high is not None:
            at_risk = high > target_ttft / margin
            estimate = stats.mean_concurrency * (target_ttft / margin) / max(high, 1e-3)
            reason = f"ttft p{_pct(sla.percentile / 100)} {high:.0f} ms"
            reason += f" {'over' if at_risk else 'meets'} {target_ttft:g}"
            estimates.append((estimate if at_risk else max(estimate, limit), reason))
        if not estimates:
            return None, ""
        estimate, _ = min(estimates)
        reasons = ", ".join(reason for _, reason in estimates)
        return estimate, f"{reasons} at c={stats.mean_concurrency:.1f}"

    def to_json(self, replicas: int, proxy_replicas: int) -> dict[str, Any]:
        """The limit and the latencies behind it, for ``/admin/backends`` (``capacity.limit``): the whole
        backend's limit (per replica × ``replicas``), its ceiling, this proxy replica's share of it."""
        replicas = max(0, replicas)
        whole = self.current * replicas
        window = self.last_window
        latencies: dict[str, Any] = {
            "samples": self.samples_total,
            "breached": self.breached_total,
            "window_samples": self.tuning.window_samples,
        }
        if window is not None:
            latencies.update(
                mean_concurrency=round(window.mean_concurrency * replicas, 2),
                ttft_p95_ms=_rounded(window.ttft_ms),
                stream_tokens_per_s_p5=_rounded(window.stream_tokens_per_s_low),
                stream_tokens_per_s_p50=_rounded(window.stream_tokens_per_s_median),
                aggregate_tokens_per_s=_rounded(
                    None
                    if window.aggregate_tokens_per_s_low is None
                    else window.aggregate_tokens_per_s_low * replicas
                ),
                breached_share=round(window.breached / window.samples, 4),
            )
        return {
            "current": whole,
            "ceiling": self.ceiling * replicas,
            "per_replica": self.current,
            "share": max(1, whole // max(1, proxy_replicas)),
            "history": [
                {"at": c.at, "samples": c.samples, "limit": c.limit, "reason": c.reason} for c in self.history
            ],
            "latencies": latencies,
        }


def _pct(share: float) -> str:
    return f"{round(share * 100, 3):g}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
