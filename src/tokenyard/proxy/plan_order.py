"""Routing that follows the advisor's GPU plan: per request shape, which deployments are tried first.

For a model whose ``routing`` is ``plan``, with a plan in force (``capacity/gpu_plan.py``), a request's
shape picks the order its deployments are tried in: the dedicated deployments of the GPU type the plan
assigns that shape come first (in their configured order), then the model's other dedicated ones. Only the
dedicated positions are reordered: every position keeps the kind it had (a per-token deployment stays where
the config put it), so spillover to dedicated-serverless and serverless is exactly the configured one.
``routing.choose_deployment`` then takes the first with headroom, as for any model: the planned type when it
has room, the next-cheapest choice the config lists when it has not.

The shape is read from the request as the tpm estimate reads it (``handler.estimate_tokens``): prompt tokens
~ the body's bytes ÷ 4; completion tokens: the request's ``max_completion_tokens`` or ``max_tokens``, else
``UNCAPPED_COMPLETION_TOKENS`` (a request without a cap is taken for a chat answer of typical length).

The hot path pays one dict lookup for a model without a plan, and for one with a plan the shape's two
bisections and a list index: the orders are built per shape when a plan is applied (``shape_orders``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeVar

from tokenyard.capacity.gpu_plan import ModelPlan
from tokenyard.meter.shapes import SHAPE_COUNT, shape_index

# The completion tokens a request without max_completion_tokens / max_tokens counts as: most chat answers
# are some tens to a few hundred tokens (the 64-255 output bucket).
UNCAPPED_COMPLETION_TOKENS: Final = 150

T = TypeVar("T")


def plan_order(gpu_types: Sequence[str | None], planned_gpu: str | None) -> tuple[int, ...]:
    """The order to try deployments in, as indices into ``gpu_types`` (each deployment's GPU type in
    configured order; None for one billed per token): the dedicated positions, in order, are filled first
    by the deployments of ``planned_gpu``, then by the other dedicated ones (each group as configured);
    per-token deployments keep their positions. No planned type (or none of it deployed): as configured."""
    dedicated = [i for i, gpu in enumerate(gpu_types) if gpu is not None]
    planned = [i for i in dedicated if gpu_types[i] == planned_gpu]
    if planned_gpu is None or not planned:
        return tuple(range(len(gpu_types)))
    refill = iter(planned + [i for i in dedicated if gpu_types[i] != planned_gpu])
    return tuple(next(refill) if gpu is not None else i for i, gpu in enumerate(gpu_types))


def shape_orders(
    deployments: Sequence[T], gpu_types: Sequence[str | None], plan: ModelPlan
) -> tuple[list[T], ...]:
    """Per shape index, ``deployments`` in the order the plan gives that shape (``plan_order``); shapes
    with the same order share one list (the request path only reads them)."""
    by_gpu: dict[str | None, list[T]] = {}
    orders = []
    for k in range(SHAPE_COUNT):
        gpu = plan.gpu_of_shape[k] if k < len(plan.gpu_of_shape) else None
        order = by_gpu.get(gpu)
        if order is None:
            order = by_gpu[gpu] = [deployments[i] for i in plan_order(gpu_types, gpu)]
        orders.append(order)
    return tuple(orders)


def request_shape(body_bytes: int, request: dict[str, Any]) -> int:
    """The shape index of a request before it runs: ~4 bytes a prompt token, its output cap (or
    ``UNCAPPED_COMPLETION_TOKENS``) for the completion."""
    cap = request.get("max_completion_tokens") or request.get("max_tokens")
    completion = cap if isinstance(cap, int) and cap > 0 else UNCAPPED_COMPLETION_TOKENS
    return shape_index(body_bytes // 4, completion)
