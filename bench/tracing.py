"""What tracing costs on the hot path: tokenyard with metering to Redis and OpenTelemetry traces off,
sampled at 1 % and at 100 %, non-streaming and streaming, side by side in one run.

The proxy is pinned to core 0; the fixed-response upstream, the load generator, a private Redis and a
minimal OTLP/HTTP sink (``bench.otlp_sink``) share core 1. The exporter really runs (protobuf, HTTP, in
its worker thread, on the proxy's core): that is part of the cost. Targets take turns in an order that
rotates from run to run; the table reports medians and each target's ratio to tracing off, and is written
to bench/results/tracing.md.

    python -m bench.tracing --runs 5 --seconds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.meter_overhead import run_proxy
from bench.services import OTHER_CORE, ROOT, free_port, pinned, proxy_config, redis_and_upstream

TARGETS: dict[str, float | None] = {"off": None, "1%": 0.01, "100%": 1.0}


@contextlib.contextmanager
def otlp_sink() -> Iterator[int]:
    """The sink on the load's core; its port."""
    port = free_port()
    sink = subprocess.Popen(
        pinned(OTHER_CORE, sys.executable, "-m", "bench.otlp_sink", "--port", str(port)), cwd=ROOT
    )
    try:
        time.sleep(0.3)
        yield port
    finally:
        sink.terminate()
        sink.wait(10)


def config_for(upstream_port: int, redis_url: str, sink_port: int, ratio: float | None) -> dict[str, Any]:
    config = proxy_config(upstream_port, redis_url)
    if ratio is not None:
        otlp = {"endpoint": f"http://127.0.0.1:{sink_port}", "sample_ratio": ratio}
        config["telemetry"] = {"otlp": otlp}
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    scenarios = {"non-streaming": [], "streaming with usage": ["--stream"]}
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (scenario, target): [] for scenario in scenarios for target in TARGETS
    }
    with (
        redis_and_upstream(OTHER_CORE) as (redis_url, upstream_port),
        otlp_sink() as sink_port,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for run in range(args.runs):
            names = list(TARGETS)
            names = names[run % len(names) :] + names[: run % len(names)]  # rotate who goes first
            for scenario, extra in scenarios.items():
                for target in names:
                    config = config_for(upstream_port, redis_url, sink_port, TARGETS[target])
                    result = run_proxy(config, Path(tmp), args.concurrency, args.seconds, *extra)
                    results[scenario, target].append(result)
                    errors = result["non_2xx"] + result["failed"]
                    print(
                        f"run {run + 1}/{args.runs} {scenario:21} tracing {target:4}: "
                        f"{result['rps']:8.0f} req/s, {result['cpu_us_per_request']:.0f} µs CPU a request, "
                        f"{errors:.0f} errors",
                        flush=True,
                    )

    def median(key: tuple[str, str], field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    rows = []
    for scenario, target in results:
        off = (scenario, "off")
        key = (scenario, target)
        rps, cpu, p50 = median(key, "rps"), median(key, "cpu_us_per_request"), median(key, "p50_ms")
        errors = sum(r["non_2xx"] + r["failed"] for r in results[key])
        rows.append(
            f"| {scenario} | {target} | {rps:,.0f} | {p50:.2f} | {cpu:.0f} | "
            f"{rps / median(off, 'rps'):.3f} | {cpu / median(off, 'cpu_us_per_request'):.3f} | {errors:.0f} |"
        )
    table = "\n".join(
        [
            f"c={args.concurrency}, {args.seconds:g} s per run, {args.runs} runs, metering to Redis on, "
            f"proxy pinned to one core ({os.cpu_count()} cores), "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            "| scenario | tracing | req/s (median) | p50 ms | proxy CPU µs/request | req/s ÷ off | CPU ÷ off "
            "| errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print("\n" + table)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "tracing.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
