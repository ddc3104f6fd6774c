"""Request shapes, defined once: prompt × completion tokens in log-spaced buckets.

Capacity at a latency SLO differs by request shape far more than a two-figure model allows (a long prompt
costs prefill, a long answer decode time), so the meter counts each minute's requests per shape, the
measured envelope keeps its curves per shape, and the advisor prices each minute by its own shape mix.

Buckets grow ×4 a step: prompt tokens <128, 128-511, 512-2047, 2048-8191, 8192+; completion tokens <64,
64-255, 256-1023, 1024+. A shape is (input bucket, output bucket); its *index* (``shape_index``) is
``input bucket × len(OUTPUT_LABELS) + output bucket``, the position of its figures in every per-shape
list (``SHAPES`` in order).
"""

from __future__ import annotations

from bisect import bisect_right

INPUT_EDGES = (128, 512, 2048, 8192)
OUTPUT_EDGES = (64, 256, 1024)

Shape = tuple[int, int]  # (input bucket, output bucket)


def _bucket_labels(edges: tuple[int, ...]) -> list[str]:
    bounds = [0, *edges]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(bounds, edges, strict=False)] + [f"{edges[-1]}+"]


INPUT_LABELS = _bucket_labels(INPUT_EDGES)
OUTPUT_LABELS = _bucket_labels(OUTPUT_EDGES)
SHAPES: tuple[Shape, ...] = tuple((i, o) for i in range(len(INPUT_LABELS)) for o in range(len(OUTPUT_LABELS)))
SHAPE_COUNT = len(SHAPES)
# Per shape index: the meter's aggregate fields (``AGG_FIELDS`` ends with them): requests, prompt tokens
# and completion tokens of the minute's requests of that shape. Short names: every stored bucket carries
# the ones it uses.
SHAPE_FIELDS: tuple[str, ...] = tuple(
    f"s{k}_{what}" for k in range(SHAPE_COUNT) for what in ("requests", "prompt", "completion")
)


def shape_of(prompt_tokens: int, completion_tokens: int) -> Shape:
    """The shape bucket of a request's token counts."""
    return bisect_right(INPUT_EDGES, prompt_tokens), bisect_right(OUTPUT_EDGES, completion_tokens)


def shape_index(prompt_tokens: int, completion_tokens: int) -> int:
    """The index of a request's shape (its position in ``SHAPES``)."""
    return bisect_right(INPUT_EDGES, prompt_tokens) * len(OUTPUT_LABELS) + bisect_right(
        OUTPUT_EDGES, completion_tokens
    )


def shape_label(shape: Shape) -> str:
    """How a shape is named in documents, on the API and in config: ``in128-511/out64-255``."""
    return f"in{INPUT_LABELS[shape[0]]}/out{OUTPUT_LABELS[shape[1]]}"


def shape_from_label(label: str) -> Shape | None:
    """The shape a label names, or None (a label from another version of the buckets: ignored)."""
    inp, _, out = label.partition("/")
    try:
        return INPUT_LABELS.index(inp.removeprefix("in")), OUTPUT_LABELS.index(out.removeprefix("out"))
    except ValueError:
        return None


def representative(shape: Shape) -> tuple[float, float]:
    """(prompt, completion) tokens standing for a shape when no request of it was seen: the geometric
    middle of each bucket (the open top bucket: twice its lower edge; the bottom: half its upper edge)."""
    return _middle(INPUT_EDGES, shape[0]), _middle(OUTPUT_EDGES, shape[1])


def _middle(edges: tuple[int, ...], bucket: int) -> float:
    if bucket == 0:
        return edges[0] / 2
    if bucket >= len(edges):
        return edges[-1] * 2.0
    return float((edges[bucket - 1] * edges[bucket]) ** 0.5)
