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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenyard.meter.shapes import SHAPE_COUNT

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
        raise NotImplementedError

    def describe(self) -> str:
        """Where the cells came from, for the advice: ``per shape: 6 measured, 14 catalog × cap``."""
        raise NotImplementedError

    def to_json(self) -> list[dict[str, Any]]:
        """The table for the advice API: per shape its label, requests/s and source."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ShapeMeans:
    """The traffic's mean prompt and completion tokens per shape (None where it had no request of that shape:
    the shape's ``representative`` lengths stand in)."""

    prompt: tuple[float | None, ...]
    completion: tuple[float | None, ...]

    def lengths(self, index: int) -> tuple[float, float]:
        """(prompt, completion) tokens standing for shape ``index``."""
        raise NotImplementedError


def catalog_cell(
    input_tokens_per_s: float, output_tokens_per_s: float, cap: float, prompt: float, completion: float
) -> float:
    """Requests/s of one shape from the catalog's two-figure model at the utilization cap: a request of
    ``prompt`` and ``completion`` tokens takes ``prompt / input + completion / output`` replica-seconds."""
    raise NotImplementedError


def build_table(layers: Sequence[tuple[str, Mapping[int, float]]]) -> ShapeTable | None:
    """The table from its sources, best first: each layer is (source, shape index → requests/s); a cell takes
    the first layer with a figure (> 0) for it. Cells no layer fills take the nearest filled cell (fewest
    bucket steps; on a tie the larger shape, the lower capacity), marked ``NEAREST``. None when no layer has
    any figure."""
    raise NotImplementedError


def measured_cells(per_shape_output_tokens_per_s: Mapping[int, float], means: ShapeMeans) -> dict[int, float]:
    """Requests/s per shape from the envelope's per-shape capacity (output tokens/s per replica at the SLA,
    prompts' prefill included): divided by the shape's mean completion length."""
    raise NotImplementedError
