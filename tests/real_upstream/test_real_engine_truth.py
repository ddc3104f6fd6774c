"""Metered engine truth on a real engine: llama.cpp's ``llama-server`` (``--metrics``) as a dedicated backend
whose ``/metrics`` tokenyard scrapes. The tokens tokenyard meters from the engine's own counters are exactly
what those counters moved by, read straight from the engine before and after, and exactly what tokenyard
metered from the usage of the answers it relayed: nothing else reached the engine, so nothing is unseen.

llama-server's ``llamacpp:prompt_tokens_total`` leaves out the prompt tokens it reused from its cache
(``llamacpp:prompt_tokens_cached_total``): the engine took in both, and its usage counts both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.real_upstream.upstreams import Upstream
from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.stores import sqlite_url

MODEL = "smollm2"
# What llama-server counts of the tokens it took in and put out.
PROMPT, CACHED, PREDICTED = (
    "llamacpp:prompt_tokens_total",
    "llamacpp:prompt_tokens_cached_total",
    "llamacpp:tokens_predicted_total",
)
# One long prefix for every request, so the engine may reuse it from its cache.
SYSTEM = "You are a terse assistant. Answer every question with a single short word and nothing else."


async def engine_counters(llama: Upstream) -> dict[str, float]:
    """llama-server's own figures, straight from its /metrics (the samples by name)."""
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.get(f"http://127.0.0.1:{llama.port}/metrics")
    assert got.status_code == 200, got.text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(got.text)
        for sample in family.samples
    }


def tokens_counted(counters: dict[str, float]) -> int:
    """Every token the engine took in or put out so far."""
    return round(counters[PROMPT] + counters[CACHED] + counters[PREDICTED])


async def until_idle(llama: Upstream) -> dict[str, float]:
    """Poll until the engine has nothing running or queued (what an earlier test left has ended)."""
    seen: dict[str, float] = {}

    async def idle() -> None:
        seen.update(await engine_counters(llama))
        assert (seen["llamacpp:requests_processing"], seen["llamacpp:requests_deferred"]) == (0, 0)

    await eventually(idle, timeout_s=120)
    return seen


@pytest.fixture
async def proxy(llama: Upstream, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    """tokenyard with llama-server as a dedicated backend, its /metrics (``auto``) scraped twice a second."""
    section = backend("dedicated", f"http://127.0.0.1:{llama.port}/v1", max_concurrency=2)
    section.update(
        api_key="sk-none",
        timeouts={"first_byte_s": 120},  # a busy 2-core machine: the model may start slowly
        metrics_url="auto",
        engine={"interval_s": 0.5},
    )
    config = {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": sqlite_url(tmp_path / "meter.sqlite3"), "flush_interval_s": 0.2},
        "backends": {"llama": section},
        "models": {MODEL: {"deployments": ["llama"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "advisor": {"enabled": False},
        "async_track": {"enabled": False},
    }
    await until_idle(llama)  # before the first scrape: the engine's counters stand still from here
    async with running_proxy(config, tmp_path) as running:
        yield running


async def usage(proxy: ProxyProcess) -> dict[str, Any]:
    """The last hour's usage, one period, no grouping."""
    body: dict[str, Any] = await proxy.admin("/admin/usage", start="1h", granularity="total", group_by="")
    return body


async def through_tokenyard(proxy: ProxyProcess, requests: int) -> int:
    """Chat completions through tokenyard, streamed and not; the tokens the engine's usage reported."""
    tokens = 0
    async with proxy.client(timeout=120) as sdk:
        for i in range(requests):
            messages: Any = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Question {i}: name a colour."},
            ]
            if i % 2:
                stream = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    max_tokens=6,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        tokens += chunk.usage.total_tokens
            else:
                answer = await sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
                assert answer.usage is not None
                tokens += answer.usage.total_tokens
    return tokens


async def test_llama_servers_token_counters_are_metered_exactly(llama: Upstream, proxy: ProxyProcess) -> None:
    async def engine_read() -> None:
        rows = [row for row in (await usage(proxy))["engine"] if row["backend"] == "llama"]
        assert rows, "no engine reading stored yet"
        assert rows[0]["scrapes"] >= 1

    await eventually(engine_read, timeout_s=60)  # work before the first reading has nothing to count from
    before = await engine_counters(llama)
    relayed = await through_tokenyard(proxy, 4)
    after = await until_idle(llama)
    moved = tokens_counted(after) - tokens_counted(before)
    assert after[CACHED] > before[CACHED], "one prefix for all: the engine reused some of it from its cache"
    assert moved == relayed, f"the engine's counters moved by {moved}; its answers reported {relayed} tokens"
    ded: dict[str, Any] = {}

    async def metered() -> None:
        summaries = (await usage(proxy))["dedicated"]
        assert len(summaries) == 1, summaries
        ded.clear()
        ded.update(summaries[0])
        assert (ded["tokens"], ded["engine_tokens"]) == (relayed, moved)

    await eventually(metered, timeout_s=60)
    assert (ded["unseen_tokens"], ded["tokens_source"]) == (0, "engine")
    engine = ded["engine"]
    assert engine["prompt_tokens"] == round(after[PROMPT] + after[CACHED] - before[PROMPT] - before[CACHED])
    assert engine["generation_tokens"] == round(after[PREDICTED] - before[PREDICTED])
    assert engine["cached_tokens"] == round(after[CACHED] - before[CACHED])
