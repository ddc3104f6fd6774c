"""The FOCUS export: cost rows a FinOps tool can import, in FOCUS 1.2's columns and types, whose costs add up
to the usage API's totals (per tenant too), from the admin API and from the CLI, as CSV and as Parquet.

The column rules checked here are written from the FOCUS 1.2 specification itself
(FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec, tag v1.2: specification/columns/*.md and attributes/*.md), not
from tokenyard's own column list.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.async_track import HELLO, MODEL, config_for, poll, post
from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, run_cli, running_proxy
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import ProxyStore, sqlite_url
from tokenyard.config import TokenyardConfig
from tokenyard.errors import OptionalDependencyMissing
from tokenyard.meter.model import AggKey, GpuKey
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer
from tokenyard.telemetry import report
from tokenyard.telemetry.focus import focus_rows, hour_window, split
from tokenyard.telemetry.focus_files import format_of, to_csv, to_parquet
from tokenyard.wire.asgi import error_response_parts

# -- FOCUS 1.2, as its specification states it ----------------------------------------------------------

# Every column FOCUS 1.2 makes Mandatory, with its data type and whether it allows nulls.
MANDATORY: dict[str, tuple[str, bool]] = {
    "BilledCost": ("Decimal", False),
    "BillingAccountId": ("String", False),
    "BillingAccountName": ("String", True),
    "BillingCurrency": ("String", False),
    "BillingPeriodEnd": ("Date/Time", False),
    "BillingPeriodStart": ("Date/Time", False),
    "ChargeCategory": ("String", False),
    "ChargeClass": ("String", True),
    "ChargeDescription": ("String", True),
    "ChargePeriodEnd": ("Date/Time", False),
    "ChargePeriodStart": ("Date/Time", False),
    "ContractedCost": ("Decimal", False),
    "EffectiveCost": ("Decimal", False),
    "InvoiceIssuerName": ("String", False),
    "ListCost": ("Decimal", False),
    "PricingQuantity": ("Decimal", True),
    "PricingUnit": ("String", True),
    "ProviderName": ("String", False),
    "PublisherName": ("String", False),
    "ServiceCategory": ("String", False),
    "ServiceName": ("String", False),
}
# The Recommended and Conditional columns that apply to a usage-metering proxy, likewise.
APPLICABLE: dict[str, tuple[str, bool]] = {
    "ChargeFrequency": ("String", False),
    "ConsumedQuantity": ("Decimal", True),
    "ConsumedUnit": ("String", True),
    "ContractedUnitPrice": ("Decimal", True),
    "ListUnitPrice": ("Decimal", True),
    "PricingCategory": ("String", True),
    "RegionId": ("String", True),
    "RegionName": ("String", True),
    "ResourceId": ("String", True),
    "ResourceName": ("String", True),
    "ResourceType": ("String", True),
    "ServiceSubcategory": ("String", False),
    "SkuId": ("String", True),
    "SkuMeter": ("String", True),
    "SkuPriceId": ("String", True),
    "SubAccountId": ("String", True),
    "SubAccountName": ("String", True),
    "Tags": ("JSON", True),
}
SPEC = {**MANDATORY, **APPLICABLE}
CHARGE_CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
CHARGE_FREQUENCIES = {"One-Time", "Recurring", "Usage-Based"}
AI_SUBCATEGORIES = {
    "AI Platforms",
    "Bots",
    "Generative AI",
    "Machine Learning",
    "Natural Language Processing",
    "Other (AI and Machine Learning)",
}
# Numeric Format: an integer, a decimal, or E notation with no "+" on the exponent; no sign on positives,
# no commas, no units. Date/Time Format: 'YYYY-MM-DDTHH:mm:ssZ'. Currency Format: ISO 4217.
NUMERIC = re.compile(r"^-?\d+(\.\d+)?(E-?\d+)?$")
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# tokenyard writes plain decimals: a FinOps tool reading "1.5E-7" as text would misread it.
PLAIN_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
# Unit Format: "Tokens", "GPU-Hours", "1000000 Tokens" (a whole-number quantity, capitalised units).
UNIT = re.compile(r"^(\d+ )?[A-Z][A-Za-z]*(-[A-Z][a-z]+)?$")
PRODUCT_TOLERANCE_USD = Decimal("1e-9")  # unit price x quantity against cost (GPU-hours are rounded)


def when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_focus_csv(text: str) -> list[dict[str, str | None]]:
    """Check FOCUS 1.2's column rules on a CSV export; its rows, nulls as None."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    assert set(MANDATORY) <= set(header), set(MANDATORY) - set(header)
    assert set(APPLICABLE) <= set(header)
    focus_columns = [name for name in header if not name.startswith("x_")]
    assert header[: len(focus_columns)] == focus_columns  # custom columns (if any) after FOCUS's
    rows = [{name: value or None for name, value in row.items()} for row in reader]
    for row in rows:
        assert_focus_row(row)
    return rows


def assert_focus_row(row: Mapping[str, str | None]) -> None:
    """Check one row against FOCUS 1.2's rules for its values and columns."""
    assert_values_formatted(row)
    assert_column_rules(row)
    assert_usage_priced(row)
    # The charge period is one whole hour, inside its billing period.
    start, end = when(row["ChargePeriodStart"] or ""), when(row["ChargePeriodEnd"] or "")
    assert start.minute == start.second == 0
    assert end - start == timedelta(hours=1)
    assert when(row["BillingPeriodStart"] or "") <= start < end <= when(row["BillingPeriodEnd"] or "")


def assert_values_formatted(row: Mapping[str, str | None]) -> None:
    """Null Handling, Numeric, Date/Time and Key-Value Format, and each column's nullability."""
    for name, (data_type, nullable) in SPEC.items():
        value = row[name]
        if value is None:
            assert nullable, f"{name} may not be null"
            continue
        assert value.strip(), f"{name}: an empty string stands for a null"
        if data_type == "Decimal":
            assert NUMERIC.match(value), f"{name}={value!r}"
            assert PLAIN_DECIMAL.match(value), f"{name}={value!r}"
        elif data_type == "Date/Time":
            assert DATETIME.match(value), f"{name}={value!r}"
        elif data_type == "JSON":
            tags = json.loads(value)
            assert isinstance(tags, dict)
            assert all(isinstance(v, str | int | float | bool) or v is None for v in tags.values())
            assert all(key.startswith("tokenyard/") for key in tags)  # provider-defined: prefixed
    for unit in ("ConsumedUnit", "PricingUnit"):
        assert row[unit] is None or UNIT.match(row[unit] or ""), row[unit]


def assert_column_rules(row: Mapping[str, str | None]) -> None:
    """Allowed values, and the columns that go together."""
    assert row["ChargeCategory"] in CHARGE_CATEGORIES
    assert row["ChargeClass"] in (None, "Correction")
    assert row["ChargeFrequency"] in CHARGE_FREQUENCIES
    assert row["ServiceCategory"] == "AI and Machine Learning"
    assert row["ServiceSubcategory"] in AI_SUBCATEGORIES  # each has that one parent category
    assert row["BillingCurrency"] == "USD"
    # With no commitments, discounts or credits, every cost column is the billed cost.
    assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
    # A unit goes with its quantity: both null or neither.
    assert (row["ConsumedQuantity"] is None) == (row["ConsumedUnit"] is None)
    assert (row["PricingQuantity"] is None) == (row["PricingUnit"] is None)


def assert_usage_priced(row: Mapping[str, str | None]) -> None:
    """A usage row (not a correction) has its quantities, SKU and unit prices, and unit price x pricing
    quantity is its cost."""
    if row["ChargeCategory"] != "Usage" or row["ChargeClass"] is not None:
        return
    for name in ("ConsumedQuantity", "PricingQuantity", "ListUnitPrice", "ContractedUnitPrice"):
        assert row[name] is not None, f"{name} may not be null on a usage row"
    for name in ("SkuId", "SkuPriceId", "PricingCategory"):
        assert row[name] is not None, f"{name} may not be null on a usage row"
    quantity = Decimal(row["PricingQuantity"] or "")
    for price, cost in (("ListUnitPrice", "ListCost"), ("ContractedUnitPrice", "ContractedCost")):
        assert Decimal(row[price] or "") >= 0
        product = Decimal(row[price] or "") * quantity
        assert abs(product - Decimal(row[cost] or "")) <= PRODUCT_TOLERANCE_USD, (price, row)


def tags(row: Mapping[str, Any]) -> dict[str, Any]:
    value = row["Tags"]
    return dict(json.loads(value)) if value else {}


def cost_by_tenant(rows: Sequence[Mapping[str, Any]], column: str = "BilledCost") -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        out[tags(row)["tokenyard/tenant"]] += Decimal(str(row[column]))
    return dict(out)


# -- the rows, from hand-made aggregates ---------------------------------------------------------------

HOUR = 1_800_000_000 // 3600 * 3600
PUSD_PER_GPU_HOUR = 2_500_000_000_000  # $2.50


def config() -> TokenyardConfig:
    return TokenyardConfig.model_validate(
        {
            "backends": {
                "api": {
                    "kind": "serverless",
                    "base_url": "http://127.0.0.1:9/v1",
                    "prices": {"input_per_1m": 0.15, "cached_input_per_1m": 0.075, "output_per_1m": 0.6},
                },
                "ded": {
                    "kind": "dedicated",
                    "base_url": "http://127.0.0.1:9/v1",
                    "gpu_type": "H100",
                    "gpus_per_replica": 2,
                    "replicas": 1,
                    "gpu_hour_price": 2.5,
                    "max_concurrency": 4,
                },
                "prov": {
                    "kind": "batch",
                    "base_url": "http://127.0.0.1:9/v1",
                    "prices": {"input_per_1m": 0.075, "output_per_1m": 0.3},
                },
            },
            "models": {"m": {"deployments": ["ded", "api"], "batch": "prov"}},
        }
    )


def key(minute: int, tenant: str, backend: str, mode: str = "realtime") -> AggKey:
    kind = {"api": "serverless", "ded": "dedicated", "prov": "batch"}[backend]
    return AggKey(HOUR + minute * 60, tenant, "m", backend, kind, mode)


def gpu_minute(minute: int, gpu_ms: int) -> tuple[GpuKey, dict[str, int]]:
    return GpuKey(HOUR + minute * 60, "ded"), {
        "gpu_ms": gpu_ms,
        "wall_ms": gpu_ms // 2,
        "cost_pusd": gpu_ms * PUSD_PER_GPU_HOUR // 3_600_000,
    }


AGGREGATES: list[tuple[AggKey, dict[str, int]]] = [
    # 100 prompt tokens (40 of them cached) and 10 output tokens on the serverless API
    (
        key(1, "a", "api"),
        {"prompt_tokens": 100, "cached_tokens": 40, "completion_tokens": 10, "cost_pusd": 18_000_000},
    ),
    (key(2, "a", "api"), {"prompt_tokens": 7, "completion_tokens": 3, "cost_pusd": 2_850_000}),
    # the dedicated backend, used by two tenants 30:10 by tokens, busy 1.5 s of its slot-time
    (key(3, "b", "ded"), {"prompt_tokens": 20, "completion_tokens": 10, "latency_ms": 1000}),
    (key(4, "a", "ded", "async"), {"prompt_tokens": 10, "latency_ms": 500}),
    # an async job at the batch price
    (key(5, "b", "prov", "async"), {"prompt_tokens": 10, "completion_tokens": 5, "cost_pusd": 2_250_000}),
    # an error: nothing used, nothing billed
    (key(6, "b", "api"), {"requests": 1, "errors": 1}),
]
# Two minutes provisioned in the first hour, one in the next (when nobody used the backend).
GPU = [gpu_minute(1, 120_000), gpu_minute(2, 120_000), gpu_minute(61, 60_000)]


def csv_rows() -> list[dict[str, str | None]]:
    return assert_focus_csv(to_csv(focus_rows(AGGREGATES, GPU, config())))


def test_a_per_token_aggregate_is_a_row_per_token_meter_that_adds_up_to_its_cost() -> None:
    rows = [r for r in csv_rows() if r["ResourceId"] == "api"]
    assert [(r["SkuMeter"], r["ConsumedQuantity"], r["ListUnitPrice"], r["BilledCost"]) for r in rows] == [
        ("Cached Input Tokens", "40", "0.075", "0.000003"),
        ("Input Tokens", "67", "0.15", "0.00001005"),
        ("Output Tokens", "13", "0.6", "0.0000078"),
    ]
    assert {r["PricingUnit"] for r in rows} == {"1000000 Tokens"}
    assert {r["ConsumedUnit"] for r in rows} == {"Tokens"}
    assert sum(Decimal(r["BilledCost"] or "") for r in rows) == Decimal("0.00002085")  # as stored
    assert rows[1]["SkuId"] == "api/input-tokens"
    assert rows[1]["SkuPriceId"] == "api/input-tokens@0.15"
    assert [r["ChargePeriodStart"] for r in rows] == ["2027-01-15T08:00:00Z"] * 3
    assert rows[0]["BillingPeriodStart"] == "2027-01-01T00:00:00Z"
    assert rows[0]["BillingPeriodEnd"] == "2027-02-01T00:00:00Z"
    assert rows[0]["SubAccountId"] == "a"
    assert tags(rows[0]) == {
        "tokenyard/tenant": "a",
        "tokenyard/model": "m",
        "tokenyard/mode": "realtime",
        "tokenyard/backend_kind": "serverless",
    }


def test_tokens_priced_otherwise_than_the_config_says_are_one_blended_row_at_their_stored_cost() -> None:
    repriced = [(key(1, "a", "api"), {"prompt_tokens": 3, "completion_tokens": 0, "cost_pusd": 1_000_000})]
    [row] = assert_focus_csv(to_csv(focus_rows(repriced, [], config())))
    assert (row["SkuMeter"], row["ConsumedQuantity"], row["BilledCost"]) == ("Tokens", "3", "0.000001")
    assert row["ListUnitPrice"] == "0.333333333333"  # per 1M tokens; x 0.000003 is the cost to 1e-18


def test_dedicated_gpu_time_is_busy_and_idle_rows_attributed_by_token_share() -> None:
    rows = [r for r in csv_rows() if r["ResourceId"] == "ded"]
    first_hour = [r for r in rows if r["ChargePeriodStart"] == "2027-01-15T08:00:00Z"]
    by_state = defaultdict(Decimal)
    for row in first_hour:
        by_state[(tags(row)["tokenyard/tenant"], tags(row)["tokenyard/gpu_time"])] += Decimal(
            row["BilledCost"] or ""
        )
    # $2.50 an hour for 240 GPU-seconds: $0.1666…; busy 1.5 s x 2 GPUs of 4 slots x 240 s: 1/320 of it.
    hour_cost = Decimal(240_000 * PUSD_PER_GPU_HOUR // 3_600_000).scaleb(-12)
    busy = sum(v for (_, state), v in by_state.items() if state == "used")
    assert busy == pytest.approx(hour_cost / 320, abs=Decimal("1e-12"))
    assert sum(by_state.values()) == hour_cost
    # b used 30 of the 40 tokens: three quarters of the busy and of the idle time.
    for state in ("used", "idle"):
        total = by_state[("a", state)] + by_state[("b", state)]
        assert by_state[("b", state)] == pytest.approx(total * 3 / 4, abs=Decimal("1e-12"))
    assert {r["ConsumedUnit"] for r in rows} == {"GPU-Hours"}
    assert {r["ListUnitPrice"] for r in rows} == {"2.5"}
    # The next hour nobody used it: all idle, nobody's.
    [idle] = [r for r in rows if r["ChargePeriodStart"] == "2027-01-15T09:00:00Z"]
    assert tags(idle)["tokenyard/tenant"] == "(idle)"
    assert tags(idle)["tokenyard/gpu_time"] == "idle"
    assert idle["SubAccountId"] is None
    assert Decimal(idle["ConsumedQuantity"] or "") == pytest.approx(Decimal(60) / 3600, abs=Decimal("1e-12"))
    # Its tokens cost nothing more: no token rows for the dedicated backend.
    assert {r["SkuMeter"] for r in rows} == {"GPU Time"}


def test_costs_add_up_to_the_usage_api_per_tenant_and_async_savings_are_tagged() -> None:
    aggregates, gpu = AGGREGATES, GPU
    rows = focus_rows(aggregates, gpu, config())
    usage = report.summarize(aggregates, gpu, group_by=["tenant"], granularity="hour")
    expected: dict[str, float] = defaultdict(float)
    for row in usage:
        expected[row.group[0]] += row.token_cost_pusd / 1e12 + row.gpu_cost_usd
    got = cost_by_tenant(rows)
    assert set(got) == set(expected) == {"a", "b", "(idle)"}
    for tenant, cost in expected.items():
        assert float(got[tenant]) == pytest.approx(cost, abs=1e-12)
    total = report.totals(usage)["cost_usd"]
    assert float(sum(got.values())) == pytest.approx(total, abs=1e-12)
    saved = sum(Decimal(tags(r).get("tokenyard/async_savings_usd", "0")) for r in rows)
    assert float(saved) == pytest.approx(report.async_savings_usd(aggregates, config()), abs=1e-15)
    assert saved > 0
    assert all(tags(r)["tokenyard/mode"] == "async" for r in rows if "tokenyard/async_savings_usd" in tags(r))


def test_parquet_keeps_the_types_decimals_exact_and_times_in_utc() -> None:
    rows = focus_rows(AGGREGATES, GPU, config())
    table = pq.read_table(io.BytesIO(to_parquet(rows)))
    schema = table.schema
    for name, (data_type, _) in SPEC.items():
        field = schema.field(name)
        if data_type == "Decimal":
            assert pa.types.is_decimal(field.type), name
        elif data_type == "Date/Time":
            assert pa.types.is_timestamp(field.type), name
            assert field.type.tz == "UTC", name
        else:
            assert pa.types.is_string(field.type), name
    assert schema.metadata[b"focus_version"] == b"1.2"
    as_python = table.to_pylist()
    assert [r["BilledCost"] for r in as_python] == [r["BilledCost"] for r in rows]
    assert as_python[0]["ChargePeriodStart"] == datetime(2027, 1, 15, 8, tzinfo=UTC)
    assert as_python[0]["ChargeClass"] is None
    assert as_python[0]["RegionId"] is None


def test_parquet_without_pyarrow_is_a_501_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(OptionalDependencyMissing) as raised:
        to_parquet([])
    status, _, body = error_response_parts(raised.value)
    assert status == 501
    error = json.loads(body)["error"]
    assert "tokenyard[parquet]" in error["message"]
    assert error["code"] == "not_implemented"


def test_an_export_covers_whole_hours_and_names_its_format_by_suffix() -> None:
    assert hour_window(HOUR + 61, HOUR + 3600) == (HOUR, HOUR + 3600)
    assert hour_window(HOUR, HOUR + 3601) == (HOUR, HOUR + 7200)
    assert hour_window(HOUR + 0.5, HOUR + 0.5) == (HOUR, HOUR + 3600)  # the hour now is in it
    assert format_of("costs.CSV") == "csv"
    assert format_of("out/costs.parquet") == "parquet"
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        format_of("costs.xlsx")


@given(st.integers(0, 10**15), st.lists(st.integers(0, 10**9), min_size=1, max_size=8))
def test_a_split_adds_up_exactly_and_follows_the_weights(total: int, weights: list[int]) -> None:
    shares = split(total, weights)
    assert sum(shares) == total
    assert all(s >= 0 for s in shares)
    whole = sum(weights)
    if whole:
        for share, weight in zip(shares, weights, strict=True):
            assert abs(share - total * weight / whole) < 1 + total * 1e-12


# -- a known workload through the proxy ----------------------------------------------------------------

REALTIME_BURST = 16
BATCHED_MODEL = "small"  # served by the serverless API alone: its async jobs go to the provider's batch


def workload_config(sims: dict[str, SimulatorServer], store: ProxyStore) -> dict[str, Any]:
    """A dedicated replica (cap 2) spilling to a serverless API, and a provider Batch API for ``small``."""
    settings = config_for(sims, store=store.url, prefix=store.prefix, realtime_margin_s=2)
    settings["models"][BATCHED_MODEL] = {"deployments": ["api"], "batch": "prov"}
    return settings


async def run_workload(proxy: ProxyProcess) -> int:
    """Real-time traffic that spills over, async jobs on the dedicated replica and at the batch price; the
    requests made."""
    async with proxy.client(CLIENT_KEY) as client:
        answers = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=8)
                for _ in range(REALTIME_BURST)
            )
        )
    assert {a.headers["x-tokenyard-backend"] for a in answers} == {"ded", "api"}  # it spilled over
    held = [await post(proxy, {"model": MODEL, "messages": HELLO}, key=OTHER_KEY) for _ in range(2)]
    batched = [
        await post(proxy, {"model": BATCHED_MODEL, "messages": HELLO}, Prefer="respond-async")
        for _ in range(2)
    ]
    for accepted in held:
        assert (
            accepted.status_code == 200
            or (await poll(proxy, accepted.headers["location"], OTHER_KEY)).status_code == 200
        )
    done = [await poll(proxy, accepted.headers["location"]) for accepted in batched]
    assert [d.headers["x-tokenyard-path"] for d in done] == ["provider_batch"] * 2
    return REALTIME_BURST + len(held) + len(batched)


async def admin(proxy: ProxyProcess, path: str, key: str = ADMIN_KEY, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(f"{proxy.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"})


async def test_the_focus_export_of_a_known_workload_adds_up_to_the_usage_api(
    proxy_store: ProxyStore, tmp_path: Path
) -> None:
    async with (
        simulators(
            ded=SimulatorConfig(mode="dedicated", max_concurrency=4, ttft_ms=5, tokens_per_s=400),
            api=SimulatorConfig(**FAST_UPSTREAM),
            batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM),
        ) as sims,
        running_proxy(workload_config(sims, proxy_store), tmp_path) as proxy,
    ):
        requests = await run_workload(proxy)

        async def all_metered() -> None:
            usage = (await admin(proxy, "/admin/usage", start="2h", granularity="total")).json()
            assert usage["totals"]["requests"] == requests

        await eventually(all_metered, timeout_s=20)
        # The dedicated backend scaled to nothing: its GPU cost stops growing, so the books can close.
        async with httpx.AsyncClient(timeout=10) as http:
            scaled = await http.put(
                f"{proxy.url}/admin/backends/ded/replicas",
                json={"replicas": 0},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
        assert scaled.status_code == 200, scaled.text
        # Its last GPU time is accrued at the old count, and flushed with the next batch: two flushes taken
        # after now (provisioned time grows at each, GPUs or none) and the books are closed.
        provisioned = [await provisioned_s(proxy)]

        async def flushed_twice_since() -> None:
            if (now := await provisioned_s(proxy)) > provisioned[-1]:
                provisioned.append(now)
            assert len(provisioned) >= 3

        await eventually(flushed_twice_since, timeout_s=20)
        seen: dict[str, Any] = {}

        async def closed_books() -> None:
            before = await admin(proxy, "/admin/usage", start="2h", granularity="hour", group_by="tenant")
            exported = await admin(proxy, "/admin/export/focus", start="2h")
            after = await admin(proxy, "/admin/usage", start="2h", granularity="hour", group_by="tenant")
            assert before.json()["totals"] == after.json()["totals"]  # nothing was flushed in between
            seen.update(usage=after.json(), exported=exported)

        await eventually(closed_books, timeout_s=20)
        exported, usage = seen["exported"], seen["usage"]
        assert exported.status_code == 200, exported.text
        assert exported.headers["content-type"] == "text/csv; charset=utf-8"
        assert re.match(
            r'^attachment; filename="tokenyard-focus-\d{8}T\d{4}Z-\d{8}T\d{4}Z\.csv"$',
            exported.headers["content-disposition"],
        )
        rows = assert_focus_csv(exported.text)
        assert_adds_up(rows, usage)
        assert_shows_the_workload(rows)

        # The same rows as Parquet, from the admin API and from the CLI reading the store itself.
        parquet = await admin(proxy, "/admin/export/focus", start="2h", format="parquet")
        assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
        assert parquet.headers["content-disposition"].endswith('.parquet"')
        from_api = pq.read_table(io.BytesIO(parquet.content)).to_pylist()
        assert_adds_up(from_api, usage)
        assert proxy.config_path is not None
        out = tmp_path / "costs.parquet"
        cli_args = ("export", "--config", str(proxy.config_path), "--format", "focus", "--since", "2h")
        written = await asyncio.to_thread(run_cli, *cli_args, "--out", str(out))
        assert written.returncode == 0, written.stderr
        assert f"exported {len(rows):,} FOCUS rows" in written.stderr
        assert_adds_up(pq.read_table(out).to_pylist(), usage)
        printed = await asyncio.to_thread(run_cli, *cli_args)
        assert printed.returncode == 0, printed.stderr
        assert assert_focus_csv(printed.stdout) == rows


async def provisioned_s(proxy: ProxyProcess) -> float:
    """How long the dedicated backend has been provisioned, as stored."""
    usage = (await admin(proxy, "/admin/usage", start="2h", granularity="total")).json()
    [dedicated] = usage["dedicated"]
    return float(dedicated["provisioned_hours"]) * 3600


def assert_adds_up(rows: Sequence[Mapping[str, Any]], usage: Mapping[str, Any]) -> None:
    """Every cost column sums to the usage API's total, and per tenant, to the cent (and much closer)."""
    for column in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
        total = sum(Decimal(str(row[column])) for row in rows)
        assert round(total, 2) == round(Decimal(str(usage["totals"]["cost_usd"])), 2), column
        assert float(total) == pytest.approx(usage["totals"]["cost_usd"], abs=1e-9), column
    expected: dict[str, float] = defaultdict(float)
    for row in usage["data"]:
        expected[row["tenant"]] += row["cost_usd"]
    got = cost_by_tenant(rows)
    assert set(got) == {t for t, cost in expected.items() if cost}
    for tenant, cost in got.items():
        assert round(cost, 2) == round(Decimal(str(expected[tenant])), 2), tenant
        assert float(cost) == pytest.approx(expected[tenant], abs=1e-9), tenant


def assert_shows_the_workload(rows: Sequence[Mapping[str, str | None]]) -> None:
    shown = {(tags(r)["tokenyard/tenant"], r["ResourceId"], tags(r)["tokenyard/mode"]) for r in rows}
    assert {
        ("team-a", "ded", "realtime"),
        ("team-a", "api", "realtime"),
        ("team-a", "prov", "async"),
    } <= shown
    assert any(t == "team-b" and mode == "async" for t, _, mode in shown)
    gpu = [r for r in rows if r["SkuMeter"] == "GPU Time"]
    assert {tags(r)["tokenyard/gpu_time"] for r in gpu} == {"used", "idle"}  # provisioned, shown apart
    assert {r["ConsumedUnit"] for r in gpu} == {"GPU-Hours"}
    assert {r["ConsumedUnit"] for r in rows if r not in gpu} == {"Tokens"}
    batched = [r for r in rows if r["ResourceId"] == "prov"]
    assert sum(Decimal(tags(r).get("tokenyard/async_savings_usd", "0")) for r in batched) > 0
    assert {tags(r)["tokenyard/model"] for r in rows} >= {MODEL, BATCHED_MODEL}


async def test_the_focus_export_needs_the_admin_key_and_sane_parameters(tmp_path: Path) -> None:
    async with (
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as sims,
        running_proxy(
            {
                "server": {"admin_key": ADMIN_KEY},
                "backends": {"api": {"kind": "serverless", "base_url": sims["api"].base_url}},
                "models": {MODEL: {"deployments": ["api"]}},
                "keys": {"team-a": {"key": CLIENT_KEY}},
            },
            tmp_path,
        ) as proxy,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{proxy.url}/admin/export/focus")).status_code == 401
        assert (await admin(proxy, "/admin/export/focus", key=CLIENT_KEY)).status_code == 403
        for params in ({"format": "xlsx"}, {"start": "last tuesday"}, {"start": "1h", "end": "2h"}):
            refused = await admin(proxy, "/admin/export/focus", **params)
            assert refused.status_code == 400, params
            assert refused.json()["error"]["type"] == "invalid_request_error"
        assert (await admin(proxy, "/admin/export/focus", format="xlsx")).json()["error"]["param"] == "format"
        empty = await admin(proxy, "/admin/export/focus", start="1h")
        assert empty.status_code == 200
        assert assert_focus_csv(empty.text) == []  # a header line, no rows: nothing was used yet


def test_the_cli_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    settings = {
        "meter": {"store": sqlite_url(tmp_path / "m.sqlite3")},
        "backends": {"api": {"kind": "serverless", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {MODEL: {"deployments": ["api"]}},
    }
    config.write_text(json.dumps(settings))  # JSON is YAML
    wrong_suffix = run_cli("export", "--config", str(config), "--format", "focus", "--out", "costs.xlsx")
    assert wrong_suffix.returncode == 2
    assert ".csv or .parquet" in wrong_suffix.stderr
    aggregates = run_cli("export", "--config", str(config), "--format", "focus", "--aggregates")
    assert aggregates.returncode == 2
    assert "--aggregates" in aggregates.stderr
    # Without pyarrow (hidden by a package of the same name that fails to import), Parquet says what to do.
    hidden = tmp_path / "no-pyarrow" / "pyarrow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": str(hidden.parent), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = tmp_path / "costs.parquet"
    missing = run_cli("export", "--config", str(config), "--format", "focus", "--out", str(out), env=env)
    assert missing.returncode == 1
    assert "tokenyard[parquet]" in missing.stderr
    assert not out.exists()
