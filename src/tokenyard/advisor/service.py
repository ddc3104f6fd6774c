"""One evaluation of every workload: the config's workloads, their traffic, the decision, the stability.

Shared by ``tokenyard replay`` (a traffic log), ``tokenyard advise`` and the proxy's background loop (the
meter store). Pure apart from what it is handed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from typing import Any

from tokenyard.advisor import decide
from tokenyard.advisor.catalog import Catalog
from tokenyard.advisor.costs import DedicatedOption
from tokenyard.advisor.decide import Advice
from tokenyard.advisor.profiles import ProfileKey
from tokenyard.advisor.shapes import (
    CATALOG,
    IMPORTED,
    MEASURED,
    MEASURED_ALL,
    ShapeMeans,
    build_table,
    catalog_cells,
    measured_cells,
)
from tokenyard.advisor.traffic import Traffic
from tokenyard.advisor.workloads import (
    BusyMinute,
    build_workload,
    calibrated,
    from_envelope,
    workload_name,
)
from tokenyard.capacity.envelope import Capacity
from tokenyard.config import TokenyardConfig
from tokenyard.meter.shapes import SHAPE_COUNT

DAY_MIN = 1440


def grouping(config: TokenyardConfig) -> tuple[Callable[[str, str], str | None], Callable[[str, str], bool]]:
    """(the workload a model × tenant belongs to, whether its real-time traffic could have been async)."""
    advisor = config.advisor
    per_tenant = advisor.per_tenant

    def workload_of(model: str, tenant: str) -> str | None:
        return workload_name(model, tenant, per_tenant=per_tenant)

    def eligible(model: str, tenant: str) -> bool:
        needs = advisor.needs(model)
        return needs.async_eligible or tenant in needs.async_eligible_tenants

    return workload_of, eligible


def evaluate_all(
    traffic: Mapping[str, Traffic],
    config: TokenyardConfig,
    catalog: Catalog,
    *,
    now: float,
    today: date,
    previous: Mapping[str, dict[str, Any]] | None = None,
    measured: Mapping[str, Sequence[BusyMinute]] | None = None,
    envelopes: Mapping[str, Capacity] | None = None,
    shapes: Mapping[str, Mapping[int, float]] | None = None,
    imported: Mapping[ProfileKey, Mapping[int, float]] | None = None,
) -> tuple[list[Advice], dict[str, dict[str, Any]], list[str]]:
    """Advice per workload (costliest first), the stability state to keep, and workloads that were skipped.

    ``previous`` is the state the last evaluation returned; ``measured`` maps a model to busy minutes of
    its dedicated backends (calibrating their capacity); ``envelopes`` maps a model to the capacity its
    dedicated backend's measured envelope shows, which wins over the calibration when it has enough data;
    ``shapes`` maps a model to that envelope's output tokens/s per request shape (the shapes with enough
    data of their own), which win over both: the option gets a table of capacity by shape; ``imported``
    maps (model, GPU type, GPUs per replica) to an imported profile's requests/s per shape, a table for
    every option it matches.
    """
    advisor = config.advisor
    advices: list[Advice] = []
    states: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for name, workload_traffic in sorted(traffic.items()):
        model = workload_traffic.model or name
        workload = build_workload(name, model, config, catalog, today=today)
        samples = (measured or {}).get(model)
        envelope = (envelopes or {}).get(model)
        workload = _with_profiled_types(workload, config, catalog, imported or {})
        for option in workload.options:  # imported profiles for the GPU types no backend measured
            found = (imported or {}).get((model, option.gpu_type, option.gpus_per_replica))
            if found and not (workload.current and option == workload.current.option):
                better = with_shape_table(option, {}, found, None, workload_traffic, advisor.utilization_cap)
                workload = _with_option(workload, option, better)
        if workload.current and workload.current.option:
            option = workload.current.option
            measured_shapes = (shapes or {}).get(model) or {}
            profile = (imported or {}).get((model, option.gpu_type, option.gpus_per_replica)) or {}
            if measured_shapes or profile:
                better = with_shape_table(
                    option, measured_shapes, profile, envelope, workload_traffic, advisor.utilization_cap
                )
            elif envelope is not None and envelope.enough:
                better = from_envelope(option, envelope)
            elif samples:
                better = calibrated(option, samples, advisor.utilization_cap)
            else:
                better = option
            if better is not option:
                workload = _with_option(workload, option, better)
        try:
            advice = decide.evaluate(workload, workload_traffic, now=now)
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        states[name] = decide.settle(
            advice,
            (previous or {}).get(name),
            min_pct=advisor.min_saving_pct,
            min_usd=advisor.min_saving_usd_per_month,
            required=advisor.stable_evaluations,
        )
        advices.append(advice)
    advices.sort(key=lambda a: -(a.current or a.best).cost.total_usd * a.per_month)
    return advices, states, skipped


def with_shape_table(
    option: DedicatedOption,
    measured: Mapping[int, float],
    imported: Mapping[int, float],
    envelope: Capacity | None,
    traffic: Traffic,
    utilization_cap: float,
) -> DedicatedOption:
    """The option with a table of capacity by shape: the shapes measured on their own (output tokens/s),
    then an imported profile (requests/s), then the envelope over all shapes (when it has enough data),
    then the catalog's figures at the cap — each shape at the traffic's own mean lengths."""
    ran = traffic.must_wait_for()
    means = ShapeMeans.of(ran.shapes.totals())
    layers: list[tuple[str, Mapping[int, float]]] = [
        (MEASURED, measured_cells(measured, means)),
        (IMPORTED, imported),
    ]
    if envelope is not None and envelope.enough:
        layers.append(
            (
                MEASURED_ALL,
                measured_cells(dict.fromkeys(range(SHAPE_COUNT), envelope.aggregate_tokens_per_s), means),
            )
        )
    layers.append(
        (
            CATALOG,
            catalog_cells(option.input_tokens_per_s, option.output_tokens_per_s, utilization_cap, means),
        )
    )
    table = build_table(layers)
    assert table is not None  # the catalog layer fills every shape
    where = "measured envelope" if measured else "imported profile"
    return replace(option, table=table, utilization_cap=1.0, capacity_source=f"{where}, {table.describe()}")


def _with_profiled_types(
    workload: decide.Workload,
    config: TokenyardConfig,
    catalog: Catalog,
    imported: Mapping[ProfileKey, Mapping[int, float]],
) -> decide.Workload:
    """The workload with a replica shape for every imported profile of its model whose GPU type it has no
    shape for (a GPU the catalog has no capacity for, e.g. one the team benchmarked itself), priced at the
    catalog's or a configured backend's $/GPU-hour; a profile of a GPU with no known price is left out."""
    known = {(o.gpu_type, o.gpus_per_replica) for o in workload.options}
    prices = {gpu: price.gpu_hour_usd for gpu, price in catalog.gpus.items()}
    prices.update(
        {b.gpu_type: b.gpu_hour_price for b in config.backends.values() if b.gpu_type and b.gpu_hour_price}
    )
    added = []
    for (model, gpu_type, gpus), cells in sorted(imported.items()):
        table = build_table([(IMPORTED, cells)])
        if model != workload.model or (gpu_type, gpus) in known or gpu_type not in prices or table is None:
            continue
        added.append(
            DedicatedOption(
                gpu_type,
                gpus,
                prices[gpu_type],
                input_tokens_per_s=1.0,  # unused: the table prices every shape
                output_tokens_per_s=1.0,
                capacity_source=f"imported profile, {table.describe()}",
                utilization_cap=1.0,
                table=table,
            )
        )
    return replace(workload, options=(*workload.options, *added)) if added else workload


def _with_option(workload: decide.Workload, old: DedicatedOption, new: DedicatedOption) -> decide.Workload:
    """The workload with one replica shape replaced (by its calibrated self)."""
    options = tuple(new if o == old else o for o in workload.options)
    current = replace(workload.current, option=new) if workload.current else None
    return replace(workload, options=options, current=current)


def replay_evaluations(
    traffic: Mapping[str, Traffic], config: TokenyardConfig, catalog: Catalog, *, now: float, today: date
) -> tuple[list[Advice], list[str]]:
    """Evaluate a log as the live loop would have: once a day for its last ``stable_evaluations`` days.

    The stability rule then holds offline too: a change is recommended only if the last evaluations agree.
    """
    runs = config.advisor.stable_evaluations
    state: dict[str, dict[str, Any]] = {}
    advices: list[Advice] = []
    skipped: list[str] = []
    for days_back in range(runs - 1, -1, -1):
        then = now - days_back * 86400
        # Each workload as it stood then; one not seen yet is not evaluated (its streak starts later).
        cut = {
            name: t.sliced(0, t.minutes - days_back * DAY_MIN)
            for name, t in traffic.items()
            if t.first_seen is not None and t.first_seen <= then
        }
        advices, state, skipped = evaluate_all(cut, config, catalog, now=then, today=today, previous=state)
    return advices, skipped
