"""A real engine's /metrics: llama.cpp's llama-server (``--metrics``) read with the llamacpp profile, its
token counters moving by exactly what it reported in usage, and tokenyard scraping it while it serves."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai

from tests.real_upstream.upstreams import Upstream
from tests.real_upstream.yard import Yard, new_marker
from tests.support.config import ADMIN_KEY
from tests.support.polling import eventually
from tokenyard.adapters.engine_metrics import EngineMetricsClient
from tokenyard.capacity.engine import EngineSnapshot, parse_metrics


async def scrape(upstream: Upstream) -> EngineSnapshot:
    client = EngineMetricsClient()
    try:
        text = await client.get_text(f"http://127.0.0.1:{upstream.port}/metrics", 10.0)
    finally:
        await client.aclose()
    return parse_metrics(text, "auto", scraped_at=time.monotonic(), wall_at=time.time())


async def test_llama_server_counts_what_it_reported(llama: Upstream) -> None:
    before = await scrape(llama)
    assert before.profile == "llamacpp"
    assert {"running", "waiting", "prompt_tokens_total", "generation_tokens_total"} <= before.signals
    prompt = completion = 0
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{llama.port}/v1", api_key="sk-none", max_retries=0, timeout=120
    ) as sdk:
        for _ in range(2):
            answer = await sdk.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": f"say {new_marker()}"}], max_tokens=6
            )
            assert answer.usage is not None
            prompt += answer.usage.prompt_tokens
            completion += answer.usage.completion_tokens
    after = await scrape(llama)
    assert before.prompt_tokens_total is not None
    assert before.generation_tokens_total is not None
    assert after.prompt_tokens_total == before.prompt_tokens_total + prompt
    assert after.generation_tokens_total == before.generation_tokens_total + completion
    assert (after.running, after.waiting) == (0.0, 0.0)


async def test_tokenyard_scrapes_llama_server_while_it_serves(llama_yard: Yard) -> None:
    proxy = llama_yard.proxy
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        view: dict[str, Any] = {}

        async def scraped() -> None:
            got = (await http.get(f"{proxy.url}/admin/backends")).json()
            view.update(next(b for b in got["data"] if b["name"] == "llama")["capacity"]["engine"])
            assert view["fresh"] is True

        await eventually(scraped, timeout_s=60)
        assert view["profile"] == "llamacpp"
        assert view["saturated"] is False
        assert {"running", "waiting", "prompt_tokens_total"} <= set(view["signals"])
        async with proxy.client(timeout=120) as client:
            answer = await client.chat.completions.create(
                model=llama_yard.chat_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        assert answer.choices[0].message.content is not None
        text = (await http.get(f"{proxy.url}/metrics")).text
        assert 'tokenyard_engine_scrapes_total{backend="llama",outcome="ok"}' in text
        assert 'tokenyard_engine_requests_waiting{backend="llama"}' in text
