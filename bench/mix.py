"""The GPU-mix advice's cost: 20 models × 4 GPU types × 36 shape buckets × a 30-day window, against the
advisor's 2 s budget; and the solver (HiGHS, in process) against PuLP's CBC on the same instances.

    python -m bench.mix [--models 20] [--types 4] [--shapes 36] [--days 30] [--no-pulp]

Each model's traffic is per-minute requests per shape: a weekly cycle whose shape mix shifts from chat-like
by day to long-context at night, with noise. Each GPU type's table is requests/s per shape: a bigger GPU
serves every shape faster and costs more per hour, and serves long shapes relatively better (as Mélange's
profiles show). Timed: ``fleet.mix_candidates`` per model (both candidates: the always-on mix with its
sizings and replay, and a mix per 4 h of the week) — building the traffic is not timed. The solver
comparison times ``mix.solve`` against the same model in PuLP/CBC (when ``pulp`` is installed: it is in the
``bench`` extra) on the per-period sizings of the first models. Results go to bench/results/mix.md.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from pathlib import Path

from tokenyard.advisor import fleet
from tokenyard.advisor.fleet import Demand
from tokenyard.advisor.mix import GpuType, _lower_bound, best_single, solve

T0 = 1_792_713_600  # Monday 2026-10-26 00:00 UTC
RESULTS = Path(__file__).parent / "results"


def gpu_types(count: int, shapes: int, rng: random.Random) -> list[GpuType]:
    """``count`` types from small and cheap to big and dear; capacity falls with the shape's size."""
    out = []
    for g in range(count):
        speed = 2.0**g
        cells = []
        for k in range(shapes):
            size = 1 + k / shapes * 9  # 1 (short chat) .. 10 (long context)
            cells.append(speed * 20 / size ** (1.3 - 0.1 * g) * rng.uniform(0.9, 1.1))
        out.append(GpuType(f"gpu{g}", 1.0 * speed**0.9, tuple(cells)))
    return out


def demand(days: int, shapes: int, scale: float, rng: random.Random) -> Demand:
    """Requests per busy minute and shape, chat-like by day and long-context at night."""
    minutes = days * 1440
    columns = [[0.0] * minutes for _ in range(shapes)]
    for i in range(minutes):
        hour = (i % 1440) / 60
        day = 0.2 + 0.8 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.2
        for k in range(shapes):
            long = k / shapes
            share = (1 - long) if 6 <= hour <= 20 else long  # the mix shifts at night
            columns[k][i] = scale * day * share * rng.uniform(0.7, 1.3) / shapes
    return Demand(
        list(range(minutes)), columns, minutes, T0, [0.0002 * (1 + 9 * k / shapes) for k in range(shapes)]
    )


def pulp_solve(types: list[GpuType], rates: tuple[float, ...], slices: int) -> float:
    """The same model in PuLP, solved by its bundled CBC: $/h of the optimum."""
    import pulp

    active = [k for k, r in enumerate(rates) if r > 0]
    problem = pulp.LpProblem("mix", pulp.LpMinimize)
    y = {
        (k, g): pulp.LpVariable(f"y_{k}_{g}", 0, slices, cat="Integer")
        for k in active
        for g in range(len(types))
    }
    n = [pulp.LpVariable(f"n_{g}", 0, cat="Integer") for g in range(len(types))]
    problem += pulp.lpSum(t.usd_per_h * n[g] for g, t in enumerate(types))
    for k in active:
        problem += pulp.lpSum(y[(k, g)] for g in range(len(types))) == slices
    for g, t in enumerate(types):
        problem += pulp.lpSum(y[(k, g)] * rates[k] / slices / t.requests_per_s[k] for k in active) <= n[g]
    problem.solve(pulp.PULP_CBC_CMD(msg=False))
    return float(pulp.value(problem.objective))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--types", type=int, default=4)
    parser.add_argument("--shapes", type=int, default=36)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--no-pulp", action="store_true")
    args = parser.parse_args()
    rng = random.Random(20)
    types = gpu_types(args.types, args.shapes, rng)
    scales = [10 ** rng.uniform(1, 3.5) for _ in range(args.models)]  # requests a minute at the peak
    demands = [demand(args.days, args.shapes, scale, rng) for scale in scales]
    timings, saving = [], []
    for d in demands:
        started = time.perf_counter()
        results = fleet.mix_candidates(types, d, slices=8, period_min=240)
        timings.append(time.perf_counter() - started)
        for r in results:
            if r.single_cost.total_usd > 0:
                saving.append(1 - r.cost.total_usd / r.single_cost.total_usd)
    total = sum(timings)
    lines = [
        f"# GPU mixes: {args.models} models × {args.types} GPU types × {args.shapes} shapes × "
        f"{args.days} days",
        "",
        f"- `mix_candidates`, all models: **{total:.2f} s** (advisor budget 2 s); per model median "
        f"{statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms",
        "- saving of a mix over the best single type sized the same way: "
        f"median {statistics.median(saving):.1%}, max {max(saving):.1%} ({len(saving)} candidates)",
    ]
    if not args.no_pulp:
        lines += compare_solvers(types, demands)
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mix.md").write_text(report + "\n")


def compare_solvers(types: list[GpuType], demands: list[Demand]) -> list[str]:
    """HiGHS (``mix.solve``) against PuLP/CBC on the per-period peak sizings of ``demands``."""
    try:
        import pulp  # noqa: F401
    except ImportError:
        return ["- PuLP not installed (`pip install -e '.[bench]'`): no solver comparison"]
    sizings = []
    for d in demands:
        for start in range(0, 7 * 1440, 240):
            span = range(start, min(start + 240, d.minutes))
            sizings.append(tuple(max(col[i] for i in span) / 60 for col in d.columns))
    # Only the instances the solver is asked about: ``solve`` answers the rest from a bound, no MIP.
    sizings = [
        rates
        for rates in sizings
        if best_single(types, rates).usd_per_h
        > _lower_bound(types, rates, [k for k, r in enumerate(rates) if r > 0]) + 1e-9
    ]
    if not sizings:
        return ["- solver: every instance was answered from the bound; nothing to compare"]
    highs_s = cbc_s = 0.0
    worst = 0.0
    for rates in sizings:
        started = time.perf_counter()
        ours = solve(types, rates, slices=8).usd_per_h
        highs_s += time.perf_counter() - started
        started = time.perf_counter()
        theirs = pulp_solve(types, rates, 8)
        cbc_s += time.perf_counter() - started
        worst = max(worst, abs(ours - theirs))
    return [
        f"- solver, {len(sizings)} instances that need it: HiGHS (highspy, in process) "
        f"{highs_s / len(sizings) * 1000:.1f} ms each, PuLP/CBC (a subprocess per solve) "
        f"{cbc_s / len(sizings) * 1000:.1f} ms each "
        f"(×{cbc_s / highs_s:.1f}); largest difference in the optimum ${worst:.6f}/h",
    ]


if __name__ == "__main__":
    main()
