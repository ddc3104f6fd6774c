"""The command-line entry point, run as a real subprocess."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx

import tokenyard
from tokenyard.simulator.cli import add_arguments, config_from_args

SRC_DIR = Path(tokenyard.__file__).resolve().parents[1]


def test_options_map_onto_the_config_and_unset_ones_keep_its_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--mode",
            "dedicated",
            "--model",
            "a",
            "--model",
            "b",
            "--max-concurrency",
            "3",
            "--error-status",
            "429",
            "--max-output-tokens",
            "64",
        ]
    )
    config = config_from_args(args)
    assert config.max_output_tokens == 64
    assert (config.mode, config.models, config.max_concurrency) == ("dedicated", ["a", "b"], 3)
    assert (config.faults.error_status, config.faults.error_rate, config.ttft_ms) == (429, 0.0, 20.0)
    assert (args.host, args.port) == ("127.0.0.1", 8100)


async def test_python_dash_m_serves_until_sigterm() -> None:
    # The package may not be installed yet; point the child at this source tree either way.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tokenyard.simulator", "--port", "0", "--name", "sub", "--ttft-ms", "1"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=10)).decode()
        match = re.fullmatch(
            r"simulator sub \(serverless\) listening on (http://127\.0\.0\.1:\d+/v1)\n", line
        )
        assert match, line
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{match[1]}/models")
        assert response.json()["data"][0]["id"] == "sim-model"
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 0
