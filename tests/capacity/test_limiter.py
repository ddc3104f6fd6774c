"""The adaptive limit, as a pure function of the answers it is shown (no clock, no I/O).

An engine is modelled the way continuous batching behaves past the knee: ``aggregate`` tokens/s shared by
the streams running, each capped at ``per_stream_max``; a window of answers is fed at the concurrency the
limit allows.
"""

from __future__ import annotations

import logging
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.config import dedicated_config
from tokenyard.capacity.limiter import AdaptiveLimit, LimiterTuning, overloaded, quantile
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import Sla
from tokenyard.config import BackendConfig, TokenyardConfig
from tokenyard.errors import (
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from tokenyard.proxy.backends import open_backends

RATE_SLA = Sla(min_stream_tokens_per_s=30)
WINDOW = LimiterTuning().window_samples


def stream(
    rate: float, concurrency: int, *, ttft_s: float = 0.02, tokens: int = 31, at: float = 0.0
) -> LatencySample:
    """A streamed answer of ``tokens`` tokens that decoded at ``rate`` tokens/s after its first one."""
    return LatencySample(ttft_s, ttft_s + (tokens - 1) / rate, 100, tokens, True, concurrency, at)


def run_engine(
    limit: AdaptiveLimit,
    answers: int,
    *,
    aggregate: float = 600.0,
    per_stream_max: float = 400.0,
    noise: float = 0.03,
    seed: int = 0,
    ttft_floor_s: float = 0.02,
    ttft_per_stream_s: float = 0.0,
    replicas: int = 1,
    cluster_size: int = 1,
) -> list[int]:
    """Feed ``answers`` answers of an engine that always runs as many streams as routing allows (each of
    ``cluster_size`` proxy replicas its share of the limit, rounded down); the limit after each one."""
    rng = random.Random(seed)
    seen = []
    for _ in range(answers):
        running = max(1, limit.current * replicas // cluster_size) * cluster_size
        per_replica = running / replicas
        rate = min(per_stream_max, aggregate / per_replica) * math.exp(rng.gauss(0, noise))
        ttft_s = ttft_floor_s + ttft_per_stream_s * per_replica
        limit.observe(stream(rate, running, ttft_s=ttft_s), replicas, cluster_size)
        seen.append(limit.current)
    return seen


def test_it_starts_at_the_ceiling_and_decides_once_a_window() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    assert limit.current == 64
    for _ in range(WINDOW - 1):
        assert limit.observe(stream(10, 64)) is None
    assert limit.current == 64
    assert limit.last_window is None
    change = limit.observe(stream(10, 64, at=1234.5))
    assert change is not None
    assert limit.last_window is not None
    assert (change.at, change.limit) == (1234.5, 32)  # far over: still at most halved in one window


def test_it_converges_within_15_percent_of_the_true_limit_and_stays_under_the_sla() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    seen = run_engine(limit, 3000)  # 600 tokens/s ÷ 30 per stream: the true limit is 20
    steady = seen[1000:]
    assert all(17 <= current <= 20 for current in steady), sorted(set(steady))
    # At the limit it keeps, the SLA's low tail holds: no more than the 5 % allowance run under 30.
    rates = [600 / current for current in steady]
    assert sum(rate < 30 for rate in rates) / len(rates) <= 0.05


def test_it_follows_the_capacity_down_and_up_again() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    run_engine(limit, 1500)
    halved = run_engine(limit, 1500, aggregate=300)
    assert all(8 <= current <= 10 for current in halved[300:]), sorted(set(halved[300:]))
    restored = run_engine(limit, 1500)
    assert all(17 <= current <= 20 for current in restored[600:]), sorted(set(restored[600:]))


def test_a_ttft_target_converges_where_ttft_meets_it() -> None:
    # TTFT = 50 ms + 10 ms per running stream: 300 ms is met up to 25 streams.
    limit = AdaptiveLimit(Sla(ttft_p95_ms=300), ceiling=128)
    seen = run_engine(limit, 3000, aggregate=100_000, ttft_floor_s=0.05, ttft_per_stream_s=0.01)
    assert all(22 <= current <= 25 for current in seen[1500:]), sorted(set(seen[1500:]))


def test_the_tightest_target_wins() -> None:
    both = Sla(min_stream_tokens_per_s=30, ttft_p95_ms=300)
    limit = AdaptiveLimit(both, ceiling=128)
    # The rate alone allows 20, the TTFT alone 25: 20 it is.
    seen = run_engine(limit, 3000, ttft_floor_s=0.05, ttft_per_stream_s=0.01)
    assert all(17 <= current <= 20 for current in seen[1500:])
    assert "stream p5" in limit.history[-1].reason
    assert "ttft p95" in limit.history[-1].reason


def test_it_grows_only_when_the_limit_was_pressed() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    run_engine(limit, 600, aggregate=300)  # learns about 9
    learned = limit.current
    for _ in range(10 * WINDOW):  # capacity back, but the load stays at half the limit: nothing to learn
        limit.observe(stream(120, learned // 2))
    assert limit.current == learned
    for _ in range(WINDOW):  # the limit is reached: it grows, by at most a quarter (or 1) in one window
        limit.observe(stream(60, learned))
    assert learned < limit.current <= max(learned + 1, math.floor(learned * 1.25))


def test_healthy_streams_below_the_knee_do_not_shrink_it() -> None:
    # One stream at the engine's per-stream maximum: rate × concurrency underestimates the aggregate, but
    # the SLA is not at risk, so the limit holds.
    limit = AdaptiveLimit(RATE_SLA, ceiling=16)
    for _ in range(5 * WINDOW):
        limit.observe(stream(400, 1))
    assert limit.current == 16
    assert not limit.history


def test_floor_and_ceiling() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=8)
    for _ in range(20 * WINDOW):
        limit.observe(stream(1, limit.current))
    assert limit.current == 1
    for _ in range(40 * WINDOW):
        limit.observe(stream(400, limit.current))
    assert limit.current == 8


def test_whole_answers_count_their_rate_but_not_their_head() -> None:
    limit = AdaptiveLimit(Sla(ttft_p95_ms=100, min_stream_tokens_per_s=30), ceiling=4)
    whole = LatencySample(2.0, 2.0, 100, 100, False, 4)  # 50 tokens/s over its whole latency
    assert whole.stream_tokens_per_s == 50
    for _ in range(WINDOW):
        limit.observe(whole)
    window = limit.last_window
    assert window is not None
    assert window.ttft_ms is None
    assert window.breached == 0
    assert window.stream_tokens_per_s_low == 50


def test_answers_too_short_for_a_rate_still_count_their_ttft() -> None:
    limit = AdaptiveLimit(Sla(ttft_p95_ms=100, min_stream_tokens_per_s=30), ceiling=4)
    one_token = LatencySample(0.5, 0.5, 100, 1, True, 4)
    assert one_token.stream_tokens_per_s is None
    for _ in range(WINDOW):
        limit.observe(one_token)
    assert limit.last_window is not None
    assert limit.last_window.breached == WINDOW
    assert limit.current < 4  # 500 ms against 100: it shrinks on the TTFT alone


def test_the_limit_is_per_engine_replica() -> None:
    # Two replicas of the engine, 600 tokens/s each: the backend as a whole carries about 40.
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    seen = run_engine(limit, 3000, replicas=2)
    assert all(17 <= current <= 20 for current in seen[1000:])
    assert limit.history[-1].limit == 2 * limit.current
    shown = limit.to_json(replicas=2, proxy_replicas=3)
    assert shown["current"] == 2 * limit.current
    assert shown["ceiling"] == 128
    assert shown["share"] == 2 * limit.current // 3


def test_the_history_is_bounded_and_says_why() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64, tuning=LimiterTuning(history_size=3))
    for step in range(6):
        for _ in range(WINDOW):
            limit.observe(stream(10, limit.current, at=1000.0 + step))
    assert len(limit.history) == 3
    assert [change.at for change in limit.history] == [1003.0, 1004.0, 1005.0]
    assert limit.history[-1].reason.startswith("stream p5 10.0 tok/s under 30")


def test_what_admin_shows() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    assert limit.to_json(replicas=1, proxy_replicas=1) == {
        "current": 64,
        "ceiling": 64,
        "per_replica": 64,
        "share": 64,
        "history": [],
        "latencies": {"samples": 0, "breached": 0, "window_samples": WINDOW},
    }
    for _ in range(WINDOW):
        limit.observe(stream(20, 40, at=5.0))
    shown = limit.to_json(replicas=1, proxy_replicas=2)
    assert shown["history"] == [
        {"at": 5.0, "samples": WINDOW, "limit": 32, "reason": shown["history"][0]["reason"]}
    ]
    assert shown["share"] == 16
    assert shown["latencies"] == {
        "samples": WINDOW,
        "breached": WINDOW,
        "window_samples": WINDOW,
        "mean_concurrency": 40.0,
        "ttft_p95_ms": 20.0,
        "stream_tokens_per_s_p5": 20.0,
        "stream_tokens_per_s_p50": 20.0,
        "aggregate_tokens_per_s": 800.0,
        "breached_share": 1.0,
    }


def test_quantile_interpolates_between_ranks() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0], 0.25) == 1.25
    assert quantile([5.0], 0.95) == 5.0
    assert quantile(list(map(float, range(101))), 0.05) == pytest.approx(5.0)


samples = st.builds(
    LatencySample,
    ttft_s=st.floats(0, 30),
    latency_s=st.floats(0, 600),
    prompt_tokens=st.integers(0, 100_000),
    completion_tokens=st.integers(0, 10_000),
    streamed=st.booleans(),
    concurrency=st.integers(0, 10_000),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(samples, max_size=300),
    st.integers(1, 512),
    st.integers(0, 8),
    st.sampled_from([RATE_SLA, Sla(ttft_p95_ms=200), Sla(ttft_p95_ms=200, min_stream_tokens_per_s=10)]),
)
def test_whatever_it_is_shown_the_limit_stays_between_1_and_the_ceiling(
    shown: list[LatencySample], ceiling: int, replicas: int, sla: Sla
) -> None:
    limit = AdaptiveLimit(sla, ceiling, LimiterTuning(window_samples=10, history_size=5))
    for sample in shown:
        change = limit.observe(sample, replicas)
        assert 1 <= limit.current <= ceiling
        if change is not None:
            assert change.limit == limit.current * max(1, replicas)
            assert change.reason
    assert len(limit.history) <= 5
    assert limit.samples_total == len(shown)
    assert 0 <= limit.breached_total <= len(shown)


async def test_a_backend_routes_at_its_learned_limit_only_with_an_sla() -> None:
    with_sla = dedicated_config(max_concurrency=64, replicas=2, sla=RATE_SLA)
    without = dedicated_config(max_concurrency=64, replicas=2)
    serverless = BackendConfig(
        kind="dedicated_serverless", base_url="http://127.0.0.1:9/v1", max_concurrency=10, sla=RATE_SLA
    )
    config = TokenyardConfig.model_validate(
        {
            "backends": {"sla": with_sla, "fixed": without, "dser": serverless},
            "models": {"m": {"deployments": ["sla"]}},
        }
    )
    async with open_backends(config) as backends:
        fixed, learned, dser = backends["fixed"], backends["sla"], backends["dser"]
        assert fixed.limit is None
        assert fixed.wants_samples  # its measured envelope still draws the curve, without an SLA
        assert fixed.max_concurrency == 128  # today's cap, unchanged
        assert learned.wants_samples
        assert learned.max_concurrency == 128
        for _ in range(WINDOW):
            learned.observe(stream(15, 80))  # 40 per replica, each stream at 15 tokens/s: 600 per replica
        assert learned.limit is not None
        assert learned.limit.current == 32
        assert learned.max_concurrency == 64
        learned.set_cluster_size(3)
        assert learned.max_concurrency == 21  # the whole backend's 64 shared by three proxy replicas
        assert dser.engine_replicas == 1
        assert dser.max_concurrency == 10


def test_with_three_proxy_replicas_a_limit_under_the_truth_grows_back() -> None:
    # Three proxies each route 11 // 3 = 3: the backend never runs 11, only 9. Judged against 11 the limit
    # never looked pressed and stayed at 11 for good; judged against the 9 routing can reach, it grows.
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    low = run_engine(limit, 1500, aggregate=360, cluster_size=3)  # the true limit is 12: it settles at 11
    assert set(low[-300:]) == {11}
    assert limit.reachable(replicas=1, cluster_size=3) == 9
    high = run_engine(limit, 1500, aggregate=600, cluster_size=3)  # capacity back: the true limit is 20
    assert all(17 <= current <= 20 for current in high[-300:]), sorted(set(high[-300:]))


def test_what_counts_as_the_engines_overload() -> None:
    assert overloaded(UpstreamTimeout("no response head within 30 s"), dedicated=True)
    assert overloaded(UpstreamStatusError("503", status=503), dedicated=False)
    assert overloaded(UpstreamStatusError("429", status=429), dedicated=True)
    assert not overloaded(UpstreamStatusError("429", status=429), dedicated=False)  # a provider's quota
    assert not overloaded(UpstreamStatusError("401", status=401), dedicated=True)
    assert not overloaded(UpstreamConnectError("refused"), dedicated=True)
    assert not overloaded(UpstreamStreamBroken("cut"), dedicated=True)


def test_an_engine_that_fails_instead_of_slowing_down_shrinks_the_limit() -> None:
    limit = AdaptiveLimit(Sla(ttft_p95_ms=500, min_stream_tokens_per_s=30), ceiling=64)
    for _ in range(WINDOW // 2):  # the answers that came meet the SLA; the rest timed out or 503'd
        limit.observe(stream(50, 64))
    for index in range(WINDOW // 2):
        change = limit.observe_overload(64, at=100.0 + index)
    assert change is not None
    assert change.limit == 32  # at most halved in one window
    assert limit.breached_total == WINDOW // 2
    assert limit.last_window is not None
    assert limit.last_window.stream_tokens_per_s_low == 0  # a failure delivered nothing
    assert limit.last_window.ttft_ms == 1000  # and its first token counts twice the target late


def test_failures_under_the_allowance_do_not_move_it() -> None:
    limit = AdaptiveLimit(RATE_SLA, ceiling=64)
    for _ in range(WINDOW - 1):
        limit.observe(stream(50, 40))
    assert limit.observe_overload(40, at=1.0) is None  # one in 30: under the 5 % a p95 SLA allows
    assert limit.current == 64


async def test_a_backend_feeds_its_limit_overload_failures_only(caplog: pytest.LogCaptureFixture) -> None:
    config = TokenyardConfig.model_validate(
        {
            "backends": {"sla": dedicated_config(max_concurrency=64, sla=RATE_SLA)},
            "models": {"m": {"deployments": ["sla"]}},
        }
    )
    async with open_backends(config) as backends:
        backend = backends["sla"]
        assert backend.limit is not None
        for _ in range(WINDOW):
            backend.observe_failure(UpstreamConnectError("refused"), 64, 1.0)
        assert backend.limit.samples_total == 0  # not the engine's load: the circuit breaker's business
        assert backend.envelope is not None
        with caplog.at_level(logging.DEBUG, logger="tokenyard.backends"):
            for _ in range(WINDOW):
                backend.observe_failure(UpstreamStatusError("503", status=503), 64, 1.0)
            assert backend.limit.current == 32
            for _ in range(WINDOW):  # answers at 25 tok/s: a small step down
                backend.observe(stream(25, 32))
        assert 16 < backend.limit.current < 32
        levels = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records]
        # A halving is news; a small step is for debugging.
        assert levels == [
            (logging.INFO, "backend sla: concurrency limit 32"),
            (logging.DEBUG, f"backend sla: concurrency limit {backend.limit.current}"),
        ]
