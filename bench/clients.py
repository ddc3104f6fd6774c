"""Which upstream HTTP client can carry the proxy? The thinnest proxy over each, then tokenyard itself.

Each target is ``bench.thin_proxy`` with one client (aiohttp, httpx, httpx2, and httpx over aiohttp if
``httpx-aiohttp`` is installed), pinned to core 0, under non-streaming load at c=64 from core 1; tokenyard
(metering off) runs last in each round for scale. Targets take turns within each run, in an order that
rotates, and the table gives medians. Written to ``bench/results/clients.md``.

    python -m bench.clients --runs 3 --seconds 4
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.services import (
    OTHER_CORE,
    ROOT,
    free_port,
    load,
    proxy_config,
    redis_and_upstream,
    serve_command,
    server_on_proxy_core,
)
from bench.thin_proxy import CLIENTS


def installed(client: str) -> bool:
    return importlib.util.find_spec(client.replace("-", "_")) is not None


def measure(command: list[str], port: int, concurrency: int, seconds: float) -> dict[str, float]:
    with server_on_proxy_core(command, port):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return load(OTHER_CORE, url, "--concurrency", str(concurrency), "--seconds", str(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    clients = [client for client in CLIENTS if installed(client)]
    missing = [client for client in CLIENTS if client not in clients]
    if missing:
        print(f"not installed, not measured: {', '.join(missing)}")
    targets = [*clients, "tokenyard"]
    results: dict[str, list[dict[str, float]]] = {target: [] for target in targets}
    with redis_and_upstream(OTHER_CORE) as (_, upstream_port), tempfile.TemporaryDirectory() as tmp:
        upstream = f"http://127.0.0.1:{upstream_port}"  # the thin proxy appends the path
        config_path = Path(tmp) / "tokenyard.yaml"
        config_path.write_text(yaml.safe_dump(proxy_config(upstream_port, "off")))
        for run in range(args.runs):
            shift = run % len(clients)
            for target in [*clients[shift:], *clients[:shift], "tokenyard"]:
                port = free_port()
                if target == "tokenyard":
                    command = serve_command(config_path, port)
                else:
                    command = [sys.executable, "-m", "bench.thin_proxy", "--client", target]
                    command += ["--port", str(port), "--upstream", upstream]
                results[target].append(measure(command, port, args.concurrency, args.seconds))
            print(
                f"run {run + 1}/{args.runs}: "
                + ", ".join(f"{t} {results[t][-1]['rps']:,.0f} req/s" for t in targets),
                flush=True,
            )

    def median(target: str, field: str) -> float:
        return statistics.median(r[field] for r in results[target])

    lines = [
        f"upstream clients, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the thinnest ASGI proxy "
        f"on one core, non-streaming, c={args.concurrency}, {args.runs} runs of {args.seconds:g} s, medians",
        "",
        "| proxy | upstream client | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for target in targets:
        errors = sum(r["non_2xx"] + r["failed"] for r in results[target])
        what = ("tokenyard, metering off", "aiohttp") if target == "tokenyard" else ("thin", target)
        lines.append(
            f"| {what[0]} | {what[1]} | {median(target, 'rps'):,.0f} | {median(target, 'p50_ms'):.2f} | "
            f"{median(target, 'p99_ms'):.2f} | {errors:.0f} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    out = ROOT / "bench" / "results" / "clients.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
