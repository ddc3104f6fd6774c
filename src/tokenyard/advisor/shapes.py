"""Capacity at the SLO by request shape (pure): what one replica of a GPU type sustains, per shape bucket.

A replica's capacity is a *table*, not a pair of figures: per shape (``meter/shapes.py``: prompt × completion
buckets) the requests per second one replica serves while meeting the SLO. Public measurements (silybench:
Qwen3-8B on one H100) put capacity at the SLO between 100 % and 68 % of peak throughput depending on the
shape, which no two-figure model with one utilization cap fits.

Each cell says where it came from, in order of preference:

1. ``measured``: the backend's measured envelope for that shape (``capacity/envelope.py``), converted from
   output tokens/s at the SLA to requests/s with the shape's mean completion length in the window's traffic;
2. ``imported``: a profile the user imported (``profiles.py``: vLLM ``bench serve --goodput``, GuideLLM,
   silybench);
3. ``measured (all shapes)``: the envelope's capacity over every shape, where no shape of its own has enough;
4. ``catalog × cap``: the catalog's two-figure model at the shape's mean lengths times the utilization cap —
   the last resort, marked as such.

A minute's *load* on a replica is then ``Σ_shape requests / (60 × requests_per_s)``: each minute costed by
its own shape mix. The SLO is in every cell (a catalog cell has the cap in it), so no cap is applied on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenyard.meter.shapes import SHAPE_COUNT, SHAPES, representative, shape_label

MEASURED = "measured"
IMPORTED = "imported"
MEASURED_ALL = "measured (all shapes)"
CATALOG = "catalog × cap"
NEAREST = "nearest shape"  # no source had it: the nearest filled cell's figure
SOURCES = (MEASURED, IMPORTED, MEASURED_ALL, CATALOG, NEAREST)  # best first


@dataclass(frozen=True, slots=True)
class ShapeTable:
    """Requests per second one replica sustains within the SLO, per shape index (complete: every cell > 0)."""

    requests_per_s: tuple[float, ...]  # len SHAPE_COUNT
    sources: tuple[str, ...]  # len SHAPE_COUNT, each one of SOURCES

    def __post_init__(self) -> None:
        if len(self.requests_per_s) != SHAPE_COUNT or len(self.sources) != SHAPE_COUNT:
            raise ValueError(f"a shape table has {SHAPE_COUNT} cells")

    def weights(self) -> list[float]:
        """Per shape: replica-minutes one request takes (``1 / (60 × requests_per_s)``): a minute's load is
        its requests per shape times these."""
        return [1 / (60 * rate) for rate in self.requests_per_s]

    def describe(self) -> str:
        """Where the cells came from, for the advice: ``per shape: 6 measured, 14 catalog × cap``."""
        counts = [f"{self.sources.count(source)} {source}" for source in SOURCES if source in self.sources]
        return "per shape: " + ", ".join(counts)

    def to_json(self) -> list[dict[str, Any]]:
        """The table for the advice API: per shape its label, requests/s and source."""
        return [
            {"shape": shape_label(shape), "requests_per_s": round(rate, 4), "source": source}
            for shape, rate, source in zip(SHAPES, self.requests_per_s, self.sources, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class ShapeMeans:
    """The traffic's mean prompt and completion tokens per shape (None where it had no request of that shape:
    the shape's ``representative`` lengths stand in)."""

    prompt: tuple[float | None, ...]
    completion: tuple[float | None, ...]

    @classmethod
    def of(cls, totals: Sequence[tuple[float, float, float]]) -> ShapeMeans:
        """From per-shape (requests, prompt, completion) totals (``ShapeCounts.totals``)."""
        return cls(
            tuple(p / n if n > 0 else None for n, p, _ in totals),
            tuple(c / n if n > 0 else None for n, _, c in totals),
        )

    def lengths(self, index: int) -> tuple[float, float]:
        """(prompt, completion) tokens standing for shape ``index``."""
        middle_prompt, middle_completion = representative(SHAPES[index])
        prompt, completion = self.prompt[index], self.completion[index]
        return (
            middle_prompt if prompt is None else prompt,
            middle_completion if completion is None else completion,
        )


def catalog_cell(
    input_tokens_per_s: float, output_tokens_per_s: float, cap: float, prompt: float, completion: float
) -> float:
    """Requests/s of one shape from the catalog's two-figure model at the utilization cap: a request of
    ``prompt`` and ``completion`` tokens takes ``prompt / input + completion / output`` replica-seconds."""
    seconds = prompt / input_tokens_per_s + completion / output_tokens_per_s
    return cap / seconds if seconds > 0 else 0.0


def catalog_cells(
    input_tokens_per_s: float, output_tokens_per_s: float, cap: float, means: ShapeMeans
) -> dict[int, float]:
    """Every shape from the catalog's two-figure model at the traffic's mean lengths (the last resort)."""
    return {
        k: catalog_cell(input_tokens_per_s, output_tokens_per_s, cap, *means.lengths(k))
        for k in range(SHAPE_COUNT)
    }


def build_table(layers: Sequence[tuple[str, Mapping[int, float]]]) -> ShapeTable | None:
    """The table from its sources, best first: each layer is (source, shape index → requests/s); a cell takes
    the first layer with a figure (> 0) for it. Cells no layer fills take the nearest filled cell (fewest
    bucket steps; on a tie the larger shape, the lower capacity), marked ``NEAREST``. None when no layer has
    any figure."""
    rates: list[float] = [0.0] * SHAPE_COUNT
    sources: list[str] = [NEAREST] * SHAPE_COUNT
    for source, figures in layers:
        for index, rate in figures.items():
            if 0 <= index < SHAPE_COUNT and rates[index] <= 0 < rate and rate < math.inf:
                rates[index], sources[index] = rate, source
    filled = [index for index in range(SHAPE_COUNT) if rates[index] > 0]
    if not filled:
        return None
    for index in range(SHAPE_COUNT):
        if rates[index] <= 0:
            rates[index] = rates[_nearest(index, filled, rates)]
    return ShapeTable(tuple(rates), tuple(sources))


def _nearest(index: int, filled: list[int], rates: list[float]) -> int:
    """The filled cell nearest shape ``index`` in bucket steps; on a tie the larger shape (more tokens per
    request), then the lower capacity: a guess should err towards more GPUs, not fewer."""
    (i, o) = SHAPES[index]

    def key(other: int) -> tuple[int, int, float]:
        (oi, oo) = SHAPES[other]
        return abs(oi - i) + abs(oo - o), -(oi + oo), rates[other]

    return min(filled, key=key)


def measured_cells(per_shape_output_tokens_per_s: Mapping[int, float], means: ShapeMeans) -> dict[int, float]:
    """Requests/s per shape from the envelope's per-shape capacity (output tokens/s per replica at the SLA,
    prompts' prefill included): divided by the shape's mean completion length."""
    out: dict[int, float] = {}
    for index, tokens_per_s in per_shape_output_tokens_per_s.items():
        if not 0 <= index < SHAPE_COUNT:
            continue
        completion = means.lengths(index)[1]
        if tokens_per_s > 0 and completion > 0:
            out[index] = tokens_per_s / completion
    return out
