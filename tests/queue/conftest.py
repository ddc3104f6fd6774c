"""Fixtures: every ``JobStore`` behind one factory (``tests.support.stores.JobStores``), each test in a
namespace of its own; and a loopback receiver for callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.support.clocks import FakeClock
from tests.support.net import free_port
from tests.support.polling import eventually
from tests.support.redis_servers import redis_url_for
from tests.support.stores import CONTRACT_STORES, JobStores
from tokenyard.queue.store import JobStore


@pytest.fixture(params=CONTRACT_STORES)
async def job_stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[JobStores]:
    stores = JobStores(request.param, tmp_path, clock, redis_url_for(request.param, request))
    try:
        yield stores
    finally:
        await stores.close()


@pytest.fixture
def queue(job_stores: JobStores) -> JobStore:
    return job_stores.open()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, list[tuple[dict[str, str], bytes]]]]:
    """An HTTP server on loopback that keeps every POST it gets."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        got.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    async def started() -> None:
        assert server.started

    await eventually(started)
    try:
        yield port, got
    finally:
        server.should_exit = True
        await task
