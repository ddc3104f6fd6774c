"""Test harness: the real proxy as a subprocess on loopback, simulators as its upstreams.

Simulators run in the test's own event loop (real HTTP servers on free loopback ports) so tests can read
their stats and change their faults; the proxy runs as ``python -m tokenyard serve`` exactly as a user
starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tokenyard.simulator.clock import SystemClock
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

CLIENT_KEY = "sk-test-team-a-0123456789"
OTHER_KEY = "sk-test-team-b-0123456789"
UPSTREAM_SECRET = "sk-upstream-SECRET-do-not-leak-42"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProxyProcess:
    """A running ``tokenyard serve`` subprocess."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, log_path: Path, config_path: Path | None = None
    ) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.config_path = config_path
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def log(self) -> str:
        """What the proxy printed so far."""
        return self.log_path.read_text(errors="replace")

    def client(self, key: str = CLIENT_KEY, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the proxy (no SDK retries: tests see each answer as it is)."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the process and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# Runs the rest of argv with RLIMIT_NOFILE set (soft and hard) to argv[1]: the same pid, a small fd budget.
_WITH_FD_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


async def start_proxy(
    config: dict[str, Any] | None,
    tmp: Path,
    *,
    extra_args: tuple[str, ...] = (),
    fd_limit: int | None = None,
) -> ProxyProcess:
    """Write ``config`` to a file and start the proxy on it (``None``: the built-in quick start), with at
    most ``fd_limit`` file descriptors if given."""
    port = free_port()
    args = [sys.executable, "-m", "tokenyard", "serve", "--port", str(port), *extra_args]
    if fd_limit is not None:
        args = [sys.executable, "-c", _WITH_FD_LIMIT, str(fd_limit), *args]
    config_path = None
    if config is not None:
        # Each proxy meters into its own store unless the test says where; it stops without the unready
        # pause a load balancer needs (tests of that pause set it).
        config = {"meter": {"store": f"sqlite:///{tmp}/meter-{port}.sqlite3"}, **config}
        config["server"] = {"unready_s": 0, **config.get("server", {})}
        config_path = tmp / f"config-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        args += ["--config", str(config_path)]
    log_path = tmp / f"proxy-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "TOKENYARD_CONFIG"}
    env["XDG_DATA_HOME"] = str(tmp)  # the built-in config's embedded store lands in the test's folder
    proc = _spawn(args, log_path, env)
    proxy = ProxyProcess(proc, port, log_path, config_path)
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {proc.returncode}:\n{proxy.log()}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"http://127.0.0.1:{port}/health/ready")).status_code == 200:
                    return proxy
            await asyncio.sleep(0.05)
    proxy.stop(signal.SIGKILL)
    raise RuntimeError(f"proxy not ready in 30 s:\n{proxy.log()}")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``tokenyard`` command to completion and capture what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "tokenyard", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)


@contextlib.asynccontextmanager
async def simulators(**configs: SimulatorConfig) -> AsyncIterator[dict[str, SimulatorServer]]:
    """Start one in-process simulator per keyword, each on a free loopback port."""
    async with contextlib.AsyncExitStack() as stack:
        servers = {
            name: await stack.enter_async_context(SimulatorServer(config.model_copy(update={"name": name})))
            for name, config in configs.items()
        }
        yield servers


class GatedClock(SystemClock):
    """A simulator clock that keeps real time but holds every wait until the test opens its gate: requests
    already at the upstream stay there, however slow the machine, until the test lets them go on."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()
        await asyncio.sleep(seconds)


def backend(kind: str, base_url: str, *, max_concurrency: int | None = None, **extra: Any) -> dict[str, Any]:
    """A backend section for a config dict (dedicated ones get GPU fields)."""
    section: dict[str, Any] = {"kind": kind, "base_url": base_url, "api_key": UPSTREAM_SECRET, **extra}
    if kind == "dedicated":
        section.update(
            gpu_type="H100-80GB",
            gpus_per_replica=1,
            replicas=1,
            gpu_hour_price=2.5,
            max_concurrency=max_concurrency or 4,
        )
    elif max_concurrency is not None:
        section["max_concurrency"] = max_concurrency
    return section


def keys_section() -> dict[str, Any]:
    """Two tenants: team-a may use every model, team-b only ``small``."""
    return {
        "team-a": {"key": CLIENT_KEY},
        "team-b": {"key": OTHER_KEY, "models": ["small"]},
    }


@contextlib.asynccontextmanager
async def raw_stream(proxy: ProxyProcess, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
    """A chat completion's raw HTTP response, to read as it arrives (leaving the block hangs up)."""
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            f"{proxy.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as resp,
    ):
        yield resp


async def leave_after(proxy: ProxyProcess, body: dict[str, Any], chunks: int) -> None:
    """Start a streamed chat completion, read ``chunks`` network chunks of it, then hang up."""
    async with raw_stream(proxy, body) as resp:
        got = 0
        async for _ in resp.aiter_raw():
            got += 1
            if got == chunks:
                return


async def sim_stats(sim: SimulatorServer) -> dict[str, Any]:
    """A simulator's live counters, over its control API."""
    async with httpx.AsyncClient() as http:
        stats: dict[str, Any] = (await http.get(f"http://127.0.0.1:{sim.port}/sim/stats")).json()
        return stats


async def sim_requests(sim: SimulatorServer, limit: int = 50) -> list[dict[str, Any]]:
    """The last requests a simulator received (method, path, headers, body)."""
    async with httpx.AsyncClient() as http:
        got: list[dict[str, Any]] = (
            await http.get(f"http://127.0.0.1:{sim.port}/sim/requests", params={"limit": limit})
        ).json()
        return got


async def set_faults(sim: SimulatorServer, **faults: Any) -> None:
    """Replace a simulator's live faults."""
    async with httpx.AsyncClient() as http:
        (await http.post(f"http://127.0.0.1:{sim.port}/sim/faults", json=faults)).raise_for_status()


async def reset(*sims: SimulatorServer) -> None:
    """Zero the simulators' counters and restore their configured faults."""
    async with httpx.AsyncClient() as http:
        for sim in sims:
            (await http.post(f"http://127.0.0.1:{sim.port}/sim/reset")).raise_for_status()


async def eventually(check: Any, timeout_s: float = 10.0) -> None:
    """Poll an async ``check`` until it stops raising AssertionError (for effects that land a bit later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
