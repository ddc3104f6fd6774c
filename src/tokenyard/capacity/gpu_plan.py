"""The GPU plan the advisor publishes and the router follows: per model, which GPU type takes which shape.

Where a model has dedicated deployments of several GPU types, the advisor solves the cheapest mix over them
(``advisor/mix.py``) and stores, per model, the GPU type each request shape is assigned to and the replicas
per type the mix wants (document ``advisor:plan``). Every proxy replica reads it (``edge``, periodically, off
the request path) and, for a model whose ``routing`` is ``plan``, tries first the dedicated deployments of
the type a request's shape is assigned to (a cost-aware choice among deployments with headroom; the usual
spillover order after them).

Document (JSON)::

    {"format": 1, "generated_at": unix_s,
     "models": {model: {"shapes": {shape_label: gpu_type}, "replicas": {gpu_type: int},
                        "usd_per_h": float}}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenyard.meter.shapes import SHAPE_COUNT, SHAPES, shape_from_label, shape_label

FORMAT = 1
DOCUMENT = "advisor:plan"


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model's plan."""

    gpu_of_shape: tuple[str | None, ...]  # per shape index: the GPU type assigned (None: no plan for it)
    replicas: dict[str, int]  # GPU type → replicas the plan wants
    usd_per_h: float

    def to_json(self) -> dict[str, Any]:
        """The model's entry in the document."""
        return {
            "shapes": {
                shape_label(shape): gpu
                for shape, gpu in zip(SHAPES, self.gpu_of_shape, strict=False)
                if gpu is not None
            },
            "replicas": dict(self.replicas),
            "usd_per_h": self.usd_per_h,
        }


def plan_document(plans: Mapping[str, ModelPlan], *, now_wall: float) -> dict[str, Any]:
    """The document for ``plans`` (model → plan)."""
    return {
        "format": FORMAT,
        "generated_at": now_wall,
        "models": {model: plan.to_json() for model, plan in plans.items()},
    }


def read_plans(document: Mapping[str, Any] | None) -> dict[str, ModelPlan]:
    """The plans in a stored document (another format, or a bad entry: skipped, never fatal)."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        return {}
    models = document.get("models")
    if not isinstance(models, Mapping):
        return {}
    plans = {}
    for model, entry in models.items():
        plan = _read_plan(entry)
        if isinstance(model, str) and plan is not None:
            plans[model] = plan
    return plans


def generated_at(document: Mapping[str, Any] | None) -> float | None:
    """When the advisor wrote the document (unix s), or None (absent, another format, not a number)."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        return None
    return _number(document.get("generated_at"))


def _read_plan(entry: Any) -> ModelPlan | None:
    """One model's entry, its bad parts left out; None when nothing of it is usable (no shape assigned)."""
    if not isinstance(entry, Mapping):
        return None
    gpu_of_shape: list[str | None] = [None] * SHAPE_COUNT
    shapes = entry.get("shapes")
    for label, gpu in shapes.items() if isinstance(shapes, Mapping) else ():
        shape = shape_from_label(label) if isinstance(label, str) else None
        if shape is not None and isinstance(gpu, str) and gpu:
            gpu_of_shape[SHAPES.index(shape)] = gpu
    if all(gpu is None for gpu in gpu_of_shape):
        return None
    replicas_in = entry.get("replicas")
    replicas = {
        gpu: count
        for gpu, count in (replicas_in.items() if isinstance(replicas_in, Mapping) else ())
        # bool is an int to Python, never a replica count
        if isinstance(gpu, str) and isinstance(count, int) and not isinstance(count, bool) and count >= 0
    }
    return ModelPlan(tuple(gpu_of_shape), replicas, _number(entry.get("usd_per_h")) or 0.0)


def _number(value: Any) -> float | None:
    """A finite JSON number as a float, else None (a bool is no number here)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
