"""The real proxy as a subprocess on loopback: ``python -m tokenyard serve``, exactly as a user starts it.

Its upstreams are simulators in the test's own event loop (``tests.support.simulators``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.support.config import ADMIN_KEY, CLIENT_KEY
from tests.support.net import free_port
from tests.support.stores import sqlite_url


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

    async def admin(self, path: str, **params: str) -> Any:
        """``GET`` an admin route with the admin key: its JSON (it must answer 200)."""
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            got = await http.get(f"{self.url}{path}", params=params)
        assert got.status_code == 200, got.text
        return got.json()

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
        config = {"meter": {"store": sqlite_url(tmp / f"meter-{port}.sqlite3")}, **config}
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


@contextlib.asynccontextmanager
async def running_proxy(
    config: dict[str, Any] | None, tmp: Path, **options: Any
) -> AsyncIterator[ProxyProcess]:
    """``start_proxy``, stopped (SIGTERM) when the block ends."""
    proxy = await start_proxy(config, tmp, **options)
    try:
        yield proxy
    finally:
        proxy.stop()


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``tokenyard`` command to completion and capture what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "tokenyard", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=timeout_s,
        check=False,
    )


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)


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
