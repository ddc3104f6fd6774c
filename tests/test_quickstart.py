"""The README's first command: `tokenyard serve` on a fresh install answers the openai SDK at once."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support.polling import eventually
from tests.support.proxy import start_proxy


async def test_the_built_in_config_serves_chat_and_embeddings_with_any_key(tmp_path: Path) -> None:
    proxy = await start_proxy(None, tmp_path)
    usage: dict[str, Any] = {}
    try:
        async with proxy.client(key="anything-at-all") as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="llama-3.1-8b-instruct", messages=[{"role": "user", "content": "Hello!"}]
            )
            embedding = await client.embeddings.create(model="text-embedding-small", input="hello")
            # A small Batch API job finishes within seconds on the quick start.
            hi = {"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "hi"}]}
            line = {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": hi}
            upload = await client.files.create(
                file=("in.jsonl", io.BytesIO(orjson.dumps(line))), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            for _ in range(100):
                batch = await client.batches.retrieve(batch.id)
                if batch.status == "completed":
                    break
                await asyncio.sleep(0.1)
            models = sorted([m.id async for m in client.models.list()])

        async def metered() -> None:  # the embedded store, and the usage API open on loopback
            async with httpx.AsyncClient() as http:
                params = {"start": "10m", "granularity": "total"}
                got = await http.get(f"{proxy.url}/admin/usage", params=params)
            usage.update(got.json())
            assert usage["totals"]["requests"] == 3  # the chat, the embedding, the batch line

        await eventually(metered)
        async with httpx.AsyncClient(timeout=30) as http:  # the advisor works out of the box too
            advice = (await http.get(f"{proxy.url}/admin/advice", params={"fresh": "1"})).json()
            # ... and the async track: a polled job and a flex request both finish in seconds.
            chat = {"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "later"}]}
            accepted = await http.post(
                f"{proxy.base_url}/chat/completions", json=chat, headers={"Prefer": "respond-async"}
            )
            flex = await http.post(
                f"{proxy.base_url}/chat/completions", json={**chat, "service_tier": "flex"}
            )
            polled = await http.get(proxy.url + accepted.headers["location"])
            for _ in range(100):
                if polled.status_code != 202:
                    break
                await asyncio.sleep(0.1)
                polled = await http.get(proxy.url + accepted.headers["location"])
    finally:
        # uvicorn drains, then re-raises SIGTERM so a supervisor sees how the process ended.
        assert proxy.stop() in (0, -signal.SIGTERM)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-tokenyard-backend"] == "sim-dedicated"
    assert embedding.data[0].embedding
    assert batch.status == "completed"
    assert models == ["llama-3.1-8b-instruct", "text-embedding-small"]
    assert [d["backend"] for d in usage["dedicated"]] == ["sim-dedicated"]
    assert (tmp_path / "tokenyard" / "meter.sqlite3").exists()
    by_workload = {w["workload"]: w for w in advice["workloads"]}
    assert set(by_workload) == {"llama-3.1-8b-instruct", "text-embedding-small"}
    chat = by_workload["llama-3.1-8b-instruct"]
    assert chat["current"]["label"] == "current: 1 × 1×H100-80GB + dedicated serverless"
    # The batch line ran async and is most of the tokens; the real-time rest does not pay for a GPU.
    assert chat["recommended"]["architecture"] == "batch"
    assert chat["recommended"]["realtime_architecture"] == "serverless"
    assert chat["confidence"] == "low"
    assert accepted.status_code == 202
    assert polled.status_code == 200
    assert polled.json()["object"] == "chat.completion"
    assert flex.status_code == 200
    assert flex.headers["x-tokenyard-mode"] == "async"
    log = proxy.log()
    assert "no API keys configured: any bearer key is accepted" in log
    assert "127.0.0.1" in log
    assert "stopped: meter flushed, every backend closed" in log


# `tokenyard serve` with its server replaced by one that enters the upstreams it is given: what they yield,
# and whether the simulator's server module was loaded.
_SERVE_AND_ENTER = """
import asyncio, sys
from tokenyard import cli
from tokenyard.edge import server

given = {}
server.run_server = lambda config, **options: given.update(options)
cli.main(["serve", "--config", sys.argv[1]])

async def enter():
    async with given["upstreams"]() as base_urls:
        return sorted(base_urls)

print(asyncio.run(enter()), "tokenyard.simulator.server" in sys.modules)
"""


def serve_and_enter(config: str, tmp_path: Path) -> str:
    path = tmp_path / "tokenyard.yaml"
    path.write_text(config)
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_ENTER, str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_only_a_config_with_simulated_backends_loads_the_simulator(tmp_path: Path) -> None:
    models = "models:\n  m:\n    deployments: [api]\n"
    real = "backends:\n  api:\n    kind: serverless\n    base_url: http://127.0.0.1:9/v1\n" + models
    assert serve_and_enter(real, tmp_path) == "[] False"
    simulated = "backends:\n  api:\n    kind: serverless\n    simulator: {}\n" + models
    assert serve_and_enter(simulated, tmp_path) == "['api'] True"
