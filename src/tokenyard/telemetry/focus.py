"""FOCUS 1.2 cost rows from the meter's aggregates (pure): what a FinOps tool imports.

FOCUS, the FinOps Open Cost and Usage Specification (https://focus.finops.org), is the column set cost tools
read from any provider. tokenyard writes one row per hour x tenant x model x backend x kind x mode x meter:

- per-token backends: a row per token meter (input, cached input, output), priced per 1M tokens, which add
  up to the stored cost exactly. Where they do not (a price changed in the window, the backend left the
  config) the key's tokens are one ``Tokens`` row at their blended price instead.
- dedicated backends: GPU time. Each hour's stored GPU cost is split into the busy share (busy slot-time
  over ``max_concurrency`` x replica-time) and the idle rest, two rows apart, each attributed to the hour's
  users by their share of the backend's tokens, as the usage API attributes it. An hour nobody used the
  backend is idle, under tenant and model ``(idle)``. Its tokens cost nothing more, so they get no rows.

Costs are the meter's integer pico-USD, split with largest remainders, so the rows add up to the usage API's
``granularity=hour`` figures exactly, per tenant too. BilledCost = EffectiveCost = ListCost = ContractedCost:
the configured prices are list and contract both, and there are no commitments or credits. What async
traffic saved against real-time prices is the tag ``tokenyard/async_savings_usd`` on its first row.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, NamedTuple

import orjson

from tokenyard.config import BackendConfig, TokenyardConfig
from tokenyard.meter.model import AggKey, GpuKey
from tokenyard.meter.pricing import gpu_hour_pusd, token_prices
from tokenyard.telemetry.report import IDLE, async_saving_pusd

FOCUS_VERSION = "1.2"
HOUR_S = 3600
TAG_PREFIX = "tokenyard/"  # every tag tokenyard sets is provider-defined, so it is prefixed (FOCUS: Tags)

ColumnType = Literal["string", "decimal", "datetime", "json"]
FocusValue = str | Decimal | datetime | None
FocusRow = dict[str, FocusValue]


class Column(NamedTuple):
    """A FOCUS column tokenyard writes, and the FOCUS data type of its values."""

    name: str
    type: ColumnType


# The 21 columns FOCUS 1.2 makes mandatory, those it recommends that apply, and the conditional ones that
# apply to a proxy (sub account = tenant, resource = backend, SKU = a backend's meter), alphabetically as the
# spec allows. Region columns are present and null: tokenyard does not know where a backend runs.
COLUMNS: tuple[Column, ...] = (
    Column("BilledCost", "decimal"),
    Column("BillingAccountId", "string"),
    Column("BillingAccountName", "string"),
    Column("BillingCurrency", "string"),
    Column("BillingPeriodEnd", "datetime"),
    Column("BillingPeriodStart", "datetime"),
    Column("ChargeCategory", "string"),
    Column("ChargeClass", "string"),
    Column("ChargeDescription", "string"),
    Column("ChargeFrequency", "string"),
    Column("ChargePeriodEnd", "datetime"),
    Column("ChargePeriodStart", "datetime"),
    Column("ConsumedQuantity", "decimal"),
    Column("ConsumedUnit", "string"),
    Column("ContractedCost", "decimal"),
    Column("ContractedUnitPrice", "decimal"),
    Column("EffectiveCost", "decimal"),
    Column("InvoiceIssuerName", "string"),
    Column("ListCost", "decimal"),
    Column("ListUnitPrice", "decimal"),
    Column("PricingCategory", "string"),
    Column("PricingQuantity", "decimal"),
    Column("PricingUnit", "string"),
    Column("ProviderName", "string"),
    Column("PublisherName", "string"),
    Column("RegionId", "string"),
    Column("RegionName", "string"),
    Column("ResourceId", "string"),
    Column("ResourceName", "string"),
    Column("ResourceType", "string"),
    Column("ServiceCategory", "string"),
    Column("ServiceName", "string"),
    Column("ServiceSubcategory", "string"),
    Column("SkuId", "string"),
    Column("SkuMeter", "string"),
    Column("SkuPriceId", "string"),
    Column("SubAccountId", "string"),
    Column("SubAccountName", "string"),
    Column("Tags", "json"),
)

_SERVICE_NAMES = {
    "serverless": "Serverless inference",
    "dedicated_serverless": "Dedicated serverless inference",
    "dedicated": "Dedicated inference",
    "batch": "Batch inference",
}
_PER_1M = "1000000 Tokens"
_GPU_HOURS = "GPU-Hours"
_MS_PER_HOUR = 3_600_000
_PICO = Decimal("1e-12")  # the finest figure written: a pico-USD, a pico-GPU-hour


class Meter(NamedTuple):
    """A SKU meter of a backend: how its ``SkuId`` ends, and its display name (``SkuMeter``)."""

    sku: str
    name: str


INPUT = Meter("input-tokens", "Input Tokens")
CACHED_INPUT = Meter("cached-input-tokens", "Cached Input Tokens")
CACHE_WRITE_INPUT = Meter("cache-write-input-tokens", "Cache Write Input Tokens")
OUTPUT = Meter("output-tokens", "Output Tokens")
TOKENS = Meter("tokens", "Tokens")  # blended: the token meters did not add up to the stored cost
GPU_TIME = Meter("gpu-time", "GPU Time")  # busy or idle: the same GPU-hours (the tag gpu_time says which)


@dataclass(frozen=True, slots=True)
class Charge:
    """One row's facts, before they are spelled as FOCUS columns."""

    hour: int  # unix seconds at the hour's start
    key: AggKey  # minute: the hour; tenant and model IDLE for GPU time nobody used
    meter: Meter
    cost_pusd: int
    quantity: Decimal  # ConsumedQuantity, in ``unit`` (ConsumedUnit)
    unit: str
    pricing_quantity: Decimal  # in ``pricing_unit``, what ``unit_price_usd`` is the price of
    pricing_unit: str
    unit_price_usd: Decimal
    description: str
    tags: dict[str, str] = field(default_factory=dict)


def hour_window(start: float, end: float) -> tuple[int, int]:
    """An export's span in whole hours: from the hour ``start`` falls in to the first not before ``end``
    (a FOCUS tool re-importing an hour replaces it whole, so a part of one would read as a change)."""
    return int(start) // HOUR_S * HOUR_S, math.ceil(end / HOUR_S) * HOUR_S


def focus_rows(
    aggregates: Iterable[tuple[AggKey, Mapping[str, int]]],
    gpu: Iterable[tuple[GpuKey, Mapping[str, int]]],
    config: TokenyardConfig,
    *,
    account: str = "tokenyard",
) -> list[FocusRow]:
    """The FOCUS rows of the stored aggregates and GPU accruals (read over whole hours), in time order."""
    hourly: dict[AggKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    savings: dict[AggKey, int] = defaultdict(int)
    for key, fields in aggregates:
        hour_key = key._replace(minute=key.minute // HOUR_S * HOUR_S)
        for name in (
            "prompt_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "completion_tokens",
            "cost_pusd",
            "latency_ms",
        ):
            hourly[hour_key][name] += fields.get(name, 0)
        savings[hour_key] += async_saving_pusd(key, fields, config)
    charges = [c for key, fields in hourly.items() for c in token_charges(key, fields, config.backends)]
    charges += gpu_charges(hourly, gpu, config.backends)
    charges.sort(key=lambda c: (c.hour, c.key, c.meter.sku, c.tags.get(f"{TAG_PREFIX}gpu_time", "")))
    tagged: set[AggKey] = set()
    for charge in charges:  # each key's saving on its first row, so the tags add up to the usage API's
        if charge.key.mode == "async" and charge.key not in tagged:
            tagged.add(charge.key)
            charge.tags[f"{TAG_PREFIX}async_savings_usd"] = _plain(usd(savings[charge.key]))
    return [_row(charge, account) for charge in charges]


def token_charges(
    key: AggKey, fields: Mapping[str, int], backends: Mapping[str, BackendConfig]
) -> list[Charge]:
    """The token rows of one hour's aggregate: a row per token meter, or one blended row."""
    cost = fields.get("cost_pusd", 0)
    prompt, completion = fields.get("prompt_tokens", 0), fields.get("completion_tokens", 0)
    cached = min(fields.get("cached_tokens", 0), prompt)
    written = min(fields.get("cache_write_tokens", 0), prompt - cached)
    if key.kind == "dedicated" and not cost:  # it costs GPU time, its own rows
        return []
    if not (prompt or completion or cost):
        return []
    backend = backends.get(key.backend)
    if backend is not None:
        prices = token_prices(backend)
        meters = (
            (INPUT, prompt - cached - written, prices.input_pusd),
            (CACHED_INPUT, cached, prices.cached_input_pusd),
            (CACHE_WRITE_INPUT, written, prices.cache_write_input_pusd),
            (OUTPUT, completion, prices.output_pusd),
        )
        if sum(tokens * price for _, tokens, price in meters) == cost:
            return [
                _token_charge(key, meter, tokens, tokens * price, Decimal(price).scaleb(-6))
                for meter, tokens, price in meters
                if tokens
            ]
    tokens = prompt + completion
    per_1m = (Decimal(cost) / tokens).scaleb(-6).quantize(_PICO) if tokens else Decimal(0)
    return [_token_charge(key, TOKENS, tokens, cost, per_1m)]


def _token_charge(key: AggKey, meter: Meter, tokens: int, cost_pusd: int, usd_per_1m: Decimal) -> Charge:
    return Charge(
        hour=key.minute,
        key=key,
        meter=meter,
        cost_pusd=cost_pusd,
        quantity=Decimal(tokens),
        unit="Tokens",
        pricing_quantity=Decimal(tokens).scaleb(-6),
        pricing_unit=_PER_1M,
        unit_price_usd=usd_per_1m,
        description=f"{meter.name} of {key.model} on {key.backend} ({key.kind}, {key.mode})",
    )


def gpu_charges(
    hourly: Mapping[AggKey, Mapping[str, int]],
    gpu: Iterable[tuple[GpuKey, Mapping[str, int]]],
    backends: Mapping[str, BackendConfig],
) -> list[Charge]:
    """The GPU-time rows: per hour and dedicated backend, busy and idle apart, attributed by token share."""
    accrued: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])  # gpu_ms, cost_pusd
    for gkey, fields in gpu:
        totals = accrued[(gkey.minute // HOUR_S * HOUR_S, gkey.backend)]
        totals[0] += fields.get("gpu_ms", 0)
        totals[1] += fields.get("cost_pusd", 0)
    users: dict[tuple[int, str], list[tuple[AggKey, int]]] = defaultdict(list)
    busy_ms: dict[tuple[int, str], int] = defaultdict(int)
    for key, fields in sorted(hourly.items()):
        tokens = fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0)
        if tokens:
            users[(key.minute, key.backend)].append((key, tokens))
        busy_ms[(key.minute, key.backend)] += fields.get("latency_ms", 0)
    charges = []
    for (hour, name), (gpu_ms, cost) in sorted(accrued.items()):
        if not cost:
            continue
        backend = backends.get(name)
        who = users.get((hour, name))
        if not who:
            idle = AggKey(hour, IDLE, IDLE, name, "dedicated", "realtime")
            charges.append(_gpu_charge(idle, "idle", cost, gpu_ms, backend))
            continue
        busy_idle = _busy_weights(busy_ms[(hour, name)], gpu_ms, backend)
        used_cost, idle_cost = split(cost, busy_idle)
        used_ms, idle_ms = split(gpu_ms, busy_idle)
        weights = [tokens for _, tokens in who]
        for state, state_cost, state_ms in (("used", used_cost, used_ms), ("idle", idle_cost, idle_ms)):
            for (key, _), share_cost, share_ms in zip(
                who, split(state_cost, weights), split(state_ms, weights), strict=True
            ):
                if share_cost:
                    charges.append(_gpu_charge(key, state, share_cost, share_ms, backend))
    return charges


def _busy_weights(busy_ms: int, gpu_ms: int, backend: BackendConfig | None) -> tuple[int, int]:
    """Weights of the busy and idle shares of an hour's GPU time: busy slot-time against max_concurrency x
    replica-time (all busy when the config no longer says what the backend's capacity is)."""
    if backend is None or not backend.max_concurrency or not gpu_ms:
        return 1, 0
    capacity = backend.max_concurrency * gpu_ms  # slot-ms, times GPUs per replica (so it stays an integer)
    busy = min(busy_ms * (backend.gpus_per_replica or 1), capacity)
    return busy, capacity - busy


def _gpu_charge(
    key: AggKey, state: str, cost_pusd: int, gpu_ms: int, backend: BackendConfig | None
) -> Charge:
    price_pusd = gpu_hour_pusd(backend) if backend is not None else 0
    # GPU-hours from the cost at the configured price, so quantity x unit price is the cost (to a pico-USD);
    # from the accrued milliseconds where the backend has left the config.
    if price_pusd:
        hours = (Decimal(cost_pusd) / price_pusd).quantize(_PICO)
        price = Decimal(price_pusd).scaleb(-12)
    else:
        hours = (Decimal(gpu_ms) / _MS_PER_HOUR).quantize(_PICO)
        price = (Decimal(cost_pusd).scaleb(-12) / hours).quantize(_PICO) if hours else Decimal(0)
    gpu_type = f" ({backend.gpu_type})" if backend is not None and backend.gpu_type else ""
    what = "in use" if state == "used" else "provisioned, idle"
    whose = "unused by any tenant" if key.tenant == IDLE else f"{key.tenant}'s share by tokens"
    return Charge(
        hour=key.minute,
        key=key,
        meter=GPU_TIME,
        cost_pusd=cost_pusd,
        quantity=hours,
        unit=_GPU_HOURS,
        pricing_quantity=hours,
        pricing_unit=_GPU_HOURS,
        unit_price_usd=price,
        description=f"GPU time {what} on dedicated backend {key.backend}{gpu_type}, {whose}",
        tags={f"{TAG_PREFIX}gpu_time": state},
    )


def split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` in whole units that add up to it exactly (largest
    remainders; ties to the first). All of it goes to the first share if the weights are all 0."""
    whole = sum(weights)
    if not whole:
        return [total, *([0] * (len(weights) - 1))]
    shares = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def usd(pusd: int) -> Decimal:
    """Pico-USD as an exact decimal of USD."""
    return Decimal(pusd).scaleb(-12)


def _plain(value: Decimal) -> str:
    """A decimal in plain notation, without trailing zeros (never ``1E-7``)."""
    return format(value.normalize(), "f") if value else "0"


def _row(charge: Charge, account: str) -> FocusRow:
    key, cost = charge.key, usd(charge.cost_pusd)
    start = datetime.fromtimestamp(charge.hour, UTC)
    month = start.replace(day=1, hour=0)
    next_month = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
    tenant = None if key.tenant == IDLE else key.tenant
    sku = f"{key.backend}/{charge.meter.sku}"
    tags = {
        f"{TAG_PREFIX}tenant": key.tenant,
        f"{TAG_PREFIX}model": key.model,
        f"{TAG_PREFIX}mode": key.mode,
        f"{TAG_PREFIX}backend_kind": key.kind,
        **({f"{TAG_PREFIX}key": key.key} if key.key else {}),  # its config name or its id, never its secret
        **({f"{TAG_PREFIX}team": key.team} if key.team else {}),
        **charge.tags,
    }
    return {
        "BilledCost": cost,
        "BillingAccountId": account,
        "BillingAccountName": account,
        "BillingCurrency": "USD",
        "BillingPeriodEnd": next_month,
        "BillingPeriodStart": month,
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeDescription": charge.description,
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": datetime.fromtimestamp(charge.hour + HOUR_S, UTC),
        "ChargePeriodStart": start,
        "ConsumedQuantity": charge.quantity,
        "ConsumedUnit": charge.unit,
        "ContractedCost": cost,
        "ContractedUnitPrice": charge.unit_price_usd,
        "EffectiveCost": cost,
        "InvoiceIssuerName": "tokenyard",
        "ListCost": cost,
        "ListUnitPrice": charge.unit_price_usd,
        "PricingCategory": "Standard",
        "PricingQuantity": charge.pricing_quantity,
        "PricingUnit": charge.pricing_unit,
        "ProviderName": "tokenyard",
        "PublisherName": "tokenyard",
        "RegionId": None,
        "RegionName": None,
        "ResourceId": key.backend,
        "ResourceName": key.backend,
        "ResourceType": f"{_SERVICE_NAMES.get(key.kind, 'Inference')} backend",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": _SERVICE_NAMES.get(key.kind, "Inference"),
        "ServiceSubcategory": "Generative AI",
        "SkuId": sku,
        "SkuMeter": charge.meter.name,
        "SkuPriceId": f"{sku}@{_plain(charge.unit_price_usd)}",
        "SubAccountId": tenant,
        "SubAccountName": tenant,
        "Tags": orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode(),
    }
