"""What metering costs a request in CPU instructions: a measure that machine noise cannot move.

Runs the proxy under valgrind's callgrind with instrumentation switched on only while a fixed number of
requests pass (and the flushes that store them), once per metering mode, and prints instructions per
request and the ratio to metering off. Slow (valgrind), so it sends a few thousand requests.

    python -m bench.meter_instructions --requests 3000 --stores redis,sqlite
    python -m bench.meter_instructions --requests 2000 --stores redis,redis-budget  # a key's budget
    python -m bench.meter_instructions --requests 2000 --stores redis,bare  # tokenyard ÷ bare

``redis-budget`` meters to Redis with a budget on the bench key: every request reserves its worst case in
one atomic round trip and settles after (``proxy/spend.py``); the ratio to ``redis`` is what budgets cost.

A proxy also works when no request comes: with a Redis store it ticks the async track's dispatcher four
times a second, polls the key ring's version and the live replicas, and so on. Under valgrind a request
takes some fifty times longer, so that work, done per second, would be charged to the requests in the
window. So after the requests, the same proxy is measured idle for ``--idle`` seconds, and each mode is
also given net of that background rate over the requests' window: what a request itself costs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.services import ROOT, free_port, proxy_config, redis_and_upstream, serve_command, wait_ready


def fixed_load(url: str, requests: int, stream: bool = False, concurrency: int = 16) -> None:
    command = [sys.executable, "-m", "bench.load_fixed", "--url", url, "--requests", str(requests)]
    command += ["--concurrency", str(concurrency)]
    subprocess.run([*command, "--stream"] if stream else command, check=True, cwd=ROOT)


@dataclass(frozen=True)
class Count:
    """Instructions a proxy executed while ``requests`` passed (with their flushes), over ``seconds``; and,
    idle afterwards, its background rate."""

    loaded: int
    seconds: float
    background_per_s: float

    def per_request(self, requests: int) -> float:
        return self.loaded / requests

    def net_per_request(self, requests: int) -> float:
        """Per request, without what the proxy does each second anyway."""
        return (self.loaded - self.background_per_s * self.seconds) / requests


BARE = "bare"


def instructions(
    store: str,
    upstream_port: int,
    requests: int,
    folder: Path,
    stream: bool = False,
    budget: bool = False,
    concurrency: int = 16,
    idle_s: float = 10.0,
) -> Count:
    """Instructions the proxy executes while ``requests`` requests pass through it, and their flushes; then
    its rate idle."""
    port = free_port()
    if store == BARE:  # the bare pass-through, as bench.speed runs it: no routing, the path relayed
        command = [sys.executable, "-m", "bench.thin_proxy", "--client", "aiohttp", "--port", str(port)]
        command += ["--connections", "2048"]
        command += ["--upstream", f"http://127.0.0.1:{upstream_port}"]
    else:
        config = proxy_config(upstream_port, store)
        if budget:  # never reached: every request reserves and settles, none is refused
            config["keys"]["bench"]["budgets"] = [{"limit_usd": 1_000_000, "window": "30d"}]
        config_path = folder / f"config-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = serve_command(config_path, port)
    out = folder / f"callgrind-{port}.out"
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def window(work: Callable[[], None]) -> tuple[int, float]:
        """Instructions and seconds while ``work`` runs (instrumentation on only then), from a dump of
        their own."""
        before = set(folder.glob(f"callgrind-{port}.out*"))
        started = time.monotonic()
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        work()
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
        seconds = time.monotonic() - started
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        dumps = set(folder.glob(f"callgrind-{port}.out*")) - before
        return sum(_total(dump) for dump in dumps), seconds

    def loaded() -> None:
        fixed_load(url, requests, stream, concurrency)
        time.sleep(1.5)  # the flushes that carry these requests to the store

    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", timeout_s=300)
        fixed_load(url, 300, stream)  # warm every code path before counting
        time.sleep(1.5)
        count, seconds = window(loaded)
        idle, idle_seconds = window(lambda: time.sleep(idle_s))
    finally:
        proxy.terminate()
        proxy.wait(120)
    return Count(count, seconds, idle / idle_seconds)


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--stores",
        default="redis,sqlite",
        help="metering stores to compare with off; 'bare' adds the bare pass-through (bench.thin_proxy)",
    )
    parser.add_argument("--stream", action="store_true", help="streamed chat requests (with usage)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight (budget round trips share at more)"
    )
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds the proxy is measured idle after the requests"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    counts: dict[str, Count] = {}
    requests = args.requests
    with redis_and_upstream() as (redis_url, upstream_port), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stores = {"off": "off", "redis": redis_url, "sqlite": f"sqlite:///{folder}/meter.sqlite3"}
        stores["redis-budget"] = redis_url
        stores[BARE] = BARE
        for mode in ["off", *args.stores.split(",")]:
            count = counts[mode] = instructions(
                stores[mode],
                upstream_port,
                requests,
                folder,
                args.stream,
                mode.endswith("-budget"),
                args.concurrency,
                args.idle,
            )
            print(
                f"{'bare pass-through' if mode == BARE else f'metering {mode}':17}: "
                f"{count.per_request(requests):,.0f} instructions a request "
                f"({count.net_per_request(requests):,.0f} net of {count.background_per_s:,.0f} a second "
                f"idle, over {count.seconds:.1f} s)",
                flush=True,
            )
    for mode, label in (("redis-budget", "a budget on the key / none (both to redis)"),):
        if mode in counts and "redis" in counts:
            _ratios(label, counts[mode], counts["redis"], requests)
    for mode in counts:
        if mode not in ("off", BARE):
            _ratios(f"metering to {mode} on / off", counts[mode], counts["off"], requests)
    if BARE in counts:
        for mode in counts:
            if mode != BARE:
                _ratios(f"tokenyard, metering {mode} / bare", counts[mode], counts[BARE], requests)


def _ratios(label: str, count: Count, base: Count, requests: int) -> None:
    ratio = count.per_request(requests) / base.per_request(requests)
    net = count.net_per_request(requests) / base.net_per_request(requests)
    print(
        f"{label}: {ratio:.4f} ({(ratio - 1) * 100:+.2f} %) instructions/request, "
        f"net {(net - 1) * 100:+.2f} %"
    )


if __name__ == "__main__":
    main()
