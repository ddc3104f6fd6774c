"""Shape tables: each cell from the best source that has it, the nearest filled cell where none does, and
the catalog's two-figure model at the cap worked by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenyard.advisor.shapes import (
    CATALOG,
    IMPORTED,
    MEASURED,
    MEASURED_ALL,
    NEAREST,
    ShapeMeans,
    ShapeTable,
    build_table,
    catalog_cell,
    measured_cells,
)
from tokenyard.meter.shapes import SHAPE_COUNT, representative, shape_index

NONE: tuple[float | None, ...] = (None,) * SHAPE_COUNT


def test_a_catalog_cell_is_the_cap_over_the_replica_seconds_one_request_takes() -> None:
    # 1000 prompt tokens at 10 000 tok/s (0.1 s) + 200 completion tokens at 1000 tok/s (0.2 s) = 0.3 s;
    # at a 0.6 cap one replica serves 0.6 / 0.3 = 2 requests/s.
    assert catalog_cell(10_000, 1_000, 0.6, 1_000, 200) == pytest.approx(2.0)
    assert catalog_cell(10_000, 1_000, 0.6, 0, 0) == 0.0


def test_a_table_takes_each_cell_from_the_first_layer_that_has_it() -> None:
    table = build_table(
        [
            (MEASURED, {0: 5.0, 1: 0.0}),  # 0 is no figure: the next layer fills shape 1
            (IMPORTED, {0: 9.0, 1: 4.0}),
            (CATALOG, dict.fromkeys(range(SHAPE_COUNT), 1.0)),
        ]
    )
    assert table is not None
    assert table.requests_per_s[:3] == (5.0, 4.0, 1.0)
    assert table.sources[:3] == (MEASURED, IMPORTED, CATALOG)
    assert table.describe() == f"per shape: 1 measured, 1 imported, {SHAPE_COUNT - 2} catalog × cap"


def test_cells_no_layer_has_take_the_nearest_filled_one_in_bucket_steps() -> None:
    small = shape_index(100, 50)  # (0, 0)
    large = shape_index(3000, 2000)  # (3, 3)
    table = build_table([(IMPORTED, {small: 10.0, large: 0.5})])
    assert table is not None
    assert table.sources[small] == IMPORTED
    assert table.sources[large] == IMPORTED
    assert table.requests_per_s[shape_index(200, 50)] == 10.0  # (1, 0): one step from small
    assert table.sources[shape_index(200, 50)] == NEAREST
    assert table.requests_per_s[shape_index(10_000, 2000)] == 0.5  # (4, 3): one step from large
    # (1, 2) and (2, 1) are 3 steps from (0, 0) and 3 from (3, 3): on a tie the larger shape, its lower rate
    assert table.requests_per_s[shape_index(200, 500)] == 0.5
    assert table.requests_per_s[shape_index(1000, 100)] == 0.5


def test_no_figure_in_any_layer_is_no_table() -> None:
    assert build_table([]) is None
    assert build_table([(MEASURED, {}), (CATALOG, {3: 0.0, 99: 4.0})]) is None


def test_weights_are_replica_minutes_per_request() -> None:
    table = ShapeTable((2.0,) * SHAPE_COUNT, (MEASURED_ALL,) * SHAPE_COUNT)
    assert table.weights() == pytest.approx([1 / 120] * SHAPE_COUNT)
    assert table.describe() == f"per shape: {SHAPE_COUNT} measured (all shapes)"
    first = table.to_json()[0]
    assert first == {"shape": "in0-127/out0-63", "requests_per_s": 2.0, "source": MEASURED_ALL}
    assert len(table.to_json()) == SHAPE_COUNT


def test_a_table_must_have_every_cell() -> None:
    with pytest.raises(ValueError, match="cells"):
        ShapeTable((1.0,), (MEASURED,))


def test_means_stand_in_with_the_representative_lengths_where_no_request_was_seen() -> None:
    prompt = list(NONE)
    completion = list(NONE)
    prompt[5], completion[5] = 300.0, 100.0
    means = ShapeMeans(tuple(prompt), tuple(completion))
    assert means.lengths(5) == (300.0, 100.0)
    assert means.lengths(0) == representative((0, 0)) == (64.0, 32.0)


def test_measured_cells_divide_output_tokens_by_the_mean_completion() -> None:
    completion = list(NONE)
    completion[5] = 100.0
    means = ShapeMeans(NONE, tuple(completion))
    # shape 5 has traffic: 600 tok/s over 100 tokens a request; shape 0 falls back to its middle, 32 tokens
    assert measured_cells({5: 600.0, 0: 64.0, 7: 0.0, 99: 1.0}, means) == {
        5: pytest.approx(6.0),
        0: pytest.approx(2.0),
    }


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(st.integers(0, SHAPE_COUNT - 1), st.floats(0.01, 1e4), min_size=1),
    st.dictionaries(st.integers(0, SHAPE_COUNT - 1), st.floats(0.01, 1e4)),
)
def test_every_cell_is_filled_with_a_figure_some_layer_gave(
    first: dict[int, float], second: dict[int, float]
) -> None:
    table = build_table([(MEASURED, first), (IMPORTED, second)])
    assert table is not None
    given_rates = set(first.values()) | set(second.values())
    assert all(rate in given_rates for rate in table.requests_per_s)
    for index, rate in first.items():
        assert (table.requests_per_s[index], table.sources[index]) == (rate, MEASURED)
    for index in set(range(SHAPE_COUNT)) - set(first) - set(second):
        assert table.sources[index] == NEAREST
