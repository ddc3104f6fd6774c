"""Several proxy processes share one Redis: totals add up exactly, provisioned GPU time counts once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.config import CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import start_proxy
from tests.support.redis_servers import REDIS_URL
from tests.support.simulators import simulators
from tokenyard.simulator.config import SimulatorConfig

MESSAGES: list[Any] = [{"role": "user", "content": "one two three four"}]


async def test_two_proxies_on_one_redis_add_up_exactly(tmp_path: Path, redis_prefix: str) -> None:
    prefix = redis_prefix
    async with simulators(
        ded=SimulatorConfig(mode="dedicated", ttft_ms=1, tokens_per_s=2000), svl=SimulatorConfig(ttft_ms=1)
    ) as sims:
        dedicated = backend("dedicated", sims["ded"].base_url, max_concurrency=4)
        config = {
            "server": {"admin_key": "sk-admin-0123456789"},
            "meter": {"store": REDIS_URL, "redis_prefix": prefix, "flush_interval_s": 0.2},
            "backends": {
                "ded": dedicated,
                "svl": backend(
                    "serverless", sims["svl"].base_url, prices={"input_per_1m": 0.5, "output_per_1m": 1.5}
                ),
            },
            "models": {"m": {"deployments": ["ded", "svl"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        started = time.time()
        proxies = await asyncio.gather(*(start_proxy(config, tmp_path) for _ in range(2)))
        try:
            clients = [p.client() for p in proxies]

            async def one(i: int) -> tuple[int, int, str]:
                raw = await clients[i % 2].chat.completions.with_raw_response.create(
                    model="m", messages=MESSAGES, max_tokens=1 + i % 7
                )
                usage = raw.parse().usage
                assert usage is not None
                return usage.prompt_tokens, usage.completion_tokens, raw.headers["x-tokenyard-backend"]

            results = await asyncio.gather(*(one(i) for i in range(80)))
            expected_cost = sum(p * 500_000 + c * 1_500_000 for p, c, b in results if b == "svl") / 1e12
            usage: dict[str, Any] = {}

            async def all_counted() -> None:
                async with httpx.AsyncClient() as http:
                    resp = await http.get(
                        f"{proxies[0].url}/admin/usage",
                        params={"start": "1h", "granularity": "total", "group_by": "backend"},
                        headers={"Authorization": "Bearer sk-admin-0123456789"},
                    )
                usage.update(resp.json())
                assert usage["totals"]["requests"] == 80

            await eventually(all_counted, timeout_s=15)
            measured_at = time.time()
            for client in clients:
                await client.close()
        finally:
            for proxy in proxies:
                proxy.stop()
    totals = usage["totals"]
    assert totals["prompt_tokens"] == sum(p for p, _, _ in results)
    assert totals["completion_tokens"] == sum(c for _, c, _ in results)
    assert totals["token_cost_usd"] == pytest.approx(expected_cost, rel=1e-12)
    # Both replicas accrued the same dedicated backend: each provisioned second is counted once.
    [ded] = usage["dedicated"]
    assert ded["provisioned_hours"] * 3600 <= measured_at - started
    assert ded["gpu_hours"] == pytest.approx(ded["provisioned_hours"], rel=1e-9)  # 1 replica × 1 GPU
