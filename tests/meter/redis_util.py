"""Redis for tests: the machine's server at 127.0.0.1:6379 (shared, so tests use their own key prefix), or
a private ``redis-server`` on a free port for tests that stop or restart it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from tests.harness import free_port

REDIS_URL = os.environ.get("TOKENYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key of a meter prefix (its keys all start with ``{prefix}``)."""
    client = aioredis.Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


class RedisServer:
    """A private redis-server with an append-only file, so a restart keeps what was written."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM: it finishes its append-only file first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
