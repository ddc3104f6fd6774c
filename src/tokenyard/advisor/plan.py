"""The GPU plan the router follows (pure): for a model deployed on dedicated backends of two or more GPU
types, which type each request shape goes to, and how many replicas of each the mix wants.

The mix is solved over the types the config *deploys* (not every type the catalog knows): the router can
only send a request where a backend runs. It is the advice's always-on mix (``fleet.always_on_mix``: the
cheapest sizing with per-token overflow, or the peak without a per-token deployment), over the model's
real-time traffic in the window. The document (``capacity/gpu_plan.py``) names types as the backends'
``gpu_type``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenyard.advisor import decide, fleet
from tokenyard.advisor.catalog import Catalog
from tokenyard.advisor.decide import Advice
from tokenyard.advisor.fleet import Demand
from tokenyard.advisor.shapes import ShapeMeans
from tokenyard.advisor.traffic import TokenSeries
from tokenyard.advisor.workloads import deployed_options
from tokenyard.capacity.gpu_plan import ModelPlan
from tokenyard.config import TokenyardConfig
from tokenyard.meter.shapes import SHAPE_COUNT


def gpu_plans(config: TokenyardConfig, catalog: Catalog, advices: Iterable[Advice]) -> dict[str, ModelPlan]:
    """Per model deployed on two or more GPU types (with a capacity for each), its plan."""
    plans: dict[str, ModelPlan] = {}
    if not config.advisor.mix.enabled:
        return plans
    # One router serves every tenant of a model: with ``per_tenant`` workloads, their traffic adds up.
    by_model: dict[str, Advice] = {}
    realtime: dict[str, TokenSeries] = {}
    for advice in advices:
        if advice.traffic is not None:
            by_model.setdefault(advice.model, advice)
            held = realtime.get(advice.model)
            realtime[advice.model] = (
                advice.traffic.realtime if held is None else held.plus(advice.traffic.realtime)
            )
    for advice in by_model.values():
        traffic = advice.traffic
        assert traffic is not None
        options = deployed_options(config, catalog, advice.model)
        if len({option.gpu_type for option in options}) < 2:
            continue
        workload = decide.Workload(
            name=advice.workload,
            model=advice.model,
            needs=config.advisor.needs(advice.model),
            serverless=None,
            dedicated_serverless=None,
            batch=None,
            options=tuple(options),
            current=None,
            utilization_cap=config.advisor.utilization_cap,
        )
        rt = realtime[advice.model]
        totals = rt.totals()
        means = ShapeMeans.of(rt.shapes.totals())
        cached_share = totals.cached / totals.prompt if totals.prompt else 0.0
        types = decide.gpu_types(workload, means, cached_share)
        kind = {gpu.name: option.gpu_type for gpu, option in zip(types, options, strict=True)}
        overflow = _overflow(config, advice.model, means, cached_share)
        demand = Demand(
            rt.index, rt.shapes.columns(rt.index), traffic.minutes, traffic.start_minute, overflow
        )
        if not rt.index:
            continue
        result = fleet.always_on_mix(types, demand, slices=config.advisor.mix.slices)
        mix = result.mix
        plans[advice.model] = ModelPlan(
            tuple(kind.get(mix.type_of(k) or "") for k in range(SHAPE_COUNT)),
            {kind[name]: n for name, n in mix.replicas.items()},
            round(mix.usd_per_h, 6),
        )
    return plans


def _overflow(
    config: TokenyardConfig, model: str, means: ShapeMeans, cached_share: float
) -> list[float] | None:
    """Per shape, what a request costs on the model's first per-token deployment (None: it has none)."""
    section = config.models.get(model)
    for name in section.deployments if section else []:
        backend = config.backends[name]
        if backend.kind in ("serverless", "dedicated_serverless"):
            prices = backend.prices
            cached = prices.input_per_1m if prices.cached_input_per_1m is None else prices.cached_input_per_1m
            per_input = (1 - cached_share) * prices.input_per_1m + cached_share * cached
            return [
                (p * per_input + c * prices.output_per_1m) / 1e6
                for p, c in map(means.lengths, range(SHAPE_COUNT))
            ]
    return None
