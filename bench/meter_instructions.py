"""What metering costs a request in CPU instructions: a measure that machine noise cannot move.

Runs the proxy under valgrind's callgrind with instrumentation switched on only while a fixed number of
requests pass (and the flushes that store them), once per metering mode, and prints instructions per
request and the ratio to metering off. Slow (valgrind), so it sends a few thousand requests.

    python -m bench.meter_instructions --requests 3000 --stores redis,sqlite
    python -m bench.meter_instructions --requests 2000 --stores redis,redis-budget  # a key's budget

``redis-budget`` meters to Redis with a budget on the bench key: every request reserves its worst case in
one atomic round trip and settles after (``proxy/spend.py``); the ratio to ``redis`` is what budgets cost.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.services import ROOT, free_port, proxy_config, redis_and_upstream, serve_command, wait_ready


def fixed_load(url: str, requests: int, stream: bool = False, concurrency: int = 16) -> None:
    command = [sys.executable, "-m", "bench.load_fixed", "--url", url, "--requests", str(requests)]
    command += ["--concurrency", str(concurrency)]
    subprocess.run([*command, "--stream"] if stream else command, check=True, cwd=ROOT)


def instructions(
    store: str,
    upstream_port: int,
    requests: int,
    folder: Path,
    stream: bool = False,
    budget: bool = False,
    concurrency: int = 16,
) -> int:
    """Instructions the proxy executes while ``requests`` requests pass through it, and their flushes."""
    port = free_port()
    config = proxy_config(upstream_port, store)
    if budget:  # never reached: every request reserves and settles, none is refused
        config["keys"]["bench"]["budgets"] = [{"limit_usd": 1_000_000, "window": "30d"}]
    config_path = folder / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = folder / f"callgrind-{port}.out"
    proxy = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *serve_command(config_path, port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", timeout_s=300)
        fixed_load(url, 300, stream)  # warm every code path before counting
        time.sleep(1.5)
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        fixed_load(url, requests, stream, concurrency)
        time.sleep(1.5)  # the flushes that carry these requests to the store
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
    finally:
        proxy.terminate()
        proxy.wait(120)
    total = 0
    for dump in folder.glob(f"callgrind-{port}.out*"):
        for line in dump.read_text().splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--stores", default="redis,sqlite", help="metering stores to compare with off")
    parser.add_argument("--stream", action="store_true", help="streamed chat requests (with usage)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight (budget round trips share at more)"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    counts: dict[str, int] = {}
    with redis_and_upstream() as (redis_url, upstream_port), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stores = {"off": "off", "redis": redis_url, "sqlite": f"sqlite:///{folder}/meter.sqlite3"}
        stores["redis-budget"] = redis_url
        for mode in ["off", *args.stores.split(",")]:
            counts[mode] = instructions(
                stores[mode],
                upstream_port,
                args.requests,
                folder,
                args.stream,
                mode.endswith("-budget"),
                args.concurrency,
            )
            print(
                f"metering {mode:6}: {counts[mode] / args.requests:,.0f} instructions a request", flush=True
            )
    if "redis" in counts and "redis-budget" in counts:
        ratio = counts["redis-budget"] / counts["redis"]
        print(f"a budget on the key / none (both to redis): {ratio:.4f} ({(ratio - 1) * 100:+.2f} %)")
    for mode in counts:
        if mode != "off":
            ratio = counts[mode] / counts["off"]
            print(
                f"metering to {mode} on / off: {ratio:.4f} ({(ratio - 1) * 100:+.2f} %) instructions/request"
            )


if __name__ == "__main__":
    main()
