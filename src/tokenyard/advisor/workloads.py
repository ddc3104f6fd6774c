"""Workloads from the config and the catalog (pure): prices, replica shapes and the current setup of each.

Prices the config names for a model's own deployments are what the team pays, so they win over the
catalog's; a configured dedicated backend's $/GPU-hour likewise. Capacity comes from the catalog (scaled
when the configured replica has a different number of GPUs), or from measurement: the measured envelope
where it has enough data (``from_envelope``), else busy minutes (``calibrated``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date

from tokenyard.advisor import buying
from tokenyard.advisor.catalog import Catalog, ModelEntry, ReplicaCapacity, TokenPrices
from tokenyard.advisor.costs import DedicatedOption
from tokenyard.advisor.decide import CurrentSetup, Workload
from tokenyard.capacity.desired import CapacityEstimate
from tokenyard.capacity.envelope import Capacity
from tokenyard.config import BackendConfig, Prices, TokenyardConfig

MIN_CALIBRATION_MINUTES = 10
MIN_CALIBRATION_UTILIZATION = 0.3  # quieter minutes say little about capacity


def workload_name(model: str, tenant: str, *, per_tenant: bool) -> str:
    """The workload a request belongs to: its model, or its model and tenant."""
    return f"{model}/{tenant}" if per_tenant else model


def _config_prices(prices: Prices, backend: str, today: date) -> TokenPrices:
    return TokenPrices(
        input_per_1m=prices.input_per_1m,
        cached_input_per_1m=prices.cached_input_per_1m,
        output_per_1m=prices.output_per_1m,
        as_of=today,
        source=f"config: backends.{backend}.prices",
    )


def _option(capacity: ReplicaCapacity, gpus: int, gpu_hour_usd: float) -> DedicatedOption:
    """A replica shape from a catalog capacity, scaled linearly to ``gpus`` GPUs."""
    scale = gpus / capacity.gpus_per_replica
    source = (
        "catalog" if scale == 1 else f"catalog, scaled from {capacity.gpus_per_replica}×{capacity.gpu_type}"
    )
    return DedicatedOption(
        gpu_type=capacity.gpu_type,
        gpus_per_replica=gpus,
        gpu_hour_usd=gpu_hour_usd,
        input_tokens_per_s=capacity.input_tokens_per_s * scale,
        output_tokens_per_s=capacity.output_tokens_per_s * scale,
        cached_input_work=capacity.cached_input_work,
        capacity_source=source,
    )


@dataclass(frozen=True, slots=True)
class Deployments:
    """What the config deploys for one model."""

    dedicated: list[tuple[str, BackendConfig]]
    per_token: list[tuple[str, BackendConfig]]  # serverless and dedicated serverless, in preference order


def _deployments(config: TokenyardConfig, model: str) -> Deployments:
    model_config = config.models.get(model)
    names = model_config.deployments if model_config else []
    backends = [(name, config.backends[name]) for name in names]
    return Deployments(
        dedicated=[(n, b) for n, b in backends if b.kind == "dedicated"],
        per_token=[(n, b) for n, b in backends if b.kind in ("serverless", "dedicated_serverless")],
    )


def build_workload(
    name: str, model: str, config: TokenyardConfig, catalog: Catalog, *, today: date
) -> Workload:
    """Everything the cost model needs for one workload."""
    needs = config.advisor.needs(model)
    entry = catalog.model(needs.catalog_model or model) or ModelEntry()
    deployed = _deployments(config, model)
    prices: dict[str, TokenPrices | None] = {
        "serverless": None if needs.off_catalog else entry.serverless,
        "dedicated_serverless": entry.dedicated_serverless,
    }
    for backend_name, backend in reversed(deployed.per_token):  # the most preferred one wins
        prices[backend.kind] = _config_prices(backend.prices, backend_name, today)
    gpu_price = {gpu: price.gpu_hour_usd for gpu, price in catalog.gpus.items()}
    for _, backend in deployed.dedicated:
        assert backend.gpu_type is not None
        assert backend.gpu_hour_price is not None
        gpu_price[backend.gpu_type] = backend.gpu_hour_price
    options = [_option(c, c.gpus_per_replica, gpu_price[c.gpu_type]) for c in entry.dedicated]
    current, current_option = _current(deployed, entry, prices)
    batch = entry.batch
    model_config = config.models.get(model)
    if model_config is not None and model_config.batch is not None:  # the provider batch it actually uses
        batch = _config_prices(config.backends[model_config.batch].prices, model_config.batch, today)
    if current_option is not None and current_option not in options:
        options.append(current_option)
    return Workload(
        name=name,
        model=model,
        needs=needs,
        serverless=prices["serverless"],
        dedicated_serverless=prices["dedicated_serverless"],
        batch=batch,
        options=tuple(options),
        current=current,
        utilization_cap=config.advisor.utilization_cap,
        autoscaling=config.advisor.autoscaling,
        mix=config.advisor.mix,
        purchases=_purchases(catalog),
    )


def _purchases(
    catalog: Catalog,
) -> dict[str, tuple[tuple[buying.CommittedPrice, ...], buying.SpotPrice | None]]:
    """Per GPU type, the catalog's committed terms and spot price (where public, dated and sourced)."""
    out = {}
    for gpu, price in catalog.gpus.items():
        committed = tuple(
            buying.CommittedPrice(t.term_days, t.gpu_hour_usd, f"{t.source} (as of {t.as_of})")
            for t in price.committed
        )
        spot = price.spot
        on_spot = (
            buying.SpotPrice(
                spot.gpu_hour_usd,
                spot.interruptions_per_day,
                spot.recovery_min,
                f"{spot.source} (as of {spot.as_of})",
            )
            if spot
            else None
        )
        if committed or on_spot:
            out[gpu] = (committed, on_spot)
    return out


def _current(
    deployed: Deployments, entry: ModelEntry, prices: dict[str, TokenPrices | None]
) -> tuple[CurrentSetup | None, DedicatedOption | None]:
    """The configured setup: the first dedicated backend's replicas, then the first per-token deployment."""
    per_token_kind = deployed.per_token[0][1].kind if deployed.per_token else None
    per_token = prices[per_token_kind] if per_token_kind else None
    if not deployed.dedicated:
        if per_token_kind is None:
            return None, None
        return CurrentSetup(None, 0, per_token, per_token_kind), None
    _, backend = deployed.dedicated[0]
    assert backend.gpu_type is not None
    assert backend.gpus_per_replica is not None
    assert backend.gpu_hour_price is not None
    same_gpu = [c for c in entry.dedicated if c.gpu_type == backend.gpu_type]
    if not same_gpu:
        return None, None  # no capacity figure for this GPU type: the current cost cannot be replayed
    option = _option(same_gpu[0], backend.gpus_per_replica, backend.gpu_hour_price)
    replicas = sum(b.replicas or 0 for _, b in deployed.dedicated if b.gpu_type == backend.gpu_type)
    return CurrentSetup(option, replicas, per_token, per_token_kind), option


@dataclass(frozen=True, slots=True)
class BusyMinute:
    """What a dedicated backend served in one minute, and how busy its slots were."""

    prompt: float
    cached: float
    completion: float
    slot_utilization: float  # busy slot-time over (max_concurrency × replicas × provisioned time)
    replica_seconds: float  # replicas × provisioned seconds in the minute


def calibrated(
    option: DedicatedOption, minutes: Sequence[BusyMinute], utilization_cap: float
) -> DedicatedOption:
    """The option with its capacity scaled to what was measured, when enough busy minutes were seen.

    A backend's ``max_concurrency`` is the load its SLA allows, so full slots mean its usable capacity
    (``utilization_cap`` of full) is in use: capacity = served / (slot utilization × replica time) / cap.
    """
    factors = [
        option.load_of(m.prompt, m.cached, m.completion)
        / (m.slot_utilization * m.replica_seconds)
        / utilization_cap
        for m in minutes
        if m.slot_utilization >= MIN_CALIBRATION_UTILIZATION and m.replica_seconds > 0 and m.completion > 0
    ]
    if len(factors) < MIN_CALIBRATION_MINUTES:
        return option
    factor = statistics.median(factors)
    return replace(
        option,
        input_tokens_per_s=option.input_tokens_per_s * factor,
        output_tokens_per_s=option.output_tokens_per_s * factor,
        capacity_source=f"measured: {factor:.2f} × {option.capacity_source} ({len(factors)} busy minutes)",
    )


def catalog_capacity(config: TokenyardConfig, catalog: Catalog) -> dict[str, CapacityEstimate]:
    """Per dedicated backend, the catalog's capacity for its model on its GPU (scaled to its GPUs) at the
    utilization cap: the figure desired replicas fall back to before anything was measured."""
    cap = config.advisor.utilization_cap
    out: dict[str, CapacityEstimate] = {}
    for name, backend in config.backends.items():
        if backend.kind != "dedicated" or backend.gpus_per_replica is None or backend.gpu_hour_price is None:
            continue
        model = next((m for m, section in config.models.items() if name in section.deployments), None)
        if model is None:
            continue
        entry = catalog.model(config.advisor.needs(model).catalog_model or model)
        same_gpu = [c for c in entry.dedicated if c.gpu_type == backend.gpu_type] if entry else []
        if not same_gpu:
            continue
        option = _option(same_gpu[0], backend.gpus_per_replica, backend.gpu_hour_price)
        out[name] = CapacityEstimate(
            output_tokens_per_s=option.output_tokens_per_s * cap,
            input_tokens_per_s=option.input_tokens_per_s * cap,
            cached_input_work=option.cached_input_work,
            source=f"{option.capacity_source} figure for {option.label} × utilization cap {cap:g}",
        )
    return out


def deployed_options(config: TokenyardConfig, catalog: Catalog, model: str) -> list[DedicatedOption]:
    """One replica shape per GPU type the model's dedicated backends run on, where the catalog has a
    capacity for the model on it (in the config's order; the backend's GPUs and price)."""
    entry = catalog.model(config.advisor.needs(model).catalog_model or model)
    out: list[DedicatedOption] = []
    seen: set[str] = set()
    for _, backend in _deployments(config, model).dedicated:
        if backend.gpu_type is None or backend.gpu_type in seen or entry is None:
            continue
        same_gpu = [c for c in entry.dedicated if c.gpu_type == backend.gpu_type]
        if same_gpu and backend.gpus_per_replica and backend.gpu_hour_price:
            seen.add(backend.gpu_type)
            out.append(_option(same_gpu[0], backend.gpus_per_replica, backend.gpu_hour_price))
    return out


def first_dedicated(config: TokenyardConfig, model: str) -> str | None:
    """The name of the dedicated backend whose replicas are the model's current setup (``_current``)."""
    dedicated = _deployments(config, model).dedicated
    return dedicated[0][0] if dedicated else None


def from_envelope(option: DedicatedOption, capacity: Capacity) -> DedicatedOption:
    """The option with the capacity its measured envelope shows at the SLA.

    The envelope measures output (decode) tokens/s per replica at the largest concurrency that meets the
    SLA, under the backend's real mix of prompts: their prefill is already in that figure, so the option
    counts completion tokens alone (``prompts_included``; adding the catalog's prefill load on top would
    pay for the prompts twice), as the desired replicas do. The SLA is in the measurement, so no
    utilization cap is applied on top (``utilization_cap`` 1.0).
    """
    return replace(
        option,
        output_tokens_per_s=capacity.aggregate_tokens_per_s,
        capacity_source=capacity.describe(),
        utilization_cap=1.0,
        prompts_included=True,
    )
