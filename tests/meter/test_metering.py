"""Every request is metered, exactly: tokens and dollars equal what the clients received, in both stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, run_cli, running_proxy
from tests.support.simulators import simulators
from tests.support.stores import PROXY_STORES, ProxyStore, open_proxy_store
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

PROMPT = "count these five words please"  # the simulator counts a prompt token per word: 5
INPUT_PUSD, OUTPUT_PUSD = 150_000, 600_000  # $0.15 and $0.60 per 1M tokens, in pico-USD per token
GPUS = 2 * 4  # replicas × GPUs per replica


def config_for(sims: dict[str, SimulatorServer], store: str, prefix: str) -> dict[str, Any]:
    dedicated = backend("dedicated", sims["ded"].base_url, max_concurrency=2)
    dedicated.update(replicas=2, gpus_per_replica=4, gpu_hour_price=3.6)
    serverless = backend(
        "serverless", sims["svl"].base_url, prices={"input_per_1m": 0.15, "output_per_1m": 0.60}
    )
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {"dedicated": dedicated, "serverless": serverless},
        "models": {"mixed": {"deployments": ["dedicated", "serverless"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}, "team-b": {"key": OTHER_KEY}},
    }


@contextlib.asynccontextmanager
async def metered_proxy(store: ProxyStore, tmp: Path) -> AsyncIterator[tuple[ProxyProcess, float]]:
    """A proxy metering into ``store`` and the wall time just before it was started."""
    async with simulators(
        ded=SimulatorConfig(mode="dedicated", ttft_ms=2, tokens_per_s=400, max_concurrency=4),
        svl=SimulatorConfig(ttft_ms=2, tokens_per_s=2000),
    ) as sims:
        started = time.time()
        async with running_proxy(config_for(sims, store.url, store.prefix), tmp) as proxy:
            yield proxy, started


@pytest_asyncio.fixture(scope="module", params=PROXY_STORES)
async def metered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ProxyProcess, float]]:
    tmp = tmp_path_factory.mktemp(f"metering-{request.param}")
    async with open_proxy_store(request.param, tmp) as store, metered_proxy(store, tmp) as running:
        yield running


async def admin_get(proxy: ProxyProcess, path: str, key: str = ADMIN_KEY, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{proxy.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"})


Seen = dict[tuple[str, str], Counter[str]]  # (tenant, backend) → what the clients saw


async def one_request(client: openai.AsyncOpenAI, tenant: str, rng: random.Random, seen: Seen) -> None:
    """One random request; adds the usage the client received (or counted) to ``seen``."""
    kind = rng.choice(["chat", "stream_usage", "stream_plain", "completion", "embedding"])
    max_tokens = rng.randint(1, 12)
    messages: list[Any] = [{"role": "user", "content": PROMPT}]
    if kind == "chat":
        raw = await client.chat.completions.with_raw_response.create(
            model="mixed", messages=messages, max_tokens=max_tokens
        )
        usage = raw.parse().usage
        assert usage is not None
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
    elif kind == "completion":
        raw_c = await client.completions.with_raw_response.create(
            model="mixed", prompt=PROMPT, max_tokens=max_tokens
        )
        usage_c = raw_c.parse().usage
        assert usage_c is not None
        raw, prompt, completion = raw_c, usage_c.prompt_tokens, usage_c.completion_tokens  # type: ignore[assignment]
    elif kind == "embedding":
        raw_e = await client.embeddings.with_raw_response.create(model="mixed", input=PROMPT)
        raw, prompt, completion = raw_e, raw_e.parse().usage.prompt_tokens, 0  # type: ignore[assignment]
    else:
        with_usage = kind == "stream_usage"
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if with_usage else {}
        raw = await client.chat.completions.with_raw_response.create(
            model="mixed", messages=messages, max_tokens=max_tokens, stream=True, **extra
        )
        chunks = [chunk async for chunk in raw.parse()]  # type: ignore[union-attr]
        usage_chunks = [c.usage for c in chunks if c.usage is not None]
        if with_usage:
            [usage] = usage_chunks
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            assert usage_chunks == []  # tokenyard asked upstream for usage, and kept it to itself
            prompt = len(PROMPT.split())
            completion = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    backend_name = raw.headers["x-tokenyard-backend"]
    counts = seen[(tenant, backend_name)]
    counts["requests"] += 1
    counts["prompt_tokens"] += prompt
    counts["completion_tokens"] += completion
    if backend_name == "serverless":
        counts["cost_pusd"] += prompt * INPUT_PUSD + completion * OUTPUT_PUSD


async def run_load(proxy: ProxyProcess, n: int, seed: int) -> Seen:
    seen: Seen = defaultdict(Counter)
    rng = random.Random(seed)
    async with proxy.client(CLIENT_KEY) as a, proxy.client(OTHER_KEY) as b:
        clients = [(a, "team-a"), (b, "team-b")]
        await asyncio.gather(*(one_request(*clients[i % 2], rng, seen) for i in range(n)))
    return seen


async def stored_usage(proxy: ProxyProcess, expected_requests: int) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def all_flushed() -> None:
        resp = await admin_get(
            proxy, "/admin/usage", start="1h", group_by="tenant,backend", granularity="total"
        )
        assert resp.status_code == 200, resp.text
        result.update(resp.json())
        assert result["totals"]["requests"] == expected_requests

    await eventually(all_flushed, timeout_s=15)
    return result


async def test_metered_totals_equal_what_clients_received(metered: tuple[ProxyProcess, float]) -> None:
    proxy, _ = metered
    seen = await run_load(proxy, n=60, seed=7)
    usage = await stored_usage(proxy, 60)
    stored = {(row["tenant"], row["backend"]): row for row in usage["data"] if row["tenant"] != "(idle)"}
    assert set(stored) == set(seen)
    for group, counts in seen.items():
        row = stored[group]
        assert row["requests"] == counts["requests"], group
        assert row["prompt_tokens"] == counts["prompt_tokens"], group
        assert row["completion_tokens"] == counts["completion_tokens"], group
        assert row["errors"] == 0
        assert row["estimated"] == 0
        assert row["token_cost_usd"] == pytest.approx(counts["cost_pusd"] / 1e12, rel=1e-12, abs=1e-15)
    # Both backends took traffic: the dedicated one (cap 2 × 2 replicas) spilled over under the burst.
    assert {backend for _, backend in seen} == {"dedicated", "serverless"}

    # The Prometheus view of the same traffic agrees.
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{proxy.url}/metrics")).status_code == 401  # tenants and spend: admin only
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        text = (await http.get(f"{proxy.url}/metrics", headers=admin)).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = Counter[tuple[str, str]]()
    for sample in families["tokenyard_requests"].samples:
        if sample.name == "tokenyard_requests_total":
            requests[(sample.labels["tenant"], sample.labels["backend"])] += int(sample.value)
    assert requests == {group: counts["requests"] for group, counts in seen.items()}
    completion_tokens = sum(
        s.value
        for s in families["tokenyard_tokens"].samples
        if s.name == "tokenyard_tokens_total" and s.labels["type"] == "completion"
    )
    assert completion_tokens == sum(c["completion_tokens"] for c in seen.values())


async def test_dedicated_gpu_time_accrues_busy_or_idle(proxy_store: ProxyStore, tmp_path: Path) -> None:
    # A proxy of its own: no other test's traffic or replica changes, and no bound on how fast it starts.
    async with metered_proxy(proxy_store, tmp_path) as (proxy, started):
        async with proxy.client() as client:
            busy = await client.chat.completions.with_raw_response.create(
                model="mixed", messages=[{"role": "user", "content": PROMPT}], max_tokens=8
            )
        assert busy.headers["x-tokenyard-backend"] == "dedicated"
        seen: dict[str, Any] = {}

        async def dedicated_now() -> dict[str, Any]:
            resp = await admin_get(proxy, "/admin/usage", start="1h", granularity="total")
            rows = resp.json()["dedicated"]
            assert len(rows) == 1  # none before the first flush: checked, so eventually tries again
            result: dict[str, Any] = rows[0]
            return result

        async def busy_time_flushed() -> None:
            seen.update(await dedicated_now())
            assert seen["tokens"] > 0
            assert 0 < seen["utilization"] <= 1

        await eventually(busy_time_flushed)
        busy_until_s = seen["provisioned_hours"] * 3600

        async def idle_time_accrues() -> None:  # nothing more is sent; the GPUs are paid for all the same
            seen.update(await dedicated_now())
            assert seen["provisioned_hours"] * 3600 >= busy_until_s + 0.5
            assert 0 < seen["utilization"] <= 1

        await eventually(idle_time_accrues)
        measured_at = time.time()
        provisioned_s = seen["provisioned_hours"] * 3600
        # Every provisioned second is billed for replicas × GPUs, exactly ...
        assert seen["gpu_hours"] == pytest.approx(seen["provisioned_hours"] * GPUS, rel=1e-9)
        assert seen["gpu_cost_usd"] == pytest.approx(provisioned_s * GPUS * 3.6 / 3600, rel=1e-6)
        # ... and never more than the proxy has been up (how much less depends on how slowly it started).
        assert provisioned_s <= measured_at - started
        assert seen["effective_usd_per_1m_tokens"] > 0


async def test_replicas_can_change_while_running(metered: tuple[ProxyProcess, float]) -> None:
    proxy, _ = metered
    async with httpx.AsyncClient(timeout=10) as http:
        changed = await http.put(
            f"{proxy.url}/admin/backends/dedicated/replicas",
            json={"replicas": 1},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        refused = await http.put(
            f"{proxy.url}/admin/backends/dedicated/replicas",
            json={"replicas": -1},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        metrics = (
            await http.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        ).text
    # Shared through the store: every replica on it counts 1 from its next beat.
    assert changed.json() == {"name": "dedicated", "replicas": 1, "max_concurrency": 2, "shared": True}
    assert refused.status_code == 400
    assert 'tokenyard_backend_replicas{backend="dedicated"} 1.0' in metrics
    state = (await admin_get(proxy, "/admin/backends")).json()["data"]
    assert {b["name"]: b.get("replicas") for b in state} == {"dedicated": 1, "serverless": None}


async def test_the_usage_api_needs_the_admin_key_and_sane_parameters(
    metered: tuple[ProxyProcess, float],
) -> None:
    proxy, _ = metered
    assert (await admin_get(proxy, "/admin/usage", key="sk-wrong-0000000000")).status_code == 403
    assert (await admin_get(proxy, "/admin/usage", key=CLIENT_KEY)).status_code == 403
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{proxy.url}/admin/usage")).status_code == 401
    for params in (
        {"group_by": "colour"},
        {"granularity": "fortnight"},
        {"start": "yesterday-ish"},
        {"start": "1h", "end": "2h"},
    ):
        resp = await admin_get(proxy, "/admin/usage", **params)
        assert resp.status_code == 400, params
        assert resp.json()["error"]["type"] == "invalid_request_error"
    by_minute = (
        await admin_get(proxy, "/admin/usage", start="1h", granularity="minute", group_by="mode")
    ).json()
    assert {row["mode"] for row in by_minute["data"]} == {"realtime"}
    assert all(row["period_start"] % 60 == 0 for row in by_minute["data"])


async def test_report_and_export_read_the_store(metered: tuple[ProxyProcess, float]) -> None:
    proxy, _ = metered
    assert proxy.config_path is not None
    await run_load(proxy, 4, seed=3)  # traffic of its own, so it holds when run alone
    config = str(proxy.config_path)
    totals: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    exported_text: list[str] = []

    async def exported() -> None:  # every request is in the totals, and its record in the export
        got = await admin_get(proxy, "/admin/usage", start="1h", granularity="total")
        totals.update(got.json()["totals"])
        export = await asyncio.to_thread(run_cli, "export", "--config", config, "--since", "1h")
        assert export.returncode == 0, export.stderr
        window, *lines = [json.loads(line) for line in export.stdout.splitlines()]
        records[:] = lines
        # First the span exported, so a replay costs the quiet hours at its ends.
        assert window["window"]["end"] - window["window"]["start"] == pytest.approx(3600, abs=5)
        assert len(records) == totals["requests"] >= 4
        exported_text[:] = [export.stdout]

    await eventually(exported, timeout_s=30)
    report = await asyncio.to_thread(run_cli, "report", "--config", config, "--since", "1h")
    assert report.returncode == 0, report.stderr
    for heading in (
        "spend by mode",
        "spend by kind",
        "spend by backend",
        "spend by model",
        "spend by tenant",
        "dedicated backends",
        "async track saved",
    ):
        assert heading in report.stdout
    assert f"requests {totals['requests']:,}" in report.stdout
    assert sum(r["completion_tokens"] for r in records) == totals["completion_tokens"]
    first = records[0]
    for field in (
        "ts",
        "request_id",
        "tenant",
        "model",
        "backend",
        "backend_kind",
        "mode",
        "route",
        "status",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "estimated",
        "ttfb_ms",
        "latency_ms",
        "cost_usd",
    ):
        assert field in first
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    aggregates = await asyncio.to_thread(
        run_cli, "export", "--config", config, "--since", "1h", "--aggregates"
    )
    window, *rows = [json.loads(line) for line in aggregates.stdout.splitlines()]
    assert set(window) == {"window"}
    assert sum(r["requests"] for r in rows) == totals["requests"]
    # The advisor's replay costs the export's own window, not the span from its first to last request.
    log = proxy.config_path.parent / "exported.jsonl"
    log.write_text(exported_text[0])
    replay = await asyncio.to_thread(run_cli, "replay", str(log), "--config", config, "--json")
    assert replay.returncode == 0, replay.stderr
    advice = json.loads(replay.stdout)["workloads"][0]
    # ...cut at 00:00 UTC when the hour began the day before the first request: replicas are not billed
    # before a workload's first day (decide._from_first_day). Within the first hour of a UTC day it is.
    exported_window = json.loads(exported_text[0].splitlines()[0])["window"]
    first_day = int(records[0]["ts"]) // 86_400 * 86_400
    start = max(exported_window["start"], first_day)
    cut = ", from 00:00 UTC of the day of its first request" if start > exported_window["start"] else ""
    assert advice["window"]["basis"] == "the log's window" + cut
    assert advice["window"]["minutes"] == pytest.approx((exported_window["end"] - start) / 60, abs=1)
