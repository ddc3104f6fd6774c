"""Assembly of the capacity planner: its capacity sources, in order, and how a replica count is applied.

Capacity per replica comes from the first source with a figure for the backend (best first):

1. ``measured``: the measured envelope's capacity at the SLA, where it has enough data;
2. ``learned_limit`` (a backend's learned concurrency limit per replica) × the SLA's
   ``min_stream_tokens_per_s``;
3. the catalog's figure for the model on the backend's GPU × ``advisor.utilization_cap``;
4. the configured ``max_concurrency`` × the SLA's ``min_stream_tokens_per_s`` (the SLA's promise at the
   configured cap), for a model the catalog does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tokenyard.adapters.webhook import WebhookSender
from tokenyard.capacity.desired import (
    CapacityEstimate,
    CapacitySource,
    first_answer,
    fixed_source,
    limit_source,
)
from tokenyard.capacity.envelope_keeper import EnvelopeKeeper
from tokenyard.capacity.planner import CapacityPlanner, PlannerStore
from tokenyard.config import TokenyardConfig
from tokenyard.live import LiveConfig
from tokenyard.meter.meter import Meter
from tokenyard.proxy.backends import Backend

if TYPE_CHECKING:  # a type only: the advisor loads when a config runs it
    from tokenyard.advisor.live import AdvisorLoop


def replicas_applier(backends: Mapping[str, Backend], meter: Meter) -> Callable[[str, int], None]:
    """Count a dedicated backend's new replicas on this proxy replica: its routing cap and GPU accrual."""

    def apply(name: str, replicas: int) -> None:
        backend = backends.get(name)
        if backend is None or name not in meter.dedicated or backend.replicas == replicas:
            return
        meter.set_replicas(name, replicas)
        backend.replicas = replicas

    return apply


def _catalog_figures(config: Callable[[], TokenyardConfig]) -> Callable[[], Mapping[str, CapacityEstimate]]:
    """The catalog's capacities for the config in force, computed once per (re)load."""
    # The config object itself is kept (not its id: a reloaded config may reuse a freed object's id).
    cached: list[tuple[TokenyardConfig, Mapping[str, CapacityEstimate]]] = []

    def figures() -> Mapping[str, CapacityEstimate]:
        current = config()
        if not cached or cached[0][0] is not current:
            # The advisor's catalog and cost model load with the first dedicated backend to size, not at
            # start-up: a proxy's resident memory is mostly the code it has loaded.
            from tokenyard.advisor.catalog import load_catalog
            from tokenyard.advisor.workloads import catalog_capacity

            cached[:] = [(current, catalog_capacity(current, load_catalog(current.advisor.catalog)))]
        return cached[0][1]

    return figures


def envelope_source(keeper: EnvelopeKeeper, backends: Mapping[str, Backend]) -> CapacitySource:
    """The measured envelope's capacity per replica at the SLA, once it has enough data (its figure already
    pays for the backend's real prompts: no input rate of its own)."""

    def measured(backend: str) -> CapacityEstimate | None:
        running = backends.get(backend)
        if running is None:
            return None
        capacity = keeper.capacity(backend, running.config.sla, running.config.max_concurrency)
        if capacity is None or not capacity.enough:
            return None
        return CapacityEstimate(
            output_tokens_per_s=capacity.aggregate_tokens_per_s, source=capacity.describe()
        )

    return measured


def learned_limits(backends: Mapping[str, Backend]) -> Callable[[], dict[str, int]]:
    """Every backend's concurrency limit per engine replica as learned from its SLA, for those whose limit
    has moved (one still at its configured ceiling is the starting point, not a measurement)."""

    def moved() -> dict[str, int]:
        return {
            name: backend.limit.current
            for name, backend in backends.items()
            if backend.limit is not None and backend.limit.history
        }

    return moved


def learned_limit(backends: Mapping[str, Backend]) -> Callable[[str], int | None]:
    """One backend's learned limit per engine replica (None: no SLA, or it has not moved yet)."""
    moved = learned_limits(backends)

    def per_replica(name: str) -> int | None:
        return moved().get(name)

    return per_replica


def capacity_sources(
    live: LiveConfig,
    backends: Mapping[str, Backend],
    *,
    measured: CapacitySource | None = None,
    learned_limit: Callable[[str], int | None] | None = None,
) -> CapacitySource:
    """The chain of capacity sources (see the module's docstring); ``measured`` and ``learned_limit`` are
    left out when not given."""

    def config() -> TokenyardConfig:
        return live.config

    def configured_cap(name: str) -> int | None:
        backend = backends.get(name)
        return backend.config.max_concurrency if backend else None

    sources: list[CapacitySource] = []
    if measured is not None:
        sources.append(measured)
    if learned_limit is not None:
        sources.append(limit_source(config, learned_limit, "learned limit"))
    sources.append(fixed_source(_catalog_figures(config)))
    sources.append(limit_source(config, configured_cap, "max_concurrency (configured)"))
    return first_answer(*sources)


def start_capacity(
    stack: contextlib.AsyncExitStack,
    live: LiveConfig,
    store: PlannerStore,
    backends: Mapping[str, Backend],
    meter: Meter,
    advisor: AdvisorLoop | None,
    *,
    replica: str,
    wall: Callable[[], float],
    measured: CapacitySource | None = None,
    learned_limit: Callable[[str], int | None] | None = None,
) -> CapacityPlanner:
    """The planner, running until the stack closes (``measured``, ``learned_limit``: see
    ``capacity_sources``)."""
    webhook = WebhookSender()
    stack.push_async_callback(webhook.aclose)  # after the planner stops (pushed before it)

    def advice() -> Mapping[str, Any] | None:
        return advisor.latest if advisor is not None else None

    planner = CapacityPlanner(
        store,
        lambda: live.config,
        replica=replica,
        capacity=capacity_sources(live, backends, measured=measured, learned_limit=learned_limit),
        provisioned=lambda name: backends[name].replicas,
        apply=replicas_applier(backends, meter),
        advice=advice,
        webhook=webhook,
        wall=wall,
    )
    task = asyncio.create_task(planner.run(), name="capacity")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    return planner
