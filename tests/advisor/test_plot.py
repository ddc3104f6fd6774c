"""The advisor's charts: well-formed, scalable SVG that people can read; round numbers, names kept safe."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest

from tokenyard.advisor.plot import candidate_costs_svg, cost_curve_svg, traffic_heatmap_svg

NS = "{http://www.w3.org/2000/svg}"
NASTY = "a&b <c> \"d\" 'e'"
WEEK = [float(day * 1_000 + hour * 10_000) for day in range(7) for hour in range(24)]
CURVE = [(0, 5200.0), (1, 3400.0), (2, 2950.0), (3, 3300.0), (4, 4100.0)]
CANDIDATES = [("all serverless", 5200.0), ("2 × H100", 2950.0), ("batch offload", 3600.0)]


def parse(svg: str) -> ET.Element:
    """The document, parsed: every chart must be well-formed XML with an <svg> root."""
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def having_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if name in (e.get("class") or "").split()]


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def tooltip(element: ET.Element) -> str:
    title = element.find(f"{NS}title")
    assert title is not None, ET.tostring(element)
    return text_of(title)


def texts(root: ET.Element) -> list[str]:
    return [text_of(e) for e in root.iter(f"{NS}text")]


def labels(root: ET.Element, name: str) -> list[str]:
    return [text_of(e) for e in having_class(root, name)]


def luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def amount(label: str) -> Decimal:
    """The number a tick label stands for: "$1,250" → 1250, "2.5k" → 2500, "$4M" → 4000000."""
    match = re.fullmatch(r"(-?)\$?(\d{1,3}(?:,\d{3})*(?:\.\d+)?)([kMBT]?)", label)
    assert match, f"not a plain number: {label!r}"
    scale = Decimal(10) ** {"": 0, "k": 3, "M": 6, "B": 9, "T": 12}[match[3]]
    return Decimal(match[2].replace(",", "")) * scale * (-1 if match[1] else 1)


def assert_nice_ticks(ticks: list[str], covering: float) -> None:
    values = [amount(t) for t in ticks]
    steps = {b - a for a, b in pairwise(values)}
    assert len(steps) == 1, f"unevenly spaced: {ticks}"
    step = steps.pop()
    assert step.scaleb(-step.adjusted()) in {1, 2, Decimal("2.5"), 5}, (
        f"step {step} is not 1, 2, 2.5 or 5 × 10^k"
    )
    assert values[0] <= 0 < values[-1], f"the axis should start at or below zero: {ticks}"
    assert values[-1] >= Decimal(str(covering)), f"the axis should reach {covering}: {ticks}"


CHARTS: dict[str, Callable[[str], str]] = {
    "heatmap": lambda title: traffic_heatmap_svg(title, WEEK),
    "cost curve": lambda title: cost_curve_svg(
        title, CURVE, optimum_n=2, breakeven_n=0.6, references={"x": 1.0}
    ),
    "candidates": lambda title: candidate_costs_svg(title, CANDIDATES, recommended="2 × H100"),
}


@pytest.mark.parametrize("chart", CHARTS.values(), ids=CHARTS.keys())
def test_every_chart_is_a_scalable_titled_picture_on_white(chart: Callable[[str], str]) -> None:
    root = parse(chart("Cost, last 30 days"))
    assert re.fullmatch(r"0 0 \d+ \d+", root.get("viewBox", ""))
    assert "sans-serif" in root.get("font-family", "")
    first = root[0]
    assert first.tag == f"{NS}title"
    assert first.text == "Cost, last 30 days"
    background = root[1]
    assert (background.tag, background.get("width"), background.get("fill")) == (
        f"{NS}rect",
        "100%",
        "#ffffff",
    )
    assert labels(root, "title") == ["Cost, last 30 days"]


@pytest.mark.parametrize("chart", CHARTS.values(), ids=CHARTS.keys())
def test_titles_are_escaped_and_charts_define_no_ids_that_could_clash_when_inlined(
    chart: Callable[[str], str],
) -> None:
    svg = chart(NASTY)
    assert "a&amp;b &lt;c&gt;" in svg
    assert NASTY not in svg
    root = parse(svg)
    assert labels(root, "title") == [NASTY]
    assert not [e for e in root.iter() if "id" in e.attrib]


@pytest.mark.parametrize("chart", CHARTS.values(), ids=CHARTS.keys())
def test_characters_xml_forbids_are_replaced_so_the_document_still_parses(
    chart: Callable[[str], str],
) -> None:
    root = parse(chart("model\x00name\x1b"))
    assert labels(root, "title") == ["model\ufffdname\ufffd"]


# -- traffic by hour of week --------------------------------------------------------------------------------


def test_the_heatmap_has_one_cell_per_hour_of_the_week_each_with_a_tooltip() -> None:
    week = [0.0] * 168
    week[1 * 24 + 14] = 1_200_000  # Tuesday 14:00 UTC
    cells = having_class(parse(traffic_heatmap_svg("t", week)), "cell")
    assert len(cells) == 168
    assert all(c.tag == f"{NS}rect" for c in cells)
    tips = [tooltip(c) for c in cells]
    assert tips[0] == "Mon 00:00 UTC: 0 tokens"
    assert tips[24 + 14] == "Tue 14:00 UTC: 1.2M tokens"
    assert tips[167] == "Sun 23:00 UTC: 0 tokens"


def test_the_heatmap_lays_out_days_as_rows_and_hours_as_columns() -> None:
    root = parse(traffic_heatmap_svg("t", WEEK))
    cells = having_class(root, "cell")
    xs = sorted({float(c.get("x", "")) for c in cells})
    ys = sorted({float(c.get("y", "")) for c in cells})
    assert (len(xs), len(ys)) == (24, 7)
    assert float(cells[1].get("x", "")) > float(cells[0].get("x", ""))  # next hour: to the right
    assert float(cells[24].get("y", "")) > float(cells[0].get("y", ""))  # next day: below
    assert {"Mon", "Sun", "00", "23", "hour of day (UTC)"} <= set(texts(root))


def test_more_traffic_is_darker_and_no_traffic_is_lightest() -> None:
    cells = having_class(parse(traffic_heatmap_svg("t", WEEK)), "cell")
    by_value = sorted(zip(WEEK, (luminance(c.get("fill", "")) for c in cells), strict=True))
    shades = [shade for _, shade in by_value]
    assert shades == sorted(shades, reverse=True)
    assert shades[0] > shades[-1]


def test_the_heatmap_legend_gives_the_scale_and_the_busiest_and_quietest_hours() -> None:
    root = parse(traffic_heatmap_svg("t", WEEK))
    assert labels(root, "legend-min") == ["tokens per hour:  0"]
    assert labels(root, "legend-max") == ["236k"]
    assert any(
        "busiest: Sun 23:00 UTC, 236k tokens" in t and "quietest: Mon 00:00 UTC, 0 tokens" in t
        for t in texts(root)
    )


def test_a_week_without_traffic_is_drawn_all_light_and_says_so() -> None:
    root = parse(traffic_heatmap_svg("t", [0] * 168))
    assert len({c.get("fill") for c in having_class(root, "cell")}) == 1
    assert "no traffic in this week" in texts(root)


@pytest.mark.parametrize(
    "values", [[], [1.0] * 167, [1.0] * 169, [1.0] * 24], ids=lambda values: f"{len(values)} values"
)
def test_the_heatmap_needs_exactly_168_hours(values: list[float]) -> None:
    with pytest.raises(ValueError, match="168"):
        traffic_heatmap_svg("t", values)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_the_heatmap_refuses_counts_that_are_not_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match=r"finite|negative"):
        traffic_heatmap_svg("t", [*WEEK[:-1], bad])


# -- cost against always-on replicas -------------------------------------------------------------------------


def test_the_cost_curve_is_a_line_with_a_marker_per_n_and_labelled_axes() -> None:
    root = parse(cost_curve_svg("t", CURVE))
    assert len(having_class(root, "curve")) == 1
    markers = [tooltip(c) for c in root.iter(f"{NS}circle")]
    assert markers == [
        "N = 0: $5,200/mo",
        "N = 1: $3,400/mo",
        "N = 2: $2,950/mo",
        "N = 3: $3,300/mo",
        "N = 4: $4,100/mo",
    ]
    assert {"always-on dedicated replicas (N)", "USD / month", "cost per month"} <= set(texts(root))
    assert labels(root, "x-tick") == ["0", "1", "2", "3", "4"]


def test_the_optimum_and_breakeven_are_marked_only_when_given() -> None:
    plain = parse(cost_curve_svg("t", CURVE))
    assert not having_class(plain, "optimum")
    assert not having_class(plain, "breakeven")

    marked = parse(cost_curve_svg("t", CURVE, optimum_n=2, breakeven_n=0.6))
    dot = next(e for e in having_class(marked, "optimum") if e.tag == f"{NS}circle")
    assert (dot.get("cx"), dot.get("cy")) == next(
        (c.get("cx"), c.get("cy"))
        for c in marked.iter(f"{NS}circle")
        if c.find(f"{NS}title") is not None and tooltip(c).startswith("N = 2:")
    )
    assert "cheapest: N = 2, $2,950/mo" in labels(marked, "optimum")
    line = next(e for e in having_class(marked, "breakeven") if e.tag == f"{NS}line")
    assert line.get("x1") == line.get("x2")
    assert line.get("stroke-dasharray")
    assert "breakeven N ≈ 0.6" in labels(marked, "breakeven")


def test_references_are_dashed_horizontal_lines_named_in_the_legend() -> None:
    root = parse(cost_curve_svg("t", CURVE, references={NASTY: 6100.0, "current": 4400.0}))
    lines = having_class(root, "reference")
    assert [tooltip(line) for line in lines] == [f"{NASTY}: $6,100/mo", "current: $4,400/mo"]
    assert all(line.get("y1") == line.get("y2") and line.get("stroke-dasharray") for line in lines)
    assert len({line.get("stroke") for line in lines}) == 2
    assert {f"{NASTY} ($6,100/mo)", "current ($4,400/mo)"} <= set(texts(root))
    assert_nice_ticks(labels(root, "y-tick"), covering=6100.0)  # the axis makes room for the references


def test_a_single_point_and_an_all_zero_curve_still_get_axes() -> None:
    root = parse(cost_curve_svg("t", [(0, 0.0)], optimum_n=0))
    assert labels(root, "y-tick")[0] == "$0"
    assert len(labels(root, "y-tick")) >= 2
    assert labels(root, "x-tick") == ["0", "1"]
    assert "cheapest: N = 0, $0/mo" in labels(root, "optimum")


@pytest.mark.parametrize(
    ("points", "kwargs", "complaint"),
    [
        ([], {}, "at least one"),
        ([(0, 1.0), (1, math.nan)], {}, "finite"),
        ([(0, math.inf)], {}, "finite"),
        (CURVE, {"references": {"serverless": math.nan}}, "finite"),
        (CURVE, {"breakeven_n": math.inf}, "finite"),
        (CURVE, {"optimum_n": 7}, "not one of the points"),
        ([(1, 1.0), (0, 2.0)], {}, "ascending"),
        ([(0, 1.0), (0, 2.0)], {}, "ascending"),
    ],
    ids=[
        "no points",
        "nan cost",
        "inf cost",
        "nan reference",
        "inf breakeven",
        "unknown optimum",
        "descending",
        "repeated",
    ],
)
def test_the_cost_curve_refuses_what_it_cannot_draw_honestly(
    points: list[tuple[int, float]], kwargs: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        cost_curve_svg("t", points, **kwargs)


# -- candidate architectures ---------------------------------------------------------------------------------


def test_candidates_are_bars_in_the_order_given_each_labelled_with_its_monthly_cost() -> None:
    root = parse(candidate_costs_svg("t", CANDIDATES))
    bars = having_class(root, "bar")
    assert [tooltip(b) for b in bars] == [
        "all serverless: $5,200/mo",
        "2 × H100: $2,950/mo",
        "batch offload: $3,600/mo",
    ]
    assert [float(b.get("y", "")) for b in bars] == sorted(float(b.get("y", "")) for b in bars)
    assert labels(root, "value") == ["$5,200/mo", "$2,950/mo", "$3,600/mo"]
    widths = [float(b.get("width", "")) for b in bars]
    assert widths[0] > widths[2] > widths[1]  # lengths in proportion to cost
    assert "USD / month" in texts(root)


def test_the_recommended_bar_stands_out_and_the_current_one_is_labelled() -> None:
    root = parse(candidate_costs_svg("t", CANDIDATES, recommended="2 × H100", current="all serverless"))
    fills = [b.get("fill") for b in having_class(root, "bar")]
    assert fills[1] != fills[0]
    assert fills[0] == fills[2]
    assert labels(root, "value") == ["$5,200/mo · current", "$2,950/mo · recommended", "$3,600/mo"]


def test_one_candidate_can_be_both_current_and_recommended() -> None:
    root = parse(candidate_costs_svg("t", CANDIDATES, recommended="2 × H100", current="2 × H100"))
    assert labels(root, "value")[1] == "$2,950/mo · current, recommended"


def test_candidate_names_are_escaped() -> None:
    svg = candidate_costs_svg("t", [(NASTY, 12.0), ("plain", 3.0)], recommended=NASTY, current=NASTY)
    assert NASTY not in svg
    root = parse(svg)
    assert NASTY in texts(root)
    assert tooltip(having_class(root, "bar")[0]) == f"{NASTY}: $12/mo"


def test_very_long_candidate_names_are_shortened_with_the_full_name_in_the_tooltip() -> None:
    name = "dedicated " * 40
    root = parse(candidate_costs_svg("t", [(name, 1.0)]))
    assert any(t.endswith("…") and len(t) < len(name) for t in texts(root))
    assert tooltip(having_class(root, "bar")[0]) == f"{name}: $1/mo"


@pytest.mark.parametrize(
    ("cost", "label"),
    [
        (0.0, "$0/mo"),
        (0.004, "$0.004/mo"),
        (0.5, "$0.50/mo"),
        (12.5, "$12.50/mo"),
        (1234.4, "$1,234/mo"),
        (98_765.0, "$98,765/mo"),
        (2_500_000.0, "$2.5M/mo"),
        (7.3e12, "$7.3T/mo"),
    ],
)
def test_money_reads_as_money_from_fractions_of_a_cent_to_trillions(cost: float, label: str) -> None:
    root = parse(candidate_costs_svg("t", [("only", cost)]))
    assert labels(root, "value") == [label]


@pytest.mark.parametrize("top", [0.0, 0.004, 0.9, 7.0, 1234.0, 98_765.0, 3.2e6, 4.5e9])
def test_tick_labels_are_round_evenly_spaced_money(top: float) -> None:
    bars = parse(candidate_costs_svg("t", [("a", top), ("b", top / 3)]))
    assert_nice_ticks(labels(bars, "x-tick"), covering=top)
    assert all(t.startswith("$") for t in labels(bars, "x-tick"))
    curve = parse(cost_curve_svg("t", [(0, top), (1, top / 2)]))
    assert_nice_ticks(labels(curve, "y-tick"), covering=top)


def test_tick_labels_use_thousands_separators_then_suffixes() -> None:
    assert "$1,000" in labels(parse(candidate_costs_svg("t", [("a", 1234.0)])), "x-tick")
    assert "$100k" in labels(parse(candidate_costs_svg("t", [("a", 98_765.0)])), "x-tick")
    assert "$2M" in labels(parse(candidate_costs_svg("t", [("a", 3.2e6)])), "x-tick")


@pytest.mark.parametrize(
    ("costs", "kwargs", "complaint"),
    [
        ([], {}, "at least one"),
        ([("a", math.nan)], {}, "finite"),
        ([("a", 1.0), ("b", -math.inf)], {}, "finite"),
        ([("a", 1.0)], {"recommended": "b"}, "not one of the candidates"),
        ([("a", 1.0)], {"current": "b"}, "not one of the candidates"),
    ],
    ids=["empty", "nan", "-inf", "unknown recommended", "unknown current"],
)
def test_the_candidate_chart_refuses_what_it_cannot_draw_honestly(
    costs: list[tuple[str, float]], kwargs: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        candidate_costs_svg("t", costs, **kwargs)


EXTREMES: dict[str, Callable[[], str]] = {
    "silent week": lambda: traffic_heatmap_svg("t", [0.0] * 168),
    "one free point": lambda: cost_curve_svg("t", [(0, 0.0)], optimum_n=0, breakeven_n=0.0),
    "free candidates": lambda: candidate_costs_svg("t", [("a", 0.0), ("b", 0.0)], recommended="a"),
    "tiny costs": lambda: cost_curve_svg("t", [(0, 0.004), (1, 0.0001)], references={"r": 1e-9}),
    "huge costs": lambda: candidate_costs_svg("t", [("a", 1e15), ("b", 1e-3)]),
}


@pytest.mark.parametrize("chart", EXTREMES.values(), ids=EXTREMES.keys())
def test_extreme_and_flat_data_still_make_finite_well_formed_charts(chart: Callable[[], str]) -> None:
    svg = chart()
    parse(svg)
    assert not re.search(r"\b(nan|inf)\b", svg, re.IGNORECASE)
