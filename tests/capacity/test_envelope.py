"""The measured envelope by hand-worked numbers: cells, the curve, the capacity at the SLA, merge, decay."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenyard.capacity import envelope
from tokenyard.capacity.envelope import Recorder
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import Sla
from tokenyard.meter.shapes import shape_index as envelope_index

SLA = Sla(min_stream_tokens_per_s=30)


def streamed(
    concurrency: int, rate: float, *, prompt: int = 200, completion: int = 61, ttft_s: float = 0.1
) -> LatencySample:
    """A stream whose decode rate is exactly ``rate``: (completion - 1) tokens after the first."""
    return LatencySample(
        ttft_s=ttft_s,
        latency_s=ttft_s + (completion - 1) / rate,
        prompt_tokens=prompt,
        completion_tokens=completion,
        streamed=True,
        concurrency=concurrency,
    )


def engine_rate(concurrency: int) -> float:
    """The simulator's model: 600 tok/s shared among the streams, at most 400 per stream."""
    return min(400.0, 600.0 / concurrency)


def record(recorder: Recorder, levels: dict[int, int], replicas: int = 1) -> None:
    for concurrency, count in levels.items():
        for _ in range(count):
            recorder.observe(streamed(concurrency * replicas, engine_rate(concurrency)), replicas)


def test_levels_are_exact_to_64_then_banded() -> None:
    assert [envelope.level_of(c) for c in (0, 0.2, 1, 1.5, 64, 65, 72, 73, 256, 257, 300)] == [
        1, 1, 1, 2, 64, 72, 72, 80, 256, 288, 320,
    ]  # fmt: skip


def test_shapes_are_log_spaced_buckets_with_labels_that_read_back() -> None:
    assert envelope.shape_of(127, 63) == (0, 0)
    assert envelope.shape_of(128, 64) == (1, 1)
    assert envelope.shape_of(2047, 1023) == (2, 2)
    assert envelope.shape_of(10_000, 5_000) == (4, 3)
    assert envelope.shape_label((1, 1)) == "in128-511/out64-255"
    assert envelope.shape_label((4, 3)) == "in8192+/out1024+"
    for shape in [(i, o) for i in range(5) for o in range(4)]:
        assert envelope.shape_from_label(envelope.shape_label(shape)) == shape
    assert envelope.shape_from_label("in1-2/out3-4") is None


def test_a_sample_meets_the_sla_by_its_rate_and_ttft() -> None:
    both = Sla(min_stream_tokens_per_s=30, ttft_p95_ms=500)
    assert envelope.meets(streamed(1, 30.0), both)
    assert not envelope.meets(streamed(1, 29.0), both)
    assert not envelope.meets(streamed(1, 100.0, ttft_s=0.6), both)
    assert envelope.meets(streamed(1, 1.0), None)  # no SLA: every request meets it
    whole = LatencySample(2.0, 2.0, 100, 100, streamed=False, concurrency=1)
    assert whole.stream_tokens_per_s == 50.0  # a whole answer: completion tokens over its latency
    assert envelope.meets(whole, both)  # its head comes after its generation: no TTFT to judge


def test_whole_answers_count_for_the_rate_but_not_the_ttft() -> None:
    recorder = Recorder(SLA)
    recorder.observe(streamed(1, 60.0, ttft_s=0.2), 1)
    recorder.observe(LatencySample(3.0, 3.0, 100, 60, streamed=False, concurrency=1), 1)  # 20 tok/s
    (point,) = envelope.curve(recorder.peek().items())
    assert point.samples == 2
    assert point.ttft_ms == pytest.approx(200)
    assert point.stream_tokens_per_s == pytest.approx(40)
    assert point.met_share == 0.5


def test_the_curve_trades_per_stream_for_aggregate_throughput() -> None:
    recorder = Recorder(SLA)
    record(recorder, {1: 50, 10: 50, 20: 50, 25: 20})
    points = envelope.curve(recorder.peek().items(), SLA.percentile)
    assert [p.level for p in points] == [1, 10, 20, 25]
    assert [p.stream_tokens_per_s for p in points] == pytest.approx([400, 60, 30, 24])
    assert [p.aggregate_tokens_per_s for p in points] == pytest.approx([400, 600, 600, 600])
    assert [p.meets_sla for p in points] == [True, True, True, False]
    assert points[0].ttft_ms == pytest.approx(100)


def test_capacity_is_the_aggregate_at_the_largest_level_under_the_knee() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 50, 10: 50, 20: 50, 25: 20, 30: 20})
    cap = envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=64)
    assert cap is not None
    assert cap.enough
    assert (cap.concurrency, cap.aggregate_tokens_per_s, cap.stream_tokens_per_s) == (20, 600, 30)
    assert cap.samples == 190
    assert cap.why == "knee at c=25"
    assert cap.describe() == "measured envelope (190 samples, c=20 per replica at 30 tok/s per stream)"


def test_a_level_above_the_knee_that_happens_to_meet_does_not_count() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 50, 10: 50, 12: 50, 20: 50})
    for _ in range(20):  # level 15 breaches (a noisy moment), level 20 above it met
        recorder.observe(streamed(15, 10.0), 1)
    cap = envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=64)
    assert cap is not None
    assert cap.concurrency == 12


def test_a_level_meets_when_the_percentile_of_its_samples_do() -> None:
    recorder = Recorder(SLA)
    for i in range(20):
        recorder.observe(streamed(4, 20.0 if i == 0 else 40.0), 1)  # 19 of 20 met: 95 %
        recorder.observe(streamed(5, 20.0 if i < 2 else 40.0), 1)  # 18 of 20: 90 %
    points = envelope.curve(recorder.peek().items(), 95)
    assert [(p.level, p.meets_sla) for p in points] == [(4, True), (5, False)]
    assert [(p.level, p.meets_sla) for p in envelope.curve(recorder.peek().items(), 90)] == [
        (4, True),
        (5, True),
    ]


@pytest.mark.parametrize(
    ("levels", "ceiling", "enough", "why"),
    [
        ({5: 50, 10: 50}, 64, False, "2 of 3 levels with 50+ samples"),
        ({5: 50, 10: 50, 20: 50}, 64, False, "the SLA held at every level seen"),
        ({5: 50, 10: 50, 20: 50}, 20, True, "ceiling c=20 reached within the SLA"),
        ({2: 50, 5: 50, 10: 50, 20: 49, 25: 20}, 64, True, "knee at c=25"),
    ],
)
def test_enough_data_needs_three_measured_levels_and_the_knee_or_the_ceiling(
    levels: dict[int, int], ceiling: int, enough: bool, why: str
) -> None:
    recorder = Recorder(SLA)
    record(recorder, levels)
    cap = envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=ceiling)
    assert cap is not None
    assert cap.enough is enough
    assert cap.why.startswith(why)
    if levels.get(20) == 49:  # 49 samples at c=20: not measured, so the capacity is read at c=10
        assert (cap.concurrency, cap.aggregate_tokens_per_s) == (10, pytest.approx(600))


def test_no_capacity_when_no_measured_level_meets_the_sla() -> None:
    recorder = Recorder(SLA)
    record(recorder, {30: 60})
    assert envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=64) is None


def test_concurrency_counts_per_replica() -> None:
    recorder = Recorder(SLA)
    record(recorder, {10: 3}, replicas=2)  # 20 in flight over 2 replicas: level 10
    ((shape, level),) = recorder.peek()
    assert level == 10
    assert recorder.peek()[(shape, level)][envelope.CONCURRENCY_SUM] == 30


def test_replicas_merge_exactly_through_the_document() -> None:
    one, two, together = Recorder(SLA), Recorder(SLA), Recorder(SLA)
    record(one, {5: 10, 20: 3})
    record(two, {5: 7, 25: 4})
    record(together, {5: 17, 20: 3, 25: 4})
    doc = envelope.merge_document(None, {"a": one.take()}, now_wall=1.0)
    doc = envelope.merge_document(doc, {"a": two.take(), "b": {}}, now_wall=2.0)
    assert one.peek() == {}
    assert set(doc["backends"]) == {"a"}
    assert doc["updated_at"] == 2.0
    merged = envelope.cells_from_json(doc["backends"]["a"])
    assert merged.keys() == together.peek().keys()
    for key, sums in together.peek().items():
        assert merged[key] == pytest.approx(sums)


def test_decay_halves_the_sums_and_keeps_the_means() -> None:
    recorder = Recorder(SLA)
    record(recorder, {10: 150, 20: 1})
    doc = envelope.merge_document(None, {"a": recorder.take()}, now_wall=0.0, keep_samples=100)
    cells = envelope.cells_from_json(doc["backends"]["a"])
    assert [sums[envelope.N] for sums in cells.values()] == [75.0]  # the lone c=20 sample faded out
    (point,) = envelope.curve(cells.items())
    assert point.stream_tokens_per_s == pytest.approx(60)


def test_counts_that_could_not_be_stored_come_back_with_the_next_take() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 2})
    taken = recorder.take()
    record(recorder, {5: 1})
    recorder.give_back(taken)
    ((_, sums),) = recorder.take().items()
    assert sums[envelope.N] == 3


def test_a_document_of_another_format_or_garbage_is_started_afresh() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 2})
    doc = envelope.merge_document({"format": 99, "backends": {"x": {}}}, {"a": recorder.take()}, now_wall=0)
    assert set(doc["backends"]) == {"a"}
    assert envelope.cells_from_json({"in0-127/out0-63": {"x": [1], "3": "no"}, "bad": {}}) == {}
    stored = {"in0-127/out0-63": {"3": [None] * 7, "4": [-1] * 7, "5": [True] * 7, "6": [1] * 7}}
    assert envelope.cells_from_json(stored) == {((0, 0), 6): [1.0] * 7}  # one bad write stops nobody


def test_the_summary_has_the_whole_curve_its_capacity_and_each_shape() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 50, 10: 50, 20: 50, 25: 20})
    recorder.observe(streamed(5, 120.0, prompt=4000, completion=300), 1)
    summary = envelope.summary(recorder.peek(), SLA, 64)
    assert summary["samples"] == 171
    assert summary["capacity"]["aggregate_tokens_per_s"] == 600
    assert summary["capacity"]["enough_data"] is True
    assert [p["concurrency"] for p in summary["curve"]] == [5, 10, 20, 25]
    assert [s["shape"] for s in summary["shapes"]] == ["in128-511/out0-63", "in2048-8191/out256-1023"]
    assert summary["shapes"][1]["capacity"] is None
    assert envelope.summary(recorder.peek(), None, 64)["capacity"] is None  # no SLA: a curve, no capacity


def test_the_stored_document_is_read_once_for_curve_capacity_and_learned_limit() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 50, 10: 50, 20: 50, 25: 20})
    doc = envelope.merge_document(None, {"a": recorder.take()}, now_wall=0)
    stored = envelope.backend_envelope(doc, "a", SLA, 64)
    assert [p.level for p in stored.points] == [5, 10, 20, 25]
    assert stored.capacity is not None
    assert stored.capacity.aggregate_tokens_per_s == pytest.approx(600)
    assert stored.learned_limit is None
    assert envelope.backend_envelope(doc, "b", SLA, 64) == envelope.Stored([], None, None)
    no_sla = envelope.backend_envelope(doc, "a", None, 64)
    assert (len(no_sla.points), no_sla.capacity) == (4, None)  # a curve to draw, no capacity
    assert envelope.backend_envelope(None, "a", SLA, 64) == envelope.Stored([], None, None)
    assert envelope.backend_envelope({"format": 1, "backends": doc["backends"]}, "a", SLA, 64).points == []


def test_each_merge_records_the_learned_limits_dated_and_keeps_the_others() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 2})
    doc = envelope.merge_document(None, {"a": recorder.take()}, now_wall=10.0, limits={"a": 18, "b": 7})
    record(recorder, {5: 1})
    doc = envelope.merge_document(doc, {"a": recorder.take()}, now_wall=20.0, limits={"a": 17})
    assert doc["limits"] == {"a": {"per_replica": 17, "at": 20.0}, "b": {"per_replica": 7, "at": 10.0}}
    assert (envelope.stored_limit(doc, "a"), envelope.stored_limit(doc, "b")) == (17, 7)
    assert envelope.stored_limit(doc, "c") is None
    assert envelope.backend_envelope(doc, "a", SLA, 64).learned_limit == 17
    for garbage in ({"a": {"per_replica": "17"}}, {"a": {"per_replica": True}}, {"a": 17}, [17]):
        assert envelope.stored_limit({"format": envelope.FORMAT, "limits": garbage}, "a") is None
    assert "limits" not in envelope.merge_document(None, {"a": {}}, now_wall=0)


def test_a_learned_limit_below_the_ceiling_is_the_knee() -> None:
    # 600 tok/s shared: every level up to 20 meets 30 tok/s per stream, and no level above was seen (the
    # limiter kept the load off it). Alone the curve is a lower bound; the limiter, holding 15 per replica
    # because c=16 breached, puts the knee at 16: capacity at c=15, 15 × 40 = 600 tok/s.
    recorder = Recorder(SLA)
    record(recorder, {5: 50, 10: 50, 15: 50, 20: 50})
    points = envelope.curve(recorder.peek().items())
    alone = envelope.capacity(points, ceiling=64)
    assert alone is not None
    assert (alone.concurrency, alone.enough) == (20, False)
    held = envelope.capacity(points, ceiling=64, learned_limit=15)
    assert held is not None
    assert (held.concurrency, held.aggregate_tokens_per_s, held.stream_tokens_per_s) == (15, 600, 40)
    assert held.enough is True
    assert held.why == "knee at c=16: the SLA limiter holds 15 per replica (ceiling 64)"
    # A limit back at its ceiling is no evidence; a breaching level below the limit is the lower knee.
    assert envelope.capacity(points, ceiling=20, learned_limit=20) == envelope.capacity(points, ceiling=20)
    for _ in range(20):
        recorder.observe(streamed(12, 10.0), 1)
    lower = envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=64, learned_limit=15)
    assert lower is not None
    assert (lower.concurrency, lower.why) == (10, "knee at c=12")


def test_a_constant_load_held_at_the_limit_without_a_breach_is_enough() -> None:
    # The reviewer's scenario: 600 tok/s, SLA 30 tok/s per stream; more clients than the limit, so the
    # limiter holds every replica at 18 (just under 20, its margin) and nothing breaches. The answers land
    # at c=18 (a few at 19: a stream counts the larger of its admission's and its end's in-flight count).
    # One level, no breaching level: before, never enough. Now the learned limit 18 is the knee's evidence:
    # capacity at c=18, 18 × 600/18 = 600 tok/s, enough once c=18 alone holds 3 × 50 = 150 samples.
    recorder = Recorder(SLA)
    record(recorder, {18: 149, 19: 30})
    short = envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=64, learned_limit=18)
    assert short is not None
    assert (short.concurrency, short.enough, short.why) == (18, False, "1 of 3 levels with 50+ samples")
    record(recorder, {18: 1})
    cap = envelope.capacity(envelope.curve(recorder.peek().items()), ceiling=64, learned_limit=18)
    assert cap is not None
    assert (cap.concurrency, cap.aggregate_tokens_per_s, cap.enough) == (18, pytest.approx(600), True)
    assert cap.why == "knee at c=19: the SLA limiter holds 18 per replica (ceiling 64)"


def test_held_at_the_limit_it_stays_enough_however_long_it_runs() -> None:
    # Merged every 1,000 answers and decayed past 20,000 samples (halving every sum), for 60,000 answers:
    # the level at the limit keeps thousands of samples, so decay never takes "enough" away.
    doc = None
    for _ in range(60):
        recorder = Recorder(SLA)
        record(recorder, {18: 990, 19: 10})
        doc = envelope.merge_document(doc, {"a": recorder.take()}, now_wall=0, limits={"a": 18})
        cap = envelope.backend_envelope(doc, "a", SLA, 64).capacity
        assert cap is not None
        assert (cap.concurrency, cap.enough) == (18, True)


samples_strategy = st.lists(
    st.builds(
        LatencySample,
        ttft_s=st.floats(0, 5),
        latency_s=st.floats(0, 60),
        prompt_tokens=st.integers(0, 20_000),
        completion_tokens=st.integers(0, 5_000),
        streamed=st.booleans(),
        concurrency=st.integers(1, 600),
    ),
    max_size=60,
)


@given(samples=samples_strategy, cut=st.integers(0, 60), replicas=st.integers(1, 4))
def test_any_split_across_replicas_merges_to_the_same_envelope(
    samples: list[LatencySample], cut: int, replicas: int
) -> None:
    whole, first, second = Recorder(SLA), Recorder(SLA), Recorder(SLA)
    for i, sample in enumerate(samples):
        whole.observe(sample, replicas)
        (first if i < cut else second).observe(sample, replicas)
    doc = envelope.merge_document(None, {"a": first.take()}, now_wall=0)
    doc = envelope.merge_document(orjson.loads(orjson.dumps(doc)), {"a": second.take()}, now_wall=0)
    merged = envelope.cells_from_json(doc["backends"].get("a", {}))
    expected = whole.peek()
    assert merged.keys() == expected.keys()
    for key, sums in expected.items():
        assert merged[key] == pytest.approx(sums, rel=1e-6, abs=1e-5)
    points = envelope.curve(merged.items())
    assert sum(p.samples for p in points) == len(samples)
    assert all(0 <= p.met_share <= 1 for p in points)


def test_the_capacity_per_shape_counts_only_shapes_with_enough_data() -> None:
    recorder = Recorder(SLA)
    record(recorder, {5: 50, 10: 50, 20: 50, 25: 20})  # prompt 200, completion 61: in128-511/out0-63
    for _ in range(50):  # another shape, one level only: not enough
        recorder.observe(streamed(5, engine_rate(5), prompt=3000, completion=300), 1)
    doc = envelope.merge_document(None, {"a": recorder.take()}, now_wall=0)
    per_shape = envelope.envelope_shape_capacity(doc, "a", SLA, ceiling=64)
    assert per_shape == {envelope_index(200, 61): pytest.approx(600)}
    assert envelope.envelope_shape_capacity(doc, "a", None, ceiling=64) == {}
    assert envelope.envelope_shape_capacity(doc, "b", SLA, ceiling=64) == {}
    assert envelope.envelope_shape_capacity(None, "a", SLA, ceiling=64) == {}
