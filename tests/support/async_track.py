"""The async track's usual proxy for queue tests: a dedicated replica, a serverless API and (if simulated) a
provider Batch API as simulators; posting, polling and reading usage; the Batch API driven by the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import sqlite_url
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MODEL = "llama"
HELLO = [{"role": "user", "content": "count these five words please"}]


def config_for(
    sims: dict[str, SimulatorServer], *, store: str, prefix: str = "tokenyard", **track: Any
) -> dict[str, Any]:
    """A dedicated replica (cap 2), a serverless API, and (if simulated) a provider Batch API."""
    backends: dict[str, Any] = {
        "ded": backend("dedicated", sims["ded"].base_url, max_concurrency=2),
        "api": backend(
            "serverless", sims["api"].base_url, prices={"input_per_1m": 1.0, "output_per_1m": 2.0}
        ),
    }
    model: dict[str, Any] = {"deployments": ["ded", "api"]}
    if "batch" in sims:
        backends["prov"] = backend(
            "batch", sims["batch"].base_url, prices={"input_per_1m": 0.5, "output_per_1m": 1.0}
        )
        model["batch"] = "prov"
    async_track: dict[str, Any] = {"batches": {"max_wait_s": 0.2, "poll_s": 0.2, "expected_turnaround_s": 1}}
    async_track.update(track)
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": backends,
        "models": {MODEL: model},
        "keys": {
            "team-a": {"key": CLIENT_KEY},
            "team-b": {"key": OTHER_KEY, "mode": "async", "deadline_s": 30},
        },
        "async_track": async_track,
    }


@contextlib.asynccontextmanager
async def sqlite_proxy(tmp_path: Path, **track: Any) -> AsyncIterator[ProxyProcess]:
    """The usual proxy (``config_for`` the usual simulators) on an SQLite store, stopped afterwards."""
    async with (
        sims() as s,
        running_proxy(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3"), **track), tmp_path) as proxy,
    ):
        yield proxy


def sims(**extra: SimulatorConfig) -> Any:
    """The usual simulators: a dedicated replica ``ded`` and a serverless API ``api`` (and ``extra``)."""
    return simulators(
        ded=SimulatorConfig(mode="dedicated", max_concurrency=4, **FAST_UPSTREAM),
        api=SimulatorConfig(**FAST_UPSTREAM),
        **extra,
    )


async def post(
    proxy: ProxyProcess, body: dict[str, Any], key: str = CLIENT_KEY, **headers: str
) -> httpx.Response:
    """POST a chat completion as raw HTTP (to read a 202 and its headers)."""
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            f"{proxy.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}", **headers},
        )


async def poll(
    proxy: ProxyProcess, location: str, key: str = CLIENT_KEY, timeout_s: float = 20
) -> httpx.Response:
    """GET the job until it is no longer 202."""
    async with httpx.AsyncClient(timeout=10) as http:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            got = await http.get(proxy.url + location, headers={"Authorization": f"Bearer {key}"})
            if got.status_code != 202 or asyncio.get_running_loop().time() > deadline:
                return got
            assert got.json()["status"] == "queued"
            await asyncio.sleep(0.1)


async def usage(proxy: ProxyProcess, **params: str) -> dict[str, Any]:
    """The last hour's totals from ``/admin/usage``."""
    async with httpx.AsyncClient(timeout=10) as http:
        got = await http.get(
            f"{proxy.url}/admin/usage",
            params={"start": "1h", "granularity": "total", **params},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert got.status_code == 200, got.text
        result: dict[str, Any] = got.json()
        return result


def no_idle_dedicated(
    tmp_path: Path, s: dict[str, SimulatorServer], store: str, prefix: str = "t"
) -> dict[str, Any]:
    """The async track with only a serverless API and a provider batch: jobs go to the batch."""
    config = config_for(s, store=store, prefix=prefix, realtime_margin_s=2)
    config["models"][MODEL]["deployments"] = ["api"]
    del config["backends"]["ded"]
    return config


# -- the Batch API through the SDK ------------------------------------------------------------

FINAL = ("completed", "failed", "expired", "cancelled")


def jsonl(n: int, *, prefix: str = "r", model: str = MODEL, **body: Any) -> bytes:
    """A batch input file of ``n`` chat completion lines."""
    return "".join(
        json.dumps(
            {"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], **body}}
        ) + "\n"
        for i in range(n)
    ).encode()  # fmt: skip


async def until_final(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 30) -> Any:
    """The batch once it has reached a final status."""
    async with asyncio.timeout(timeout_s):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in FINAL:
                return batch
            await asyncio.sleep(0.1)


async def run_batch(client: openai.AsyncOpenAI, content: bytes, **create: Any) -> Any:
    """Upload ``content`` and create a batch on it."""
    upload = await client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    return await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", **create
    )
