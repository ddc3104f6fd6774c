"""What every benchmark starts: free ports, a private Redis, the fixed-response upstream, a proxy config."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-key-0000"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout_s: float = 30) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def serve_command(config_path: Path, port: int) -> list[str]:
    """``tokenyard serve`` on a config, quietly."""
    return [
        sys.executable,
        "-m",
        "tokenyard",
        "serve",
        "--config",
        str(config_path),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def pinned(core: str | None, *args: str) -> list[str]:
    """A command line, pinned to one core when ``core`` is given."""
    return ["taskset", "-c", core, *args] if core is not None else list(args)


@contextlib.contextmanager
def redis_and_upstream(core: str | None = None) -> Iterator[tuple[str, int]]:
    """A private redis-server and the fixed-response upstream; yields (redis URL, upstream port)."""
    redis_port, upstream_port = free_port(), free_port()
    redis_server = subprocess.Popen(
        pinned(
            core,
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ),
        stdout=subprocess.DEVNULL,
    )
    upstream = subprocess.Popen(
        pinned(core, sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)), cwd=ROOT
    )
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{redis_port}/0", upstream_port
    finally:
        upstream.terminate()
        redis_server.terminate()
        upstream.wait(10)
        redis_server.wait(10)


def proxy_config(upstream_port: int, store: str) -> dict[str, Any]:
    """The proxy config every benchmark runs: one per-token backend, one model, one key."""
    return {
        "backends": {
            "up": {
                "kind": "serverless",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "prices": {"input_per_1m": 0.15, "output_per_1m": 0.6},
            }
        },
        "models": {"bench": {"deployments": ["up"]}},
        "keys": {"bench": {"key": BENCH_KEY}},
        "meter": {"store": store},
    }
