"""Does metering cost throughput? tokenyard at saturation with metering to Redis on, then off.

The proxy is pinned to core 0; the fixed-response upstream, the load generator and a private Redis share
core 1 (each far faster than the proxy; in production Redis is another machine's work). Runs alternate
on/off so drift on a shared machine hits both alike; the table reports medians and the on/off ratio, and
is written to bench/results/meter_overhead.md.

    python -m bench.meter_overhead --runs 5 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from bench.services import (
    OTHER_CORE,
    ROOT,
    cpu_seconds,
    cpu_us_per_request,
    free_port,
    load,
    proxy_config,
    redis_and_upstream,
    serve_command,
    server_on_proxy_core,
)


def _load_args(concurrency: int, seconds: float) -> list[str]:
    return ["--concurrency", str(concurrency), "--seconds", str(seconds)]


def run_proxy(
    config: dict[str, Any], folder: Path, concurrency: int, seconds: float, *load_args: str
) -> dict[str, float]:
    """One proxy on ``config``, loaded for ``seconds`` (``load_args``: more of ``bench.load``'s options)."""
    port = free_port()
    config_path = folder / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with server_on_proxy_core(serve_command(config_path, port), port) as proxy:
        cpu_before = cpu_seconds(proxy.pid)
        result = load(
            OTHER_CORE,
            f"http://127.0.0.1:{port}/v1/chat/completions",
            *_load_args(concurrency, seconds),
            *load_args,
        )
        result["cpu_us_per_request"] = cpu_us_per_request(
            cpu_seconds(proxy.pid) - cpu_before, result, seconds
        )
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stores", default="redis", help="metering stores to compare with off: redis,sqlite")
    args = parser.parse_args()

    modes = ["off", *args.stores.split(",")]
    results: dict[str, list[dict[str, float]]] = {"direct": [], **{mode: [] for mode in modes}}
    with redis_and_upstream(OTHER_CORE) as (redis_url, upstream_port), tempfile.TemporaryDirectory() as tmp:
        results["direct"].append(
            load(
                OTHER_CORE,
                f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                *_load_args(args.concurrency, args.seconds),
            )
        )
        for run in range(args.runs):
            for mode in modes if run % 2 == 0 else modes[::-1]:
                stores = {"off": "off", "redis": redis_url, "sqlite": f"sqlite:///{tmp}/meter-{run}.sqlite3"}
                config = proxy_config(upstream_port, stores[mode])
                result = run_proxy(config, Path(tmp), args.concurrency, args.seconds)
                results[mode].append(result)
                print(
                    f"run {run + 1}/{args.runs} metering {mode:6}: {result['rps']:8.0f} req/s, "
                    f"{result['cpu_us_per_request']:.0f} µs CPU a request",
                    flush=True,
                )
        stored = redis.Redis.from_url(redis_url).dbsize()
    print(f"keys written to Redis: {stored}")

    def median(mode: str, field: str) -> float:
        return statistics.median(r[field] for r in results[mode])

    def errors(mode: str) -> float:
        return sum(r["non_2xx"] + r["failed"] for r in results[mode])

    def cpu(mode: str) -> str:
        return f"{median(mode, 'cpu_us_per_request'):.0f}" if mode != "direct" else "-"

    rows = [
        f"| {mode} | {median(mode, 'rps'):,.0f} | {median(mode, 'p50_ms'):.2f} | "
        f"{median(mode, 'p99_ms'):.2f} | {cpu(mode)} | {errors(mode):.0f} | {len(results[mode])} |"
        for mode in results
    ]

    def ratios(mode: str) -> str:
        rps = median(mode, "rps") / median("off", "rps")
        cpu = median(mode, "cpu_us_per_request") / median("off", "cpu_us_per_request")
        return (
            f"metering to {mode} on / off: throughput {rps:.3f} ({(rps - 1) * 100:+.1f} %), "
            f"CPU per request {cpu:.3f} ({(cpu - 1) * 100:+.1f} %)"
        )

    table = "\n".join(
        [
            f"non-streaming chat, c={args.concurrency}, {args.seconds:g} s per run, proxy pinned to one core "
            f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            "| target | req/s (median) | p50 ms | p99 ms | proxy CPU µs/request | errors | runs |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            *(ratios(mode) for mode in modes[1:]),
        ]
    )
    print("\n" + table)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "meter_overhead.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
