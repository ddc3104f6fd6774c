"""What every benchmark starts: free ports, a private Redis, the fixed-response upstream, a proxy config."""

from __future__ import annotations

import contextlib
import json
import os
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
# The proxy gets a core to itself; the upstream, the load generator and Redis share the other.
PROXY_CORE, OTHER_CORE = "0", "1"


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
def server_on_proxy_core(
    command: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` (a server listening on ``port``) pinned to the proxy's core, once it is ready."""
    process = subprocess.Popen(
        pinned(PROXY_CORE, *command), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready")
        yield process
    finally:
        process.terminate()
        process.wait(30)


def wait_listening(port: int, timeout_s: float = 30) -> None:
    """Poll until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def redis_server(core: str | None = None) -> Iterator[str]:
    """A private redis-server (pinned to ``core``), ready; yields its URL."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(pinned(core, *command), stdout=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def python_upstream(core: str | None = None) -> Iterator[int]:
    """The fixed-response upstream, ``bench.upstream`` (pinned to ``core``), ready; yields its port."""
    port = free_port()
    process = subprocess.Popen(
        pinned(core, sys.executable, "-m", "bench.upstream", "--port", str(port)), cwd=ROOT
    )
    try:
        wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def redis_and_upstream(core: str | None = None) -> Iterator[tuple[str, int]]:
    """A private redis-server and the fixed-response upstream; yields (redis URL, upstream port)."""
    with redis_server(core) as redis_url, python_upstream(core) as upstream_port:
        yield redis_url, upstream_port


DRIP_S = 10  # how long each held-open stream lasts


def upstream_paths(upstream_port: int) -> dict[str, str]:
    """The upstream's variants by model name: fast, 20 ms late, and dripping for ``DRIP_S`` seconds."""
    base = f"http://127.0.0.1:{upstream_port}"
    return {
        "bench": f"{base}/v1",
        "bench-slow": f"{base}/slow20/v1",
        "bench-drip": f"{base}/drip/{DRIP_S}/v1",
    }


def proxy_config(upstream_port: int, store: str) -> dict[str, Any]:
    """The proxy config every benchmark runs: a per-token backend for each upstream variant, one key."""
    prices = {"input_per_1m": 0.15, "output_per_1m": 0.6}
    return {
        "backends": {
            # 1,000 held streams need 1,000 upstream connections; the default pool is 512.
            model: {"kind": "serverless", "base_url": url, "prices": prices, "max_connections": 2048}
            for model, url in upstream_paths(upstream_port).items()
        },
        "models": {model: {"deployments": [model]} for model in upstream_paths(upstream_port)},
        "keys": {"bench": {"key": BENCH_KEY}},
        "meter": {"store": store},
        # The advisor's worker process inherits the proxy's pinned core and would take about a second of
        # it during a few-second measurement; it runs once per interval (300 s) in production, and its
        # speed has a bench of its own (bench.advisor).
        "advisor": {"enabled": False},
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WARMUP_S = 1.0  # bench.load's warm-up: requests served but not timed


def cpu_us_per_request(cpu_s: float, result: dict[str, float], seconds: float) -> float:
    """A proxy's CPU µs a request over one ``bench.load`` run of ``seconds`` that took ``cpu_s`` of its CPU;
    the warm-up's requests (served, not timed) are counted at the measured rate."""
    return cpu_s / (result["rps"] * (seconds + WARMUP_S)) * 1e6


def rss_mib(pid: int) -> float:
    """A process's resident set size now, in MiB (Linux reports KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def load(core: str | None, url: str, *args: str) -> dict[str, float]:
    """One run of ``bench.load`` against ``url`` (pinned to ``core``); its JSON result."""
    out = subprocess.run(
        pinned(core, sys.executable, "-m", "bench.load", "--url", url, *args),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def write_results(text: str, out: str | None, name: str, harness: str) -> None:
    """Write a benchmark's table to ``out``, or to ``bench/results/<name>.md`` (``<name>-wrk.md`` under the
    wrk harness), and say where."""
    default = f"{name}-wrk.md" if harness == "wrk" else f"{name}.md"
    path = Path(out) if out else ROOT / "bench" / "results" / default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"\nwritten to {path}")
