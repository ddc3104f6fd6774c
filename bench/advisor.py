"""The advisor's speed: 30 days of per-minute traffic for 20 models, evaluated as the proxy's loop does.

    python -m bench.advisor [--runs 5] [--days 30] [--models 20]

Traffic is synthetic but shaped like real traffic, so every candidate does real work: a weekly cycle
(quiet nights and weekends), noise, bursts, prompt-cache hits, and a share that could wait. Each model
sits on a different mix of volume and catalog entry, so the answers range over serverless, hybrid,
dedicated and batch. The timing covers the pure evaluation of every workload (`service.evaluate_all`,
what the background loop runs on its worker thread) — not building the traffic, which the store reads do.
Results go to bench/results/advisor.md.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections import Counter
from datetime import date
from pathlib import Path

from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.service import evaluate_all
from tokenyard.advisor.traffic import Traffic
from tokenyard.config import TokenyardConfig, parse_config

T0 = 1_792_713_600  # Monday 2026-10-26 00:00 UTC
CATALOG_MODELS = ("llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "llama-3.1-70b-instruct", "gpt-oss-120b")
RESULTS = Path(__file__).parent / "results"


def config_for(models: int) -> TokenyardConfig:
    """A config with ``models`` models, each on a serverless API, some async-eligible."""
    lines = [
        "backends:",
        "  api:",
        "    kind: serverless",
        "    base_url: http://127.0.0.1:9/v1",
        "    prices: {input_per_1m: 0.6, output_per_1m: 0.9}",
        "models:",
    ]
    lines += [f"  model-{i}: {{deployments: [api]}}" for i in range(models)]
    lines += ["advisor:", "  workloads:"]
    for i in range(models):
        eligible = ", async_eligible_tenants: [batch]" if i % 3 == 0 else ""
        lines.append(f"    model-{i}: {{catalog_model: {CATALOG_MODELS[i % len(CATALOG_MODELS)]}{eligible}}}")
    return parse_config("\n".join(lines) + "\n", source="bench")


def synthetic_traffic(days: int, scale: float, rng: random.Random) -> Traffic:
    """Per-minute traffic with a weekly cycle, noise and bursts; ``scale`` is peak output tokens/s."""
    minutes = days * 1440
    traffic = Traffic.empty(T0, minutes)
    burst_left = 0
    for i in range(minutes):
        day, hour = (i // 1440) % 7, (i % 1440) / 60
        diurnal = 0.15 + 0.85 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.15
        weekly = 0.4 if day >= 5 else 1.0
        if burst_left == 0 and rng.random() < 0.002:
            burst_left = rng.randint(3, 30)
        burst = 3.0 if burst_left else 1.0
        burst_left = max(0, burst_left - 1)
        out_per_min = scale * 60 * diurnal * weekly * burst * rng.uniform(0.8, 1.2)
        prompt = out_per_min * 4
        traffic.realtime.add(i, out_per_min / 300, prompt, prompt * 0.3, out_per_min)
        if i % 5 == 0:  # a nightly-report-like share that could have waited
            traffic.eligible.add(i, 1, prompt * 0.5, 0, out_per_min * 0.5)
    traffic.first_seen, traffic.last_seen = float(T0), float(T0 + minutes * 60)
    return traffic


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--models", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(7)
    config, catalog = config_for(args.models), load_catalog()
    # Peak output tokens/s per model: from a trickle to enough for several dedicated replicas.
    scales = [10 ** rng.uniform(1, 5) for _ in range(args.models)]
    built = time.perf_counter()
    traffic = {f"model-{i}": synthetic_traffic(args.days, scale, rng) for i, scale in enumerate(scales)}
    built = time.perf_counter() - built
    now = T0 + args.days * 86400
    timings, advices = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        advices, _, skipped = evaluate_all(traffic, config, catalog, now=now, today=date(2026, 11, 29))
        timings.append(time.perf_counter() - started)
        assert not skipped, skipped
    minutes = args.days * 1440
    median = statistics.median(timings)
    verdicts = Counter(a.architecture for a in advices)
    report = "\n".join(
        [
            f"# advisor: {args.models} models × {args.days} days of per-minute traffic "
            f"({minutes:,} minutes each)",
            "",
            f"- evaluation, median of {args.runs}: **{median:.3f} s** "
            f"(min {min(timings):.3f}, max {max(timings):.3f}); target < 2 s",
            f"- per workload: {median / args.models * 1000:.1f} ms; "
            f"building the traffic (not timed): {built:.2f} s",
            f"- recommendations: {', '.join(f'{k} × {v}' for k, v in sorted(verdicts.items()))}",
            f"- candidates per workload: {statistics.mean(len(a.candidates) for a in advices):.1f}, "
            f"cost-curve points: {sum(len(a.curve.points) for a in advices if a.curve):,}",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "advisor.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
