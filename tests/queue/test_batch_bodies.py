"""A job's body reaches a provider's Batch API as the client wrote it: one JSONL line, numbers exact.

The client's bytes are embedded in the batch line, not re-serialised: a pretty-printed body (line breaks
between tokens) must still make one line, and renaming the model for the provider is spliced in, so an
integer past 64 bits is not rounded through a float on the way.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import orjson

from tests.support.async_track import MODEL, no_idle_dedicated, poll, sims
from tests.support.config import CLIENT_KEY
from tests.support.proxy import start_proxy
from tests.support.simulators import FAST_UPSTREAM
from tests.support.stores import sqlite_url
from tokenyard.simulator.config import SimulatorConfig

LONG = "123456789012345678901234567"  # past 64 bits: a float would round it


async def test_a_pretty_printed_job_body_goes_to_the_provider_as_one_exact_line(tmp_path: Path) -> None:
    async with sims(batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM)) as s:
        config = no_idle_dedicated(tmp_path, s, sqlite_url(tmp_path / "m.sqlite3"))
        config["backends"]["prov"]["model"] = "provider-llama"  # the provider names the model differently
        proxy = await start_proxy(config, tmp_path)
        body = b"\n".join(
            [
                b"{",
                b'  "model": "' + MODEL.encode() + b'",',
                b'  "messages": [{"role": "user", "content": "hi"}],',
                b'  "x_trace": ' + LONG.encode(),
                b"}",
            ]
        )
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                accepted = await http.post(
                    f"{proxy.base_url}/chat/completions",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {CLIENT_KEY}",
                        "Content-Type": "application/json",
                        "Prefer": "respond-async",
                    },
                )
            assert accepted.status_code == 202, accepted.text
            answer = await poll(proxy, accepted.headers["location"])
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-tokenyard-path"] == "provider_batch"

            provider_sdk = openai.AsyncOpenAI(base_url=s["batch"].base_url, api_key="sim", max_retries=0)
            async with provider_sdk as provider:
                inputs = [f async for f in provider.files.list() if f.purpose == "batch"]
                assert len(inputs) == 1
                content = (await provider.files.content(inputs[0].id)).content
            lines = content.splitlines()
            assert len(lines) == 1
            sent = orjson.loads(lines[0])["body"]
            assert sent["model"] == "provider-llama"
            assert b'"x_trace": ' + LONG.encode() in lines[0]  # the client's bytes, the number exact
        finally:
            proxy.stop()
