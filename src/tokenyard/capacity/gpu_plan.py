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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
        raise NotImplementedError


def plan_document(plans: Mapping[str, ModelPlan], *, now_wall: float) -> dict[str, Any]:
    """The document for ``plans`` (model → plan)."""
    raise NotImplementedError


def read_plans(document: Mapping[str, Any] | None) -> dict[str, ModelPlan]:
    """The plans in a stored document (another format, or a bad entry: skipped, never fatal)."""
    raise NotImplementedError
