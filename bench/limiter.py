"""How fast does the adaptive limit find the SLA's concurrency, and how close does it stay?

The limiter (``tokenyard.capacity.limiter``) is driven against a model of an engine in virtual time (no
sleeps, no sockets): continuous batching shares ``aggregate`` tokens/s among the running streams, each
capped at ``per_stream_max`` (the simulator's capacity model, and vLLM's decode-bound regime); time to first
token is ``ttft_floor + ttft_per_stream × running``. Enough clients keep the limit pressed (the surplus
spills over elsewhere). Each request runs at its own efficiency, lognormal with ``noise`` (the spread a real
engine and a busy proxy add). The true limit is computed from the model: the most streams at which the SLA's
percentile holds (with noise, the slowest 5 % of streams must still meet the target); the table reports

- convergence: answers (and simulated seconds) until the limit is within 15 % of the true one and stays;
- steady-state error: mean |limit - true| / true over the second half of each phase;
- breached: the share of answers that missed the SLA over the same half (the allowance is 5 % at p95).

    python -m bench.limiter
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from statistics import NormalDist

from tokenyard.capacity.limiter import AdaptiveLimit, LimiterTuning
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import Sla


@dataclass(frozen=True)
class Engine:
    aggregate: float = 600.0  # tokens/s shared by the running streams
    per_stream_max: float = 400.0
    ttft_floor_s: float = 0.02
    ttft_per_stream_s: float = 0.0
    tokens: int = 16  # completion tokens per request
    noise: float = 0.03  # lognormal sigma of a request's efficiency


@dataclass(frozen=True)
class Scenario:
    name: str
    sla: Sla
    phases: list[tuple[float, int]]  # (capacity scale, answers in the phase)
    engine: Engine = Engine()
    ceiling: int = 64


def true_limit(engine: Engine, sla: Sla, scale: float) -> int:
    """The most streams at which the SLA's percentile still meets every target: the slowest
    (100 - percentile) % of streams, whose efficiency is the noise's low quantile, decode at the target."""
    low_tail = math.exp(engine.noise * NormalDist().inv_cdf(1 - sla.percentile / 100))
    best = 0
    for n in range(1, 10_000):
        rate = min(engine.per_stream_max, engine.aggregate * scale / n) * low_tail
        ttft_ms = (engine.ttft_floor_s + engine.ttft_per_stream_s * n) * 1000
        if sla.min_stream_tokens_per_s is not None and rate < sla.min_stream_tokens_per_s:
            break
        if sla.ttft_p95_ms is not None and ttft_ms > sla.ttft_p95_ms:
            break
        best = n
    return best


@dataclass
class _Stream:
    admitted_s: float
    first_token_s: float
    concurrency: int
    efficiency: float
    left: float  # tokens after the first


def run(scenario: Scenario, seed: int) -> list[dict[str, float]]:
    """Answers and limits, phase by phase: one row per phase."""
    engine, sla = scenario.engine, scenario.sla
    rng = random.Random(seed)
    limiter = AdaptiveLimit(sla, scenario.ceiling, LimiterTuning())
    now = 0.0
    running: list[_Stream] = []
    rows = []
    for scale, answers in scenario.phases:
        truth = true_limit(engine, sla, scale)
        limits: list[int] = []
        breached = 0
        converged_at: tuple[int, float] | None = None
        started_s = now
        for index in range(answers):
            while len(running) < limiter.current:  # clients enough to press any limit
                ttft = engine.ttft_floor_s + engine.ttft_per_stream_s * (len(running) + 1)
                efficiency = math.exp(rng.gauss(0.0, engine.noise))
                running.append(_Stream(now, now + ttft, len(running) + 1, efficiency, engine.tokens - 1))
            now, done = _next_answer(running, engine, scale, now)
            sample = LatencySample(
                ttft_s=done.first_token_s - done.admitted_s,
                latency_s=now - done.admitted_s,
                prompt_tokens=100,
                completion_tokens=engine.tokens,
                streamed=True,
                concurrency=max(done.concurrency, len(running) + 1),  # as the proxy counts it
                ended_at=now,
            )
            limiter.observe(sample)
            limits.append(limiter.current)
            within = abs(limiter.current - truth) <= 0.15 * truth
            if not within:
                converged_at = None
            elif converged_at is None:
                converged_at = (index + 1, now - started_s)
            if index >= answers // 2:
                rate = sample.stream_tokens_per_s
                target_rate, target_ttft = sla.min_stream_tokens_per_s, sla.ttft_p95_ms
                missed = target_rate is not None and rate is not None and rate < target_rate
                missed = missed or (target_ttft is not None and sample.ttft_s * 1000 > target_ttft)
                breached += missed
        half = limits[answers // 2 :]
        rows.append(
            {
                "scale": scale,
                "true": truth,
                "final": limiter.current,
                "answers": converged_at[0] if converged_at else math.nan,
                "seconds": converged_at[1] if converged_at else math.nan,
                "error": sum(abs(limit - truth) for limit in half) / len(half) / truth,
                "breached": breached / len(half),
            }
        )
    return rows


def _next_answer(running: list[_Stream], engine: Engine, scale: float, now: float) -> tuple[float, _Stream]:
    """Advance the engine to its next finished stream (processor sharing, piecewise constant rates)."""
    while True:
        rate = min(engine.per_stream_max, engine.aggregate * scale / len(running))
        decoding = [s.first_token_s <= now for s in running]
        step, index = min(
            (s.left / (rate * s.efficiency) if on else s.first_token_s - now, i)
            for i, (s, on) in enumerate(zip(running, decoding, strict=True))
        )
        for stream, on in zip(running, decoding, strict=True):
            if on:
                stream.left -= rate * stream.efficiency * step
        now += step
        if decoding[index]:
            return now, running.pop(index)


SCENARIOS = [
    Scenario(
        "rate 30/s, 600 tok/s, no noise", Sla(min_stream_tokens_per_s=30), [(1.0, 3000)], Engine(noise=0)
    ),
    Scenario("rate 30/s, 600 tok/s, noise 3 %", Sla(min_stream_tokens_per_s=30), [(1.0, 3000)]),
    Scenario(
        "rate 30/s, capacity ×0.5 then ×1",
        Sla(min_stream_tokens_per_s=30),
        [(1.0, 2000), (0.5, 2000), (1.0, 2000)],
    ),
    Scenario("rate 30/s, noise 10 %", Sla(min_stream_tokens_per_s=30), [(1.0, 3000)], Engine(noise=0.10)),
    Scenario(
        "ttft p95 300 ms (50 + 10/stream)",
        Sla(ttft_p95_ms=300),
        [(1.0, 3000)],
        Engine(ttft_floor_s=0.05, ttft_per_stream_s=0.01, aggregate=6000),
    ),
    Scenario(
        "both, 2000 tok/s, 64 tokens",
        Sla(min_stream_tokens_per_s=40, ttft_p95_ms=500),
        [(1.0, 3000), (0.6, 3000)],
        Engine(aggregate=2000, per_stream_max=120, ttft_floor_s=0.05, ttft_per_stream_s=0.004, tokens=64),
        ceiling=128,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per scenario (the table shows the worst)")
    args = parser.parse_args()
    header = (
        f"{'scenario':<36} {'phase':>5} {'true':>5} {'final':>5} {'conv. answers':>13} {'conv. s':>8}"
        f" {'ss error':>8} {'breached':>8}"
    )
    print(header)
    print("-" * len(header))
    for scenario in SCENARIOS:
        runs = [run(scenario, seed) for seed in range(args.seeds)]
        for phase in range(len(scenario.phases)):
            rows = [r[phase] for r in runs]
            worst = {
                "true": rows[0]["true"],
                "final": min(r["final"] for r in rows),
                "answers": max(r["answers"] for r in rows),
                "seconds": max(r["seconds"] for r in rows),
                "error": max(r["error"] for r in rows),
                "breached": max(r["breached"] for r in rows),
            }
            print(
                f"{scenario.name if phase == 0 else '':<36} {'×' + format(rows[0]['scale'], 'g'):>5}"
                f" {worst['true']:>5.0f} {worst['final']:>5.0f} {worst['answers']:>13.0f}"
                f" {worst['seconds']:>8.1f} {worst['error']:>8.1%} {worst['breached']:>8.1%}"
            )
    print(f"\nworst of {args.seeds} seeds per scenario; converged: within 15 % of the true limit, and stays")


if __name__ == "__main__":
    main()
