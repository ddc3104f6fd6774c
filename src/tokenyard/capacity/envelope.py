"""The measured envelope (pure): what a backend served at each concurrency, per request shape, and the
capacity per engine replica that still meets its SLA.

Every answered request (a ``LatencySample``) lands in one *cell*: (request shape, concurrency level). A
cell keeps sums only — samples, samples meeting the SLA, TTFT, per-stream tokens/s, concurrency — so the
cells of any number of proxy replicas add up exactly (``merge``), and decay is halving every sum (``decay``:
the means stay, old data weighs less).

- **Shape**: prompt tokens × completion tokens, in log-spaced buckets (×4 each step, the meter's
  ``meter/shapes.py``): capacity at an SLO differs by shape far more than a two-figure model allows.
- **Concurrency level**: requests in flight *per engine replica* while the request ran — the sample's
  concurrency (the larger of the counts at its admission and at its end) ÷ the backend's replicas —
  rounded up; exact up to 64, then bands of 8 up to 256 and of 32 beyond (``level_of``; a band is named by
  its top).
- **The curve**: per level, over every shape, the mean per-stream tokens/s, the aggregate tokens/s (the
  level's mean concurrency × that mean rate: the seed's per-stream vs aggregate trade-off, measured), the
  mean TTFT of its streamed answers, and whether the level meets the SLA: at least the SLA's percentile
  of its samples met the targets (a whole answer, which has no first-token time, by its rate alone).
- **The knee**: the lowest level known to breach the SLA. Two kinds of evidence: a level with
  ``MIN_KNEE_SAMPLES`` or more samples that breaches; or the SLA limiter's *learned limit* per engine
  replica (``capacity.limiter``), when it has moved below the ceiling: the limiter lowered it because the
  level above it breached, and holds the load there, so the curve itself rarely shows a breaching level
  for long (the limiter prevents it, and decay fades the start-up's). The knee is the lower of the two.
- **Capacity per replica**: the aggregate tokens/s at the largest measured level below the knee (at most
  the learned limit) that meets the SLA. It counts as *enough data* when that level has at least
  ``MIN_LEVEL_SAMPLES`` samples, at least ``MIN_LEVELS`` levels do (it and two more), and the knee is known
  or the curve reached the ceiling (``max_concurrency`` per replica: the backend is never run harder).
  With the learned limit as the knee, that level alone with ``MIN_LEVELS × MIN_LEVEL_SAMPLES`` samples is
  enough too: a steady load the limiter holds at its limit fills that one level and hardly any other.
  Short of that, the figure is a lower bound and the advisor keeps its catalog (or calibrated) capacity.

The document every replica merges into (``capacity:envelope``, JSON); ``limits`` holds each backend's
learned limit per engine replica as the last replica to merge knew it (only limits that moved)::

    {"format": 2, "updated_at": unix_s,
     "backends": {name: {shape_label: {level: [n, met, ttft_n, ttft_sum_s, rate_n, rate_sum,
                                                concurrency_sum]}}},
     "limits": {name: {"per_replica": int, "at": unix_s}}}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import Sla

# The shape buckets are the meter's (one definition); re-exported for the envelope's readers.
from tokenyard.meter.shapes import OUTPUT_LABELS
from tokenyard.meter.shapes import Shape as Shape
from tokenyard.meter.shapes import shape_from_label as shape_from_label
from tokenyard.meter.shapes import shape_label as shape_label
from tokenyard.meter.shapes import shape_of as shape_of

FORMAT = 2  # 1: cells had no TTFT count (never released)
DOCUMENT = "capacity:envelope"  # the store document every replica merges into (and its lock's name)
EXACT_LEVELS = 64  # concurrency levels kept one by one up to here
MIN_LEVEL_SAMPLES = 50  # a level with this many samples is measured
MIN_LEVELS = 3  # measured levels a curve needs before its capacity counts
MIN_KNEE_SAMPLES = 20  # a level breaching the SLA with this many samples is the knee
KEEP_SAMPLES = 20_000.0  # per backend: past this, every sum is halved (old data fades)

# A cell's sums, by position (the document stores them as a list).
N, MET, TTFT_N, TTFT_SUM_S, RATE_N, RATE_SUM, CONCURRENCY_SUM = range(7)
_WIDTH = 7

Cells = dict[tuple[Shape, int], list[float]]  # (shape, level) → sums


def level_of(concurrency_per_replica: float) -> int:
    """The concurrency level a sample counts at: exact up to 64, then the top of its band (8 wide up to
    256, 32 wide beyond), at least 1."""
    c = max(1, math.ceil(concurrency_per_replica - 1e-9))
    if c <= EXACT_LEVELS:
        return c
    band = 8 if c <= 256 else 32
    return -(-c // band) * band


def meets(sample: LatencySample, sla: Sla | None) -> bool:
    """Whether one request met the SLA's targets (no SLA: every request does). A whole (non-streamed)
    answer is judged by its rate alone: its head arrives after the whole generation, so it has no time to
    first token (its rate, completion tokens over latency, includes the prefill)."""
    return _meets(sample.ttft_s if sample.streamed else None, sample.stream_tokens_per_s, sla)


def _meets(ttft_s: float | None, rate: float | None, sla: Sla | None) -> bool:
    if sla is None:
        return True
    if sla.ttft_p95_ms is not None and ttft_s is not None and ttft_s * 1000 > sla.ttft_p95_ms:
        return False
    # Too few tokens to have a rate: only its TTFT can breach.
    return sla.min_stream_tokens_per_s is None or rate is None or rate >= sla.min_stream_tokens_per_s


class Recorder:
    """One backend's new cells on this proxy replica since they were last taken (``take``); fed from the
    request path, so each ``observe`` is a few dict and float operations."""

    __slots__ = ("_cells", "sla")

    def __init__(self, sla: Sla | None) -> None:
        self.sla = sla
        self._cells: Cells = {}

    def observe(self, sample: LatencySample, replicas: int) -> None:
        """Count one answered request at its concurrency per engine replica (the sample's concurrency is
        the larger of the counts at its admission and at its end); ``replicas``: the backend's replicas
        when it was admitted."""
        per_replica = sample.concurrency / max(1, replicas)
        key = (shape_of(sample.prompt_tokens, sample.completion_tokens), level_of(per_replica))
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = [0.0] * _WIDTH
        rate = sample.stream_tokens_per_s
        if rate is not None and not rate < math.inf:  # a clock's rounding gave ~0 s: no rate to keep
            rate = None
        streamed = sample.streamed
        cell[N] += 1
        cell[MET] += _meets(sample.ttft_s if streamed else None, rate, self.sla)
        if streamed:  # a whole answer's head comes after its whole generation: no first-token time
            cell[TTFT_N] += 1
            cell[TTFT_SUM_S] += sample.ttft_s
        if rate is not None:
            cell[RATE_N] += 1
            cell[RATE_SUM] += rate
        cell[CONCURRENCY_SUM] += per_replica

    def take(self) -> Cells:
        """The cells counted since the last take (and start afresh)."""
        cells, self._cells = self._cells, {}
        return cells

    def peek(self) -> Cells:
        """The cells counted since the last take, left in place."""
        return self._cells

    def give_back(self, cells: Cells) -> None:
        """Cells that could not be stored: counted again with the next take."""
        add_cells(self._cells, cells)


def add_cells(into: Cells, cells: Mapping[tuple[Shape, int], list[float]]) -> None:
    """Add ``cells`` to ``into``, sum by sum (sums are additive, so merging is exact)."""
    for key, sums in cells.items():
        mine = into.get(key)
        if mine is None:
            into[key] = list(sums)
        else:
            for i in range(_WIDTH):
                mine[i] += sums[i]


def decay(cells: Cells, keep_samples: float = KEEP_SAMPLES) -> bool:
    """Halve every sum while the backend holds more than ``keep_samples`` samples (means are kept, new
    data weighs more); cells left with under one sample go. True if it decayed."""
    decayed = False
    while sum(sums[N] for sums in cells.values()) > keep_samples:
        decayed = True
        for key in list(cells):
            sums = cells[key] = [value / 2 for value in cells[key]]
            if sums[N] < 1:
                del cells[key]
    return decayed


def cells_from_json(tree: Any) -> Cells:
    """One backend's cells from the document (shapes or levels it does not know are skipped)."""
    cells: Cells = {}
    if not isinstance(tree, dict):
        return cells
    for label, levels in tree.items():
        shape = shape_from_label(label)
        if shape is None or not isinstance(levels, dict):
            continue
        for level, sums in levels.items():
            if _valid_sums(sums) and str(level).isdigit():
                cells[(shape, int(level))] = [float(v) for v in sums]
    return cells


def _valid_sums(sums: Any) -> bool:
    """A cell as stored: ``_WIDTH`` finite, non-negative numbers (anything else is skipped, not fatal: one
    replica's bad write must not stop every replica's merging)."""
    return (
        isinstance(sums, list)
        and len(sums) == _WIDTH
        and all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < math.inf for v in sums)
    )


def cells_to_json(cells: Cells) -> dict[str, dict[str, list[float]]]:
    """One backend's cells as the document keeps them."""
    tree: dict[str, dict[str, list[float]]] = {}
    for (shape, level), sums in sorted(cells.items()):
        tree.setdefault(shape_label(shape), {})[str(level)] = [round(v, 6) for v in sums]
    return tree


def merge_document(
    document: Mapping[str, Any] | None,
    deltas: Mapping[str, Cells],
    *,
    now_wall: float,
    keep_samples: float = KEEP_SAMPLES,
    limits: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The stored document with each backend's new cells added and old data decayed, and the learned
    limits per engine replica in ``limits`` recorded (dated ``now_wall``; other backends' are kept)."""
    ours = document is not None and document.get("format") == FORMAT
    stored = document.get("backends") if ours and document else None
    backends: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
    for name, cells in deltas.items():
        if not cells:
            continue
        merged = cells_from_json(backends.get(name))
        add_cells(merged, cells)
        decay(merged, keep_samples)
        backends[name] = cells_to_json(merged)
    kept = document.get("limits") if ours and document else None
    stored_limits: dict[str, Any] = dict(kept) if isinstance(kept, dict) else {}
    for name, limit in (limits or {}).items():
        stored_limits[name] = {"per_replica": int(limit), "at": round(now_wall, 3)}
    out: dict[str, Any] = {"format": FORMAT, "updated_at": round(now_wall, 3), "backends": backends}
    if stored_limits:
        out["limits"] = stored_limits
    return out


def stored_limit(document: Mapping[str, Any] | None, name: str) -> int | None:
    """A backend's learned limit per engine replica as the document records it (None: none recorded)."""
    if not document or document.get("format") != FORMAT:
        return None
    limits = document.get("limits")
    entry = limits.get(name) if isinstance(limits, dict) else None
    value = entry.get("per_replica") if isinstance(entry, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


@dataclass(frozen=True, slots=True)
class Point:
    """One concurrency level of a curve."""

    level: int  # requests in flight per replica (a band's top above 64)
    samples: float
    concurrency: float  # mean per replica in the level
    stream_tokens_per_s: float | None  # mean per-stream rate
    aggregate_tokens_per_s: float | None  # concurrency × per-stream rate
    ttft_ms: float | None  # mean, over the streamed answers (None: none streamed)
    met_share: float  # of samples meeting the SLA
    meets_sla: bool

    def to_json(self) -> dict[str, Any]:
        """The point for the API and the plot."""
        return {
            "concurrency": self.level,
            "samples": round(self.samples, 1),
            "stream_tokens_per_s": _round(self.stream_tokens_per_s),
            "aggregate_tokens_per_s": _round(self.aggregate_tokens_per_s),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "met_share": round(self.met_share, 4),
            "meets_sla": self.meets_sla,
        }


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one replica serves within the SLA, read off a curve."""

    concurrency: int  # the level it was read at
    aggregate_tokens_per_s: float
    stream_tokens_per_s: float
    samples: float  # in the whole curve
    enough: bool  # enough data to replace the catalog figure (see the module's docstring)
    why: str  # what is missing, or what it is based on

    def describe(self) -> str:
        """The advice's ``capacity_source``."""
        return (
            f"measured envelope ({self.samples:,.0f} samples, c={self.concurrency} per replica at "
            f"{self.stream_tokens_per_s:.0f} tok/s per stream)"
        )

    def to_json(self) -> dict[str, Any]:
        """The capacity for the API."""
        return {
            "concurrency": self.concurrency,
            "aggregate_tokens_per_s": round(self.aggregate_tokens_per_s, 2),
            "stream_tokens_per_s": round(self.stream_tokens_per_s, 2),
            "samples": round(self.samples, 1),
            "enough_data": self.enough,
            "why": self.why,
        }


def curve(cells: Iterable[tuple[tuple[Shape, int], list[float]]], percentile: float = 95.0) -> list[Point]:
    """Per concurrency level, over the shapes given: the curve, lowest level first. A level meets the SLA
    when at least ``percentile`` % of its samples met the targets."""
    levels: dict[int, list[float]] = {}
    for (_, level), sums in cells:
        add_cells_row(levels.setdefault(level, [0.0] * _WIDTH), sums)
    points = []
    for level in sorted(levels):
        s = levels[level]
        if s[N] <= 0:
            continue
        concurrency = s[CONCURRENCY_SUM] / s[N]
        rate = s[RATE_SUM] / s[RATE_N] if s[RATE_N] > 0 else None
        met_share = s[MET] / s[N]
        points.append(
            Point(
                level=level,
                samples=s[N],
                concurrency=concurrency,
                stream_tokens_per_s=rate,
                aggregate_tokens_per_s=None if rate is None else concurrency * rate,
                ttft_ms=s[TTFT_SUM_S] / s[TTFT_N] * 1000 if s[TTFT_N] > 0 else None,
                met_share=met_share,
                # A hair of slack: 19 of 20 is 95 % even when the halved sums are not whole.
                meets_sla=met_share >= percentile / 100 - 1e-9,
            )
        )
    return points


def add_cells_row(into: list[float], sums: list[float]) -> None:
    """Add one cell's sums to another's."""
    for i in range(_WIDTH):
        into[i] += sums[i]


def capacity(points: list[Point], ceiling: int | None, learned_limit: int | None = None) -> Capacity | None:
    """The capacity per replica a curve shows (None: no measured level meets the SLA); ``ceiling``: the
    backend's ``max_concurrency`` per replica, the most it is ever run at; ``learned_limit``: the SLA
    limiter's limit per engine replica, if it moved (below the ceiling, the level above it breached)."""
    measured = [p for p in points if p.samples >= MIN_LEVEL_SAMPLES and p.stream_tokens_per_s is not None]
    seen = next((p.level for p in points if p.samples >= MIN_KNEE_SAMPLES and not p.meets_sla), None)
    held = learned_limit + 1 if learned_limit and (ceiling is None or learned_limit < ceiling) else None
    knee = min((k for k in (seen, held) if k is not None), default=None)
    below = [p for p in measured if p.meets_sla and (knee is None or p.level < knee)]
    if not below:
        return None
    best = below[-1]
    rate = best.stream_tokens_per_s
    assert rate is not None  # measured levels have a rate
    total = sum(p.samples for p in points)
    at_ceiling = ceiling is not None and best.level >= ceiling
    # Held at the limit, a steady load fills that one level: the limiter's own windows are the curve's
    # corroboration there, so the level alone counts once it holds as many samples as three would.
    held_level = held is not None and knee == held and best.samples >= MIN_LEVELS * MIN_LEVEL_SAMPLES
    if len(measured) < MIN_LEVELS and not held_level:
        enough, why = False, f"{len(measured)} of {MIN_LEVELS} levels with {MIN_LEVEL_SAMPLES}+ samples"
    elif knee is None and not at_ceiling:
        enough, why = False, "the SLA held at every level seen: the knee was not reached (a lower bound)"
    else:
        enough = True
        if knee is not None and knee == seen:
            why = f"knee at c={knee}"
        elif knee is not None:
            why = f"knee at c={knee}: the SLA limiter holds {learned_limit} per replica (ceiling {ceiling})"
        else:
            why = f"ceiling c={ceiling} reached within the SLA"
    return Capacity(best.level, best.concurrency * rate, rate, total, enough, why)


def summary(
    cells: Cells, sla: Sla | None, ceiling: int | None, learned_limit: int | None = None
) -> dict[str, Any]:
    """One backend's envelope for ``/admin/backends`` ``capacity.envelope``: the curve over all shapes,
    its capacity per replica, and each shape's curve and capacity (``learned_limit``: see ``capacity``)."""
    percentile = sla.percentile if sla is not None else 95.0
    points = curve(cells.items(), percentile)
    cap = capacity(points, ceiling, learned_limit) if sla is not None else None
    shapes: dict[Shape, list[tuple[tuple[Shape, int], list[float]]]] = {}
    for key, sums in cells.items():
        shapes.setdefault(key[0], []).append((key, sums))
    per_shape = []
    for shape in sorted(shapes):
        shape_points = curve(shapes[shape], percentile)
        shape_cap = capacity(shape_points, ceiling, learned_limit) if sla is not None else None
        per_shape.append(
            {
                "shape": shape_label(shape),
                "samples": round(sum(p.samples for p in shape_points), 1),
                "capacity": shape_cap.to_json() if shape_cap else None,
                "curve": [p.to_json() for p in shape_points],
            }
        )
    return {
        "samples": round(sum(p.samples for p in points), 1),
        "sla": sla is not None,
        "capacity": cap.to_json() if cap else None,
        "curve": [p.to_json() for p in points],
        "shapes": per_shape,
    }


@dataclass(frozen=True, slots=True)
class Stored:
    """One backend's envelope as the stored document has it."""

    points: list[Point]  # its curve over every shape, lowest level first
    capacity: Capacity | None  # None: no SLA, or no measured level meets it
    learned_limit: int | None  # per engine replica, as recorded (``stored_limit``)


def backend_envelope(
    document: Mapping[str, Any] | None, name: str, sla: Sla | None, ceiling: int | None
) -> Stored:
    """A backend's curve and capacity per replica from the stored document (the one reading of it that
    the advisor, its plots and the planner share); ``ceiling``: its ``max_concurrency`` per replica."""
    stored = document.get("backends") if document and document.get("format") == FORMAT else None
    cells = cells_from_json(stored.get(name)) if isinstance(stored, dict) else {}
    points = curve(cells.items(), sla.percentile if sla is not None else 95.0)
    limit = stored_limit(document, name)
    return Stored(points, capacity(points, ceiling, limit) if sla is not None else None, limit)


def envelope_shape_capacity(
    document: Mapping[str, Any] | None, name: str, sla: Sla | None, ceiling: int | None
) -> dict[int, float]:
    """A backend's measured output tokens/s per replica at the SLA, per shape index, from the stored
    document: only shapes whose own curve has enough data (the advisor's ``measured`` cells)."""
    stored = document.get("backends") if document and document.get("format") == FORMAT else None
    cells = cells_from_json(stored.get(name)) if isinstance(stored, dict) else {}
    if sla is None or not cells:
        return {}
    limit = stored_limit(document, name)
    shapes: dict[Shape, list[tuple[tuple[Shape, int], list[float]]]] = {}
    for key, sums in cells.items():
        shapes.setdefault(key[0], []).append((key, sums))
    out: dict[int, float] = {}
    for (inp, outp), shape_cells in shapes.items():
        found = capacity(curve(shape_cells, sla.percentile), ceiling, limit)
        if found is not None and found.enough:
            out[inp * len(OUTPUT_LABELS) + outp] = found.aggregate_tokens_per_s
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
