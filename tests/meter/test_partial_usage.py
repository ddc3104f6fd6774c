"""A stream cut short is metered for what it delivered, estimated and marked so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.config import CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, leave_after, start_proxy
from tests.support.simulators import set_faults, simulators
from tests.support.stores import sqlite_url, stored_records
from tokenyard.meter.model import UsageRecord
from tokenyard.simulator.config import SimulatorConfig

MESSAGES: list[Any] = [{"role": "user", "content": "tell me a long story please"}]  # ~27 chars → 7 tokens


async def test_streams_cut_short_are_metered_for_what_they_delivered(tmp_path: Path) -> None:
    store_url = sqlite_url(tmp_path / "meter.sqlite3")
    async with simulators(slow=SimulatorConfig(ttft_ms=1, tokens_per_s=20)) as sims:
        config = {
            "meter": {"store": store_url, "flush_interval_s": 0.2},
            "backends": {"slow": backend("serverless", sims["slow"].base_url, prices={"output_per_1m": 1.0})},
            "models": {"m": {"deployments": ["slow"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        proxy: ProxyProcess = await start_proxy(config, tmp_path)
        try:
            # 1. The client walks away after a few chunks.
            body = {"model": "m", "messages": MESSAGES, "max_tokens": 200, "stream": True}
            await leave_after(proxy, body, chunks=5)
            # 2. The upstream breaks its stream after four tokens.
            await set_faults(sims["slow"], cut_stream_after_chunks=4)
            async with proxy.client() as client:
                stream = await client.chat.completions.create(
                    model="m", messages=MESSAGES, max_tokens=50, stream=True
                )
                with pytest.raises(openai.APIError):
                    async for _ in stream:
                        pass

            records: list[UsageRecord] = []

            async def both_stored() -> None:
                records[:] = await stored_records(store_url, since_s=600)
                assert len(records) == 2

            await eventually(both_stored, timeout_s=10)
        finally:
            proxy.stop()
    left, broken = sorted(records, key=lambda r: r.ts)
    assert left.status == 499  # the client closed the request
    assert left.estimated
    assert 3 <= left.completion_tokens < 200  # what was generated before it left, not the whole story
    assert left.prompt_tokens == 7
    assert left.cost_pusd == left.completion_tokens * 1_000_000
    assert broken.status == 502
    assert broken.estimated
    assert broken.completion_tokens == 4
