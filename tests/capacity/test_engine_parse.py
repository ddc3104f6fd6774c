"""Reading engines' /metrics: each profile on realistic text, auto detection, label sets, errors; and what a
backend's engine state says (fresh, stale, saturated) on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenyard.capacity.engine import EngineSnapshot, EngineState, parse_metrics, saturation
from tokenyard.capacity.settings import EngineMetrics
from tokenyard.errors import EngineMetricsInvalid

FIXTURES = Path(__file__).parent / "fixtures"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def parse(name: str, profile: str = "auto", **times: float) -> EngineSnapshot:
    return parse_metrics(
        read(name), profile, scraped_at=times.get("scraped_at", 100.0), wall_at=times.get("wall_at", 1e9)
    )


def test_vllm_sums_counts_over_engines_and_averages_kv_usage() -> None:
    snap = parse("vllm.txt", "vllm")
    assert snap.profile == "vllm"
    assert (snap.running, snap.waiting) == (21.0, 3.0)
    assert snap.kv_cache_usage == pytest.approx((0.84 + 0.62) / 2)
    assert snap.prompt_tokens_total == 3_500_000.0
    assert snap.generation_tokens_total == 1_500_000.0
    assert snap.prefix_cache_queries_total == 2_000_000.0
    assert snap.prefix_cache_hits_total == snap.cached_tokens_total == 750_000.0
    assert snap.busy_seconds_total is None  # vLLM does not say
    assert "busy_seconds_total" not in snap.signals
    assert {"running", "waiting", "kv_cache_usage", "prompt_tokens_total"} <= snap.signals
    assert snap.scraped_at == 100.0


def test_vllm_before_v1_falls_back_to_gpu_cache_usage() -> None:
    snap = parse("vllm_v0.txt")
    assert snap.profile == "vllm"
    assert snap.kv_cache_usage == 0.3125
    assert (snap.running, snap.waiting) == (4.0, 0.0)
    assert snap.prefix_cache_queries_total is None


def test_sglang_has_real_busy_time() -> None:
    snap = parse("sglang.txt")
    assert snap.profile == "sglang"
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (28.0, 0.0, 0.28)
    assert snap.busy_seconds_total == pytest.approx(4600.75)  # summed over categories
    assert snap.cached_tokens_total == 2.5e6
    assert snap.prompt_tokens_total == 8_128_902.0


def test_tgi_reads_queue_batch_and_forward_time() -> None:
    snap = parse("tgi.txt")
    assert snap.profile == "tgi"
    assert (snap.running, snap.waiting) == (32.0, 5.0)
    assert snap.kv_cache_usage is None
    assert snap.busy_seconds_total == pytest.approx(18.5 + 1021.5)
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (700_000.0, 280_000.0)


def test_llamacpp_with_a_kv_cache_gauge() -> None:
    snap = parse("llamacpp.txt")
    assert snap.profile == "llamacpp"
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (1.0, 0.0, 0.12)
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (4821.0, 2087.0)


def test_llamacpp_today_counts_cached_prompt_tokens_apart() -> None:
    snap = parse("llamacpp_b6000.txt")
    assert snap.profile == "llamacpp"
    assert (snap.running, snap.waiting) == (1.0, 2.0)
    assert snap.kv_cache_usage is None  # no longer exposed
    assert "kv_cache_usage" not in snap.signals
    assert snap.prompt_tokens_total == 31 + 9  # every prompt token it took in, as usage reports them
    assert (snap.cached_tokens_total, snap.generation_tokens_total) == (9.0, 5.0)


@pytest.mark.parametrize("fixture", ["vllm.txt", "sglang.txt", "tgi.txt", "llamacpp.txt"])
def test_a_named_profile_refuses_another_engines_text(fixture: str) -> None:
    other = "llamacpp" if fixture != "llamacpp.txt" else "vllm"
    with pytest.raises(EngineMetricsInvalid, match=f"none of {other}'s metrics"):
        parse(fixture, other)


@pytest.mark.parametrize(
    "text",
    [
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        "",
        "# HELP up whether\n# TYPE up gauge\nup 1\n",
    ],
)
def test_text_of_no_engine_is_a_clear_error(text: str) -> None:
    with pytest.raises(EngineMetricsInvalid, match="none of any engine's metrics"):
        parse_metrics(text, "auto", scraped_at=0.0, wall_at=0.0)


@pytest.mark.parametrize(
    "line",
    [
        'vllm:num_requests_running{model_name="m" 3',
        "vllm:num_requests_waiting{} three",
        'vllm:kv_cache_usage_perc{model_name="m} 0.5',
    ],
)
def test_a_broken_metric_line_is_a_clear_error(line: str) -> None:
    with pytest.raises(EngineMetricsInvalid, match="not valid Prometheus text"):
        parse_metrics(read("vllm.txt") + line + "\n", "auto", scraped_at=0.0, wall_at=0.0)


def test_timestamped_samples_date_the_snapshot() -> None:
    text = "vllm:num_requests_waiting 0 1000000000\nvllm:num_requests_running 2 1000005000\n"  # ms
    snap = parse_metrics(text, "vllm", scraped_at=500.0, wall_at=1_000_030.0)
    assert snap.scraped_at == pytest.approx(500.0 - 30.0)  # the oldest stamp: 30 s old


def test_unknown_profile() -> None:
    with pytest.raises(EngineMetricsInvalid, match="unknown engine profile"):
        parse_metrics("", "triton", scraped_at=0.0, wall_at=0.0)


SETTINGS = EngineMetrics(stale_after_s=10.0, kv_cache_saturated=0.8, queue_saturated=0)


def snapshot(at: float, **figures: float) -> EngineSnapshot:
    return EngineSnapshot(profile="vllm", scraped_at=at, signals=frozenset(figures), **figures)


@pytest.mark.parametrize(
    ("figures", "why"),
    [
        ({"waiting": 0.0, "kv_cache_usage": 0.5}, None),
        ({"waiting": 3.0, "kv_cache_usage": 0.5}, "queue 3"),
        ({"waiting": 0.0, "kv_cache_usage": 0.95}, "KV cache 95%"),
        ({"waiting": 0.0, "kv_cache_usage": 0.8}, None),  # at the threshold is not above it
        ({"running": 40.0}, None),  # nothing said of the queue or KV cache: not saturated by the engine
        ({"waiting": 2.0, "kv_cache_usage": 0.99}, "queue 2"),
    ],
)
def test_saturation(figures: dict[str, float], why: str | None) -> None:
    assert saturation(snapshot(0.0, **figures), SETTINGS) == why


def test_a_queue_allowance() -> None:
    lenient = EngineMetrics(queue_saturated=4)
    assert saturation(snapshot(0.0, waiting=4.0), lenient) is None
    assert saturation(snapshot(0.0, waiting=5.0), lenient) == "queue 5"


def test_the_state_says_nothing_once_its_figures_are_stale() -> None:
    state = EngineState("http://e/metrics", SETTINGS)
    assert state.saturated(0.0) is None
    assert not state.fresh(0.0)
    state.record(snapshot(95.0, waiting=3.0), 95.0)
    state.record(snapshot(100.0, waiting=3.0), 100.0)
    assert state.fresh(105.0)
    assert state.saturated(105.0) == "queue 3"
    assert state.saturated(110.0) == "queue 3"
    assert state.saturated(110.5) is None
    assert not state.fresh(110.5)
    state.record_failure("unreachable", "cannot reach it")
    state.record_failure("unreachable", "cannot reach it")
    assert (state.failures, state.last_error) == (2, "cannot reach it")
    assert state.latest is not None  # kept, to age out
    state.record(snapshot(120.0, waiting=0.0), 120.0)
    assert state.failures == 0
    assert state.last_error is None
    assert dict(state.scrapes) == {"ok": 3, "unreachable": 2}


def test_saturated_only_after_two_saturated_scrapes_in_a_row_and_clear_after_one_that_is_not() -> None:
    state = EngineState("http://e/metrics", SETTINGS)
    state.record(snapshot(0.0, waiting=1.0), 0.0)  # one scrape catching a request between two steps
    assert state.saturated(1.0) is None
    state.record(snapshot(5.0, waiting=0.0), 5.0)
    state.record(snapshot(10.0, waiting=1.0), 10.0)
    assert state.saturated(11.0) is None  # not in a row
    state.record(snapshot(15.0, kv_cache_usage=0.95), 15.0)  # saturated for another reason: still in a row
    assert state.saturated(16.0) == "KV cache 95%"
    assert state.to_json(16.0)["saturated_scrapes"] == 2
    state.record_failure("unreachable", "cannot reach it")  # says nothing either way
    state.record(snapshot(25.0, waiting=2.0), 25.0)
    assert state.saturated(26.0) == "queue 2"
    state.record(snapshot(30.0, waiting=0.0, kv_cache_usage=0.5), 30.0)
    assert state.saturated(31.0) is None  # one scrape saying not clears it
    assert state.to_json(31.0)["saturated_scrapes"] == 0


def test_a_snapshot_already_stale_when_read_ends_the_streak() -> None:
    state = EngineState("http://e/metrics", SETTINGS)
    state.record(snapshot(100.0, waiting=3.0), 100.0)
    state.record(snapshot(100.0, waiting=3.0), 111.0)  # a caching exporter's figures, 11 s old
    state.record(snapshot(112.0, waiting=3.0), 112.0)
    assert state.saturated(112.0) is None  # one fresh saturated scrape so far


def test_saturated_after_one_scrape_when_configured() -> None:
    state = EngineState("http://e/metrics", EngineMetrics(saturated_after=1))
    state.record(snapshot(0.0, waiting=1.0), 0.0)
    assert state.saturated(1.0) == "queue 1"


def test_the_admin_view() -> None:
    state = EngineState("http://e/metrics", SETTINGS)
    empty = state.to_json(0.0)
    assert empty["profile"] == "auto"
    assert empty["signals"] == []
    assert empty["fresh"] is False
    assert empty["saturated"] is False
    assert empty["why"] is None
    assert empty["age_s"] is None
    state.record(parse("vllm.txt", scraped_at=45.0), 45.0)
    assert state.to_json(46.0)["saturated"] is False  # one scrape: not yet
    state.record(parse("vllm.txt", scraped_at=50.0), 50.0)
    view = state.to_json(52.0)
    assert view["profile"] == "vllm"
    assert view["fresh"] is True
    assert view["age_s"] == 2.0
    assert view["saturated"] is True
    assert view["why"] == "queue 3"
    assert (view["running"], view["waiting"]) == (21.0, 3.0)
    assert "kv_cache_usage" in view["signals"]


@given(
    st.lists(
        st.tuples(
            st.text("abcxyz/-_.", min_size=1, max_size=8),
            st.integers(0, 500),
            st.integers(0, 64),
            st.floats(0, 1, allow_nan=False),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda row: row[0],
    )
)
def test_counts_are_summed_and_usage_averaged_over_any_label_sets(
    rows: list[tuple[str, int, int, float]],
) -> None:
    lines = []
    for model, running, waiting, usage in rows:
        labels = f'{{engine="0",model_name="{model}"}}'
        lines += [
            f"vllm:num_requests_running{labels} {running}",
            f"vllm:num_requests_waiting{labels} {waiting}",
            f"vllm:kv_cache_usage_perc{labels} {usage!r}",
        ]
    snap = parse_metrics("\n".join(lines) + "\n", "auto", scraped_at=0.0, wall_at=0.0)
    assert snap.running == sum(r[1] for r in rows)
    assert snap.waiting == sum(r[2] for r in rows)
    assert snap.kv_cache_usage == pytest.approx(sum(r[3] for r in rows) / len(rows))
