"""The routing follows the advisor's GPU plan, on a real proxy process: a model with dedicated deployments
of two GPU types and ``routing: plan`` sends short prompts to the type the plan gives short shapes and long
prompts to the other; with ``routing: preference`` the plan is shown but not followed. ``GET
/admin/capacity`` and ``/metrics`` show the plan's replicas per type beside what runs.

The plan document is put into the shared Redis as the advisor writes it; ``POST /admin/reload`` has the
proxy read it at once (no waiting for its periodic read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.proxy import running_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import fresh_prefix
from tokenyard.capacity.gpu_plan import DOCUMENT, ModelPlan, plan_document
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.meter.shapes import SHAPES
from tokenyard.simulator.config import SimulatorConfig

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
# Prompts under 128 tokens on the cheap A10G, every longer one on the A100 (the plan wants 3 + 1).
PLAN = ModelPlan(
    tuple("A10G" if inp == 0 else "A100-80GB" for inp, _ in SHAPES), {"A10G": 3, "A100-80GB": 1}, 6.7
)
SHORT = [{"role": "user", "content": "hello"}]
LONG = [{"role": "user", "content": "word " * 2000}]  # ~10 kB: ~2500 prompt tokens


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = fresh_prefix()
    try:
        yield prefix
    finally:
        await delete_prefix(prefix)


async def put_plan(prefix: str, document: dict[str, Any]) -> None:
    """The document in the proxies' shared store, as the advisor puts it."""
    store = RedisMeterStore(REDIS_URL, prefix=prefix, retention_s=86400, records_max=1000)
    try:
        await store.put_document(DOCUMENT, orjson.dumps(document))
    finally:
        await store.aclose()


def config(sims: dict[str, Any], prefix: str, routing: str) -> dict[str, Any]:
    a100 = backend("dedicated", sims["a100"].base_url, max_concurrency=4) | {"gpu_type": "A100-80GB"}
    a10g = backend("dedicated", sims["a10g"].base_url, max_concurrency=2) | {
        "gpu_type": "A10G",
        "replicas": 2,
    }
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": REDIS_URL, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {"a100": a100, "a10g": a10g, "api": backend("serverless", sims["api"].base_url)},
        # The A100 is first: without the plan every request goes there.
        "models": {"llama": {"deployments": ["a100", "a10g", "api"], "routing": routing}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {"enabled": False},
        "async_track": {"enabled": False},
    }


async def served_by(http: httpx.AsyncClient, url: str, messages: list[dict[str, str]]) -> tuple[str, str]:
    """The backend that answered a chat request, and the route the proxy says it took."""
    got = await http.post(
        f"{url}/v1/chat/completions",
        json={"model": "llama", "messages": messages, "max_tokens": 4},
        headers=CLIENT,
    )
    assert got.status_code == 200, got.text
    return got.headers["x-tokenyard-backend"], got.headers["x-tokenyard-route"]


async def reload(http: httpx.AsyncClient, url: str) -> None:
    got = await http.post(f"{url}/admin/reload", headers=ADMIN)
    assert got.json()["reloaded"] is True, got.text


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, Any]]:
    async with simulators(
        a100=SimulatorConfig(mode="dedicated", max_concurrency=32, **FAST_UPSTREAM),
        a10g=SimulatorConfig(mode="dedicated", max_concurrency=32, **FAST_UPSTREAM),
        api=SimulatorConfig(**FAST_UPSTREAM),
    ) as servers:
        yield servers


async def test_each_shape_goes_to_the_gpu_type_the_plan_gives_it(
    sims: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    async with (
        running_proxy(config(sims, prefix, "plan"), tmp_path) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        # No plan yet: the configured order.
        assert await served_by(http, proxy.url, SHORT) == ("a100", "primary")
        assert (await proxy.admin("/admin/capacity"))["plan"] == {}

        await put_plan(prefix, plan_document({"llama": PLAN, "elsewhere": PLAN}, now_wall=1_800_000_000.0))
        await reload(http, proxy.url)
        # The planned type takes its shapes first: a primary route, not a spillover.
        assert await served_by(http, proxy.url, SHORT) == ("a10g", "primary")
        assert await served_by(http, proxy.url, LONG) == ("a100", "primary")
        assert await served_by(http, proxy.url, SHORT) == ("a10g", "primary")

        capacity = await proxy.admin("/admin/capacity")
        assert capacity["plan_generated_at"] == 1_800_000_000.0
        assert capacity["plan"] == {  # a model this config does not serve is left out
            "llama": {
                "A10G": {
                    "planned_replicas": 3,
                    "configured_replicas": 2,
                    "in_flight": 0,
                    "limit": 4,  # 2 per replica × 2 replicas
                    "utilization": 0.0,
                },
                "A100-80GB": {
                    "planned_replicas": 1,
                    "configured_replicas": 1,
                    "in_flight": 0,
                    "limit": 4,
                    "utilization": 0.0,
                },
            }
        }
        metrics = (await http.get(f"{proxy.url}/metrics", headers=ADMIN)).text
        assert 'tokenyard_plan_replicas{gpu_type="A10G",model="llama"} 3.0' in metrics
        assert 'tokenyard_plan_replicas{gpu_type="A100-80GB",model="llama"} 1.0' in metrics

        # A document that is not a plan any more: back to the configured order.
        await put_plan(prefix, {"format": 99, "models": {}})
        await reload(http, proxy.url)
        assert await served_by(http, proxy.url, SHORT) == ("a100", "primary")
        assert (await proxy.admin("/admin/capacity"))["plan"] == {}


async def test_with_routing_preference_the_plan_is_shown_but_not_followed(
    sims: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    await put_plan(prefix, plan_document({"llama": PLAN}, now_wall=1_800_000_000.0))
    async with (
        running_proxy(config(sims, prefix, "preference"), tmp_path) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        await reload(http, proxy.url)
        assert await served_by(http, proxy.url, SHORT) == ("a100", "primary")
        assert await served_by(http, proxy.url, LONG) == ("a100", "primary")
        planned = (await proxy.admin("/admin/capacity"))["plan"]["llama"]
        assert {gpu: row["planned_replicas"] for gpu, row in planned.items()} == {"A10G": 3, "A100-80GB": 1}
        assert {gpu: row["configured_replicas"] for gpu, row in planned.items()} == {
            "A10G": 2,
            "A100-80GB": 1,
        }
