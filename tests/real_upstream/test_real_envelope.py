"""The measured envelope on a real engine: llama.cpp's ``llama-server`` (SmolLM2, two slots) as a dedicated
backend; streamed requests at rising concurrency fill its envelope with the tokens the engine really
reported, and ``/admin/backends`` shows the curve."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.real_upstream.upstreams import Upstream
from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.stores import sqlite_url

MODEL = "smollm2"
MAX_TOKENS = 8  # SmolLM2 on one thread: enough tokens for a decode rate, and quick
WAVES = ((1, 4), (2, 3), (4, 2))  # (concurrent clients, requests each): up to twice the engine's 2 slots


async def backends_state(proxy: ProxyProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.get(f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    (llama,) = got.json()["data"]
    state: dict[str, Any] = llama
    return state


async def test_a_real_engines_envelope_fills_with_its_token_counts(llama: Upstream, tmp_path: Path) -> None:
    section = backend(
        "dedicated",
        f"http://127.0.0.1:{llama.port}/v1",
        max_concurrency=4,
        sla={"min_stream_tokens_per_s": 1},
    )
    section["api_key"] = "sk-none"
    section["timeouts"] = {"first_byte_s": 120}
    config = {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": sqlite_url(tmp_path / "meter.sqlite3"), "flush_interval_s": 0.2},
        "backends": {"llama": section},
        "models": {MODEL: {"deployments": ["llama"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {"enabled": False},
    }
    completions: list[int] = []
    async with running_proxy(config, tmp_path) as proxy, proxy.client(timeout=120) as client:

        async def one_client(requests: int) -> None:
            for _ in range(requests):
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        completions.append(chunk.usage.completion_tokens)

        for clients, each in WAVES:
            await asyncio.gather(*(one_client(each) for _ in range(clients)))
        sent = sum(clients * each for clients, each in WAVES)
        assert len(completions) == sent

        async def counted() -> None:
            shown = (await backends_state(proxy))["capacity"]["envelope"]
            assert shown["samples"] == sent

        await eventually(counted, timeout_s=20)
        envelope = (await backends_state(proxy))["capacity"]["envelope"]
        # Every answer's real completion count (at most MAX_TOKENS) puts it in the shortest output bucket.
        assert [s["shape"].split("/")[1] for s in envelope["shapes"]] == ["out0-63"]
        levels = [p["concurrency"] for p in envelope["curve"]]
        assert levels[0] == 1
        assert max(levels) >= 2
        for point in envelope["curve"]:
            assert point["ttft_ms"] > 0  # every answer streamed
            if point["stream_tokens_per_s"] is not None:  # answers of one token have no decode rate
                assert point["stream_tokens_per_s"] > 0
