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
from collections import Counter
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
        counts = Counter(self.sources)
        return "per shape: " + ", ".join(f"{counts[s]} {s}" for s in SOURCES if counts[s])

    @property
    def measured_or_imported(self) -> bool:
        """Whether any cell is more than the catalog's guess."""
        return any(s in (MEASURED, IMPORTED, MEASURED_ALL) for s in self.sources)

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
        prompt, completion = self.prompt[index], self.completion[index]
        if prompt is None or completion is None:
            return representative(SHAPES[index])
        return prompt, completion


def catalog_cell(
    input_tokens_per_s: float, output_tokens_per_s: float, cap: float, prompt: float, completion: float
) -> float:
    """Requests/s of one shape from the catalog's two-figure model at the utilization cap: a request of
    ``prompt`` and ``completion`` tokens takes ``prompt / input + completion / output`` replica-seconds."""
    seconds = prompt / input_tokens_per_s + max(completion, 1.0) / output_tokens_per_s
    return cap / seconds


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
    rates: list[float | None] = [None] * SHAPE_COUNT
    sources = [NEAREST] * SHAPE_COUNT
    for source, cells in layers:
        for k, rate in cells.items():
            if 0 <= k < SHAPE_COUNT and rates[k] is None and rate > 0 and math.isfinite(rate):
                rates[k], sources[k] = rate, source
    filled = [k for k, rate in enumerate(rates) if rate is not None]
    if not filled:
        return None
    out: list[float] = []
    for k, own in enumerate(rates):
        nearest = (
            own if own is not None else rates[min(filled, key=lambda j: (_steps(SHAPES[k], SHAPES[j]), -j))]
        )
        assert nearest is not None
        out.append(nearest)
    return ShapeTable(tuple(out), tuple(sources))


def _steps(a: tuple[int, int], b: tuple[int, int]) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def measured_cells(per_shape_output_tokens_per_s: Mapping[int, float], means: ShapeMeans) -> dict[int, float]:
    """Requests/s per shape from the envelope's per-shape capacity (output tokens/s per replica at the SLA,
    prompts' prefill included): divided by the shape's mean completion length."""
    return {
        k: tokens_per_s / max(1.0, means.lengths(k)[1])
        for k, tokens_per_s in per_shape_output_tokens_per_s.items()
    }
