"""Requests by shape: the meter counts each request in its shape, and the advisor's traffic keeps them per
minute, sparse, agreeing with a plain dense model of the same minutes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenyard.advisor.traffic import ShapeCounts, TokenSeries, TrafficBuilder
from tokenyard.meter.meter import add_record
from tokenyard.meter.model import AGG_FIELDS, UsageRecord
from tokenyard.meter.shapes import SHAPE_COUNT, SHAPE_FIELDS, shape_index, shape_of

T0 = 1_792_713_600


def request(prompt: int, completion: int) -> UsageRecord:
    return UsageRecord(
        T0, "r", "t", "m", "b", "serverless", "realtime", "primary", 200, prompt, 0, completion
    )


@given(st.integers(0, 20_000), st.integers(0, 5_000))
def test_the_meter_counts_a_request_in_its_shape(prompt: int, completion: int) -> None:
    row = [0] * len(AGG_FIELDS)
    add_record(row, request(prompt, completion))
    fields = dict(zip(AGG_FIELDS, row, strict=True))
    k = shape_index(prompt, completion)
    assert shape_of(prompt, completion) == divmod(k, 4)
    shaped = {name: fields[name] for name in SHAPE_FIELDS if fields[name]}
    expected = {f"s{k}_requests": 1, f"s{k}_prompt": prompt, f"s{k}_completion": completion}
    assert shaped == {name: value for name, value in expected.items() if value}


entries = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, SHAPE_COUNT - 1), st.integers(1, 5)), max_size=40
)


def dense(rows: list[tuple[int, int, int]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for minute, shape, n in rows:
        out.setdefault(minute, [0.0] * SHAPE_COUNT)[shape] += n
    return out


def counts(rows: list[tuple[int, int, int]]) -> ShapeCounts:
    out = ShapeCounts()
    for minute, shape, n in rows:
        out.add(minute, shape, n, 10.0 * n, 2.0 * n)
    return out


@settings(max_examples=80, deadline=None)
@given(entries, entries, st.integers(0, 40), st.integers(0, 40))
def test_columns_plus_and_between_agree_with_a_dense_model(
    a: list[tuple[int, int, int]], b: list[tuple[int, int, int]], lo: int, span: int
) -> None:
    both = dense(a + b)
    index = sorted(both)
    merged = counts(a).plus(counts(b))
    columns = merged.columns(index)
    for shape in range(SHAPE_COUNT):
        assert list(columns[shape]) == [both[m][shape] for m in index]
    weights = [float(k + 1) for k in range(SHAPE_COUNT)]
    assert merged.weighted(index, weights) == [
        sum(n * w for n, w in zip(both[m], weights, strict=True)) for m in index
    ]
    assert [t[0] for t in merged.totals()] == [sum(both[m][k] for m in index) for k in range(SHAPE_COUNT)]
    cut = merged.between(lo, lo + span)
    kept = [m for m in index if lo <= m < lo + span]
    cut_columns = cut.columns([m - lo for m in kept])
    for shape in range(SHAPE_COUNT):
        assert list(cut_columns[shape]) == [both[m][shape] for m in kept]


def test_rows_without_shapes_count_in_the_shape_of_their_mean_lengths() -> None:
    series = TokenSeries()
    # A row stored before the meter counted shapes: 4 requests averaging 300 prompt and 100 completion tokens.
    series.add(0, 4, 1200, 0, 400)
    # A row that counted 2 of its 3 requests (in shape 0); the third is the rest: 5000 in, 2000 out.
    series.add(1, 3, 5020, 0, 2010, [(0, 2, 20, 10)])
    totals = series.shapes.totals()
    assert totals[shape_index(300, 100)] == (4, 1200, 400)
    assert totals[0] == (2, 20, 10)
    assert totals[shape_index(5000, 2000)] == (1, 5000, 2000)
    assert sum(t[0] for t in totals) == sum(series.requests)


def test_the_builder_keeps_shapes_per_workload_and_series() -> None:
    builder = TrafficBuilder(T0, T0 + 3600, lambda model, tenant: model, lambda model, tenant: False)
    builder.add(
        T0 + 60,
        model="m",
        tenant="t",
        mode="realtime",
        requests=1,
        prompt=50,
        cached=0,
        completion=30,
        shapes=[(shape_index(50, 30), 1, 50, 30)],
    )
    builder.add(
        T0 + 120, model="m", tenant="t", mode="async", requests=1, prompt=9000, cached=0, completion=30
    )
    traffic = builder.workloads["m"]
    assert traffic.realtime.shapes.totals()[0] == (1, 50, 30)
    assert traffic.ran_async.shapes.totals()[shape_index(9000, 30)] == (1, 9000, 30)
    sliced = traffic.sliced(2, 60)
    assert sliced.realtime.shapes.is_empty()
    assert not sliced.ran_async.shapes.is_empty()
