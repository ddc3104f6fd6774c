"""What does scraping engines' /metrics cost? A proxy with 50 backends scraped at the default interval,
against the same proxy scraping none.

One static server (core 1) answers every backend's ``metrics_url`` with a realistic vLLM v1 page (~45 KB: the
gauges and counters tokenyard reads among a dozen latency and size histograms, as a single-GPU vLLM serves
them). Two idle proxies take turns on core 0 — 50 backends with ``metrics_url`` at the default
``engine.interval_s``, and the same 50 without — and the difference in their CPU time over each run is the
scraping's cost, as % of one core. Scrapes are counted from the proxy's own
``tokenyard_engine_scrapes_total``. A second table times the parse alone, and the whole-page parse it
avoids by handing the parser only the lines a profile wants.

    python -m bench.scrape --runs 3 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.services import (
    OTHER_CORE,
    ROOT,
    cpu_seconds,
    free_port,
    pinned,
    serve_command,
    server_on_proxy_core,
)
from tokenyard.capacity.engine import parse_metrics

BACKENDS = 50
ADMIN_KEY = "sk-bench-admin-0000"
MODEL = 'model_name="meta-llama/Llama-3.1-8B-Instruct",engine="0"'
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", LATENCY_BUCKETS),
    ("vllm:time_per_output_token_seconds", LATENCY_BUCKETS),
    ("vllm:inter_token_latency_seconds", LATENCY_BUCKETS),
    ("vllm:e2e_request_latency_seconds", LATENCY_BUCKETS),
    ("vllm:request_queue_time_seconds", LATENCY_BUCKETS),
    ("vllm:request_inference_time_seconds", LATENCY_BUCKETS),
    ("vllm:request_prefill_time_seconds", LATENCY_BUCKETS),
    ("vllm:request_decode_time_seconds", LATENCY_BUCKETS),
    ("vllm:request_prompt_tokens", TOKEN_BUCKETS),
    ("vllm:request_generation_tokens", TOKEN_BUCKETS),
    ("vllm:iteration_tokens_total", TOKEN_BUCKETS),
    ("vllm:request_params_max_tokens", TOKEN_BUCKETS),
    ("vllm:request_params_n", (1, 2, 5, 10, 20)),
)


def vllm_page() -> str:
    """A vLLM v1 /metrics page of realistic size and shape."""
    lines = []
    for gen in range(3):
        lines.append(f'python_gc_objects_collected_total{{generation="{gen}"}} {1000 * (gen + 1)}.0')
    for name in (
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        lines += [f"# HELP {name} Process figure.", f"# TYPE {name} gauge", f"{name} 3.1e+09"]
    gauges = {
        "vllm:num_requests_running": 12,
        "vllm:num_requests_waiting": 0,
        "vllm:kv_cache_usage_perc": 0.41,
    }
    for name, value in gauges.items():
        lines += [f"# HELP {name} A vLLM gauge.", f"# TYPE {name} gauge", f"{name}{{{MODEL}}} {float(value)}"]
    counters = (
        "prompt_tokens",
        "generation_tokens",
        "prefix_cache_queries",
        "prefix_cache_hits",
        "num_preemptions",
    )
    for counter in counters:
        name = f"vllm:{counter}"
        lines += [f"# HELP {name}_total A vLLM counter.", f"# TYPE {name}_total counter"]
        lines += [f"{name}_total{{{MODEL}}} 1.234567e+06", f"{name}_created{{{MODEL}}} 1.7644e+09"]
    for reason in ("stop", "length", "abort"):
        lines.append(f'vllm:request_success_total{{{MODEL},finished_reason="{reason}"}} 4012.0')
    for name, buckets in HISTOGRAMS:
        lines += [f"# HELP {name} A vLLM histogram.", f"# TYPE {name} histogram"]
        lines.append(f"{name}_sum{{{MODEL}}} 6012.25")
        for i, bound in enumerate(buckets):
            lines.append(f'{name}_bucket{{{MODEL},le="{float(bound)}"}} {float(100 * i)}')
        lines += [f'{name}_bucket{{{MODEL},le="+Inf"}} 4323.0', f"{name}_count{{{MODEL}}} 4323.0"]
        lines.append(f"{name}_created{{{MODEL}}} 1.7644e+09")
    lines.append(
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",'
        'gpu_memory_utilization="0.9",num_gpu_blocks="27710"} 1.0'
    )
    return "\n".join(lines) + "\n"


# -- the static /metrics server (a child process) ------------------------------------------------------


async def serve(port: int) -> None:
    """Answer every GET on ``port`` with the page, keeping connections alive."""
    body = vllm_page().encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(one, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def static_server() -> Iterator[int]:
    port = free_port()
    command = pinned(OTHER_CORE, sys.executable, "-m", "bench.scrape", "--serve", str(port))
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


# -- the proxies ---------------------------------------------------------------------------------------


def proxy_config(metrics_port: int | None) -> dict[str, Any]:
    """50 dedicated backends (never sent a request), scraped at the default interval when ``metrics_port``."""
    backends = {}
    for i in range(BACKENDS):
        backend: dict[str, Any] = {
            "kind": "dedicated",
            "base_url": f"http://127.0.0.1:9/b{i}/v1",
            "gpu_type": "H100-80GB",
            "gpus_per_replica": 1,
            "replicas": 1,
            "gpu_hour_price": 2.5,
            "max_concurrency": 16,
        }
        if metrics_port is not None:
            backend["metrics_url"] = f"http://127.0.0.1:{metrics_port}/b{i}/metrics"
        backends[f"b{i}"] = backend
    return {
        "server": {"admin_key": ADMIN_KEY},
        "backends": backends,
        "models": {f"m{i}": {"deployments": [f"b{i}"]} for i in range(BACKENDS)},
        "keys": {"bench": {"key": "sk-bench-key-0000"}},
        "meter": {"store": "off"},
        "advisor": {"enabled": False},
    }


def scrapes_done(port: int) -> float:
    """Scrapes the proxy made, by its own /metrics."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tokenyard_engine_scrapes"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def idle_cpu_s(config: dict[str, Any], folder: Path, seconds: float) -> tuple[float, float]:
    """CPU seconds an idle proxy on ``config`` used over ``seconds`` (after start-up), and its scrapes."""
    port = free_port()
    path = folder / f"config-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    with server_on_proxy_core(serve_command(path, port), port) as proxy:
        time.sleep(2.0)  # start-up's own CPU settles
        scraping = "metrics_url" in config["backends"]["b0"]
        scraped_before = scrapes_done(port) if scraping else 0.0
        before = cpu_seconds(proxy.pid)
        time.sleep(seconds)
        used = cpu_seconds(proxy.pid) - before
        scraped = scrapes_done(port) - scraped_before if scraping else 0.0
    return used, scraped


def parse_costs(repeat: int = 300) -> dict[str, float]:
    """µs per parse of the page: tokenyard's (the wanted lines only) and the parser over the whole page."""
    page = vllm_page()
    started = time.process_time()
    for _ in range(repeat):
        parse_metrics(page, "vllm", scraped_at=0.0, wall_at=0.0)
    ours = (time.process_time() - started) / repeat * 1e6
    started = time.process_time()
    for _ in range(max(1, repeat // 10)):
        for _family in text_string_to_metric_families(page):
            pass
    whole = (time.process_time() - started) / max(1, repeat // 10) * 1e6
    return {"page_kb": len(page.encode()) / 1024, "ours_us": ours, "whole_us": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return

    costs = parse_costs()
    shares, per_scrape_us, scrape_rates = [], [], []
    with static_server() as metrics_port, tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            order = [metrics_port, None] if run % 2 == 0 else [None, metrics_port]
            used: dict[int | None, tuple[float, float]] = {}
            for which in order:
                used[which] = idle_cpu_s(proxy_config(which), Path(tmp), args.seconds)
            (scraping_s, scrapes), (idle_s, _) = used[metrics_port], used[None]
            extra_s = max(0.0, scraping_s - idle_s)
            shares.append(extra_s / args.seconds * 100)
            per_scrape_us.append(extra_s / max(1.0, scrapes) * 1e6)
            scrape_rates.append(scrapes / args.seconds)
            print(
                f"run {run + 1}: scraping proxy {scraping_s:.2f} s CPU, idle proxy {idle_s:.2f} s, "
                f"{scrapes:.0f} scrapes in {args.seconds:g} s",
                flush=True,
            )
    table = [
        "| measure | value |",
        "|---|---:|",
        f"| backends scraped, at the default interval (5 s) | {BACKENDS} |",
        f"| scrapes per second (median) | {statistics.median(scrape_rates):.1f} |",
        f"| scraping's CPU, % of one core (median of {args.runs}) | {statistics.median(shares):.2f} % |",
        f"| scraping's CPU, % of one core (worst run) | {max(shares):.2f} % |",
        f"| CPU per scrape (GET + parse), µs (median) | {statistics.median(per_scrape_us):.0f} |",
        f"| page size, KiB | {costs['page_kb']:.1f} |",
        f"| parse_metrics on the page (wanted lines only), µs | {costs['ours_us']:.0f} |",
        f"| prometheus_client's parser over the whole page, µs | {costs['whole_us']:.0f} |",
    ]
    out = "\n".join(table)
    print(out)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "scrape.md").write_text(out + "\n")


if __name__ == "__main__":
    main()
