"""The real upstreams the tier runs against: where their installs are, how each is started and waited for.

The conftest starts them once per session; see its docstring for how they are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.machine_cache import CACHE
from tests.support.net import free_port

HERE = Path(__file__).parent
REQUIRED = os.environ.get("TOKENYARD_REQUIRE_REAL_UPSTREAMS") == "1" or os.environ.get("CI") == "true"
LITELLM_KEY = "sk-litellm-master-0123456789"
# What LiteLLM's mock models answer. Chat and completions share one text; embeddings one vector.
MOCK_TEXT = "The quick brown fox jumps over the lazy dog near the river bank today."
MOCK_VECTOR = [0.1, 0.2, 0.3, 0.4]


def _pinned(script: str, name: str) -> str:
    """A version pinned in one of the install scripts (one source of truth for the cached paths)."""
    found = re.search(rf"^{name}=(\S+)", (HERE / script).read_text(), re.MULTILINE)
    assert found, f"{name} not set in {script}"
    return found.group(1)


LLAMA_SERVER = Path(
    os.environ.get("TOKENYARD_LLAMA_SERVER")
    or CACHE
    / f"llama.cpp-{_pinned('build_llama_server.sh', 'LLAMA_CPP_PYTHON_VERSION')}-"
    f"{_pinned('build_llama_server.sh', 'LLAMA_BUILD')}/bin/llama-server"
)
SMOLLM2 = Path(os.environ.get("TOKENYARD_SMOLLM2_GGUF") or CACHE / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
LITELLM = Path(os.environ.get("TOKENYARD_LITELLM") or CACHE / "litellm-venv/bin/litellm")


def need(path: Path, what: str, how: str) -> None:
    """Skip (or, where real upstreams are required, fail) unless ``path`` exists."""
    if path.exists():
        return
    message = f"{what} not found at {path}: run {how} (.ci/run does)"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Upstream:
    """A real upstream server running as a subprocess on a loopback port."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    ready_path: str
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 180) -> None:
        """Start the server and wait until ``ready_path`` answers 200 (a busy machine loads slowly)."""
        self.proc = self._spawn()
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{self.port}{self.ready_path}")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.name} not ready in {timeout_s} s:\n{self.log()}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        """The server's process, in a session of its own (killed with whatever it starts)."""
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL the server (and anything it started): no goodbye on any connection."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop the server politely, then for sure."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """What the server printed so far (its tail)."""
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def running(upstream: Upstream) -> AsyncIterator[Upstream]:
    """``upstream`` started and answering; stopped when the block ends."""
    try:
        await upstream.start()
        yield upstream
    finally:
        upstream.stop()


def litellm_upstream(folder: Path) -> Upstream:
    """LiteLLM's proxy with mock chat/completions and embedding models."""
    config: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "mock-chat",
                "litellm_params": {
                    "model": "openai/mock-chat",
                    "api_key": "sk-unused",
                    "mock_response": MOCK_TEXT,
                },
            },
            {
                "model_name": "mock-embed",
                "litellm_params": {
                    "model": "openai/text-embedding-3-small",
                    "api_key": "sk-unused",
                    "mock_response": MOCK_VECTOR,
                },
                "model_info": {"mode": "embedding"},
            },
        ],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"telemetry": False},
    }
    config_path = folder / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    # No network for LiteLLM: it would fetch its model price map from the internet at start-up.
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", NO_DOCS="True")
    args = [str(LITELLM), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    return Upstream("litellm", args, port, folder / "litellm.log", "/health/liveliness", env)


def llama_upstream(folder: Path, *, embeddings: bool = False, parallel: int = 2) -> Upstream:
    """llama.cpp's llama-server on SmolLM2-135M-Instruct: small context, one thread, ``parallel`` slots (the
    requests it decodes as one batch; the context is split among them); the chat one serves its Prometheus
    ``/metrics``."""
    port = free_port()
    name = "llama-embed" if embeddings else "llama"
    args = [str(LLAMA_SERVER), "-m", str(SMOLLM2), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-c", str(1024 * parallel), "-t", "1", "-np", str(parallel), "--no-webui", "--log-disable"]
    if embeddings:
        args += ["--embeddings", "--pooling", "mean"]
    else:
        args += ["--metrics"]  # its Prometheus /metrics, which tokenyard scrapes
    return Upstream(name, args, port, folder / f"{name}-{port}.log", "/health")


def need_llama() -> None:
    """Skip (or fail where required) unless llama-server and the model are built/unpacked."""
    for path, what in ((LLAMA_SERVER, "llama.cpp's llama-server"), (SMOLLM2, "SmolLM2-135M-Instruct's GGUF")):
        need(path, what, "tests/real_upstream/build_llama_server.sh")
