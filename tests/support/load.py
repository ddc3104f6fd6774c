"""Steady load on a running proxy: clients that ask again as soon as they are answered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import openai


@contextlib.asynccontextmanager
async def pressing(
    client: openai.AsyncOpenAI, clients: int, one_request: Callable[[openai.AsyncOpenAI], Awaitable[None]]
) -> AsyncIterator[None]:
    """``clients`` loops, each sending ``one_request`` back to back until the block ends; then none of them
    may have failed (the client is closed)."""

    async def client_loop() -> None:
        while True:
            await one_request(client)

    tasks = [asyncio.create_task(client_loop()) for _ in range(clients)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        failures = [r for r in results if not isinstance(r, asyncio.CancelledError)]
        assert not failures, failures
