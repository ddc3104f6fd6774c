"""The speed benchmark's figures: every run's result by target and scenario, their medians and per-run
pairs, and the tables ``bench.speed`` prints and writes."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from dataclasses import dataclass

from bench.services import ROOT

HELD_STREAMS = 1000

Result = dict[str, float]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    model: str
    concurrency: int = 0
    stream: bool = False
    hold: int = 0  # open this many streams at once and hold them to the end, instead of a closed loop

    def load_args(self, seconds: float) -> tuple[str, ...]:
        """``bench.load``'s arguments for this scenario (the model aside)."""
        if self.hold:
            return ("--hold", str(self.hold))
        stream = ("--stream",) if self.stream else ()
        return ("--concurrency", str(self.concurrency), *stream, "--seconds", str(seconds))


HARNESSES = {
    "python": ("upstream direct", "bench.upstream (asyncio) under bench.load (aiohttp)"),
    "wrk": ("nginx direct", "nginx with the echo module under wrk (1 thread, a Lua script)"),
}


def measured_commit() -> str:
    """The commit measured, and the top-level folders with uncommitted changes if any."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    # Porcelain lines are "XY path": two status letters (either may be a space), a space, the path.
    changed = sorted({line[3:].split("/")[0] for line in git("status", "--porcelain").splitlines()})
    return f"{commit} (uncommitted changes in {', '.join(changed)})" if changed else commit


class Results:
    """Every run's result by (target, scenario); medians, errors and the tables."""

    def __init__(self, cases: list[Scenario], harness: str = "python") -> None:
        self.cases = cases
        self.keys = {case.key for case in cases}
        self.harness = harness
        self.labels = (
            ("direct", HARNESSES[harness][0]),
            ("bare", "bare pass-through"),
            ("bare-h1", "bare pass-through over tokenyard's client"),
            ("off", "tokenyard, metering off"),
            ("redis", "tokenyard, metering to Redis"),
            ("base-off", "baseline, metering off"),
            ("base-redis", "baseline, metering to Redis"),
        )
        self.runs: dict[tuple[str, str], list[Result]] = {}
        self.capacity: dict[str, float | None] = {}  # the upstream's own req/s under wrk, by scenario

    def add(self, mode: str, key: str, result: Result) -> None:
        self.runs.setdefault((mode, key), []).append(result)

    def median(self, mode: str, key: str, field: str) -> float:
        return statistics.median(r[field] for r in self.runs[(mode, key)])

    def paired(self, mode: str, base: str, key: str, field: str, ratio: bool) -> float:
        """The median over runs of ``mode`` against ``base`` measured in the same run (ratio or difference):
        each pair ran minutes apart at most, so drift on a shared machine cancels out of it."""
        pairs = zip(self.runs[(mode, key)], self.runs[(base, key)], strict=True)
        return statistics.median(a[field] / b[field] if ratio else a[field] - b[field] for a, b in pairs)

    def errors(self, mode: str, key: str) -> int:
        return int(sum(r["non_2xx"] + r["failed"] for r in self.runs[(mode, key)]))

    def progress(self) -> str:
        """The latest run, one figure per scenario and target."""
        parts = []
        for case in self.cases:
            for mode, _ in self.labels:
                last = self.runs.get((mode, case.key), [{}])[-1]
                if "rps" in last:
                    parts.append(f"{case.key}/{mode} {last['rps']:,.0f} req/s")
                elif "rss_mib" in last:
                    parts.append(f"{case.key}/{mode} {last['rss_mib']:.0f} MiB")
        return ", ".join(parts)

    def table(self) -> list[str]:
        lines = [
            "| scenario | target | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy RSS MiB | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for case in self.cases:
            for mode, label in self.labels:
                if (mode, case.key) not in self.runs:
                    continue
                timed = "rps" in self.runs[(mode, case.key)][0]
                rps = f"{self.median(mode, case.key, 'rps'):,.0f}" if timed else "-"
                cpu = f"{self.median(mode, case.key, 'cpu_us'):.0f}" if mode != "direct" and timed else "-"
                rss = f"{self.median(mode, case.key, 'rss_mib'):.1f}" if mode != "direct" else "-"
                p50, p99 = self.median(mode, case.key, "p50_ms"), self.median(mode, case.key, "p99_ms")
                lines.append(
                    f"| {case.key}. {case.title} | {label} | {rps} | {p50:.2f} | {p99:.2f} | {cpu} | {rss} | "
                    f"{self.errors(mode, case.key)} |"
                )
        return lines

    def against_bare(self) -> list[str]:
        """tokenyard against the bare pass-through, per scenario: medians of per-run pairs. The CPU a
        request above the bare one is what tokenyard's own work costs."""
        if ("bare", self.cases[0].key) not in self.runs:
            return []
        lines = [
            "",
            "tokenyard against the bare pass-through (medians of per-run pairs; CPU: the proxy process's "
            "user + system time, µs a request):",
            "",
            "| scenario | req/s ÷ bare, off | req/s ÷ bare, Redis | p50 − bare ms, off "
            "| p50 − bare ms, Redis | CPU bare | CPU off | CPU Redis | own work, off − bare "
            "| own work, Redis − bare |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for case in self.cases:
            key = case.key
            if case.hold:
                rss = {mode: self.median(mode, key, "rss_mib") for mode in ("bare", "off", "redis")}
                lines += [
                    "",
                    f"{key}. {case.title}, peak RSS: bare {rss['bare']:.1f} MiB, "
                    f"tokenyard off {rss['off']:.1f}, to Redis {rss['redis']:.1f} (paired, Redis − bare: "
                    f"{self.paired('redis', 'bare', key, 'rss_mib', ratio=False):+.1f} MiB)",
                ]
                continue
            ratios = [self.paired(mode, "bare", key, "rps", ratio=True) for mode in ("off", "redis")]
            p50s = [self.paired(mode, "bare", key, "p50_ms", ratio=False) for mode in ("off", "redis")]
            cpus = [self.median(mode, key, "cpu_us") for mode in ("bare", "off", "redis")]
            own = [self.paired(mode, "bare", key, "cpu_us", ratio=False) for mode in ("off", "redis")]
            lines.append(
                f"| {key}. {case.title} | {ratios[0]:.2f} | {ratios[1]:.2f} | {p50s[0]:+.2f} | "
                f"{p50s[1]:+.2f} | {cpus[0]:.0f} | {cpus[1]:.0f} | {cpus[2]:.0f} | {own[0]:+.0f} | "
                f"{own[1]:+.0f} |"
            )
        return lines

    def against_bare_h1(self) -> list[str]:
        """tokenyard against the bare pass-through over its own HTTP/1.1 client (``--bare-http1``): what
        tokenyard's own work costs above the limit on the client it uses."""
        if ("bare-h1", self.cases[0].key) not in self.runs:
            return []
        lines = [
            "",
            "tokenyard (metering to Redis) against the bare pass-through over the same client "
            "(medians of per-run pairs):",
        ]
        for case in self.cases:
            key = case.key
            if case.hold:
                rss = self.paired("redis", "bare-h1", key, "rss_mib", ratio=False)
                lines.append(f"- {key}. {case.title}: peak RSS {rss:+.1f} MiB")
            elif key == "c":
                p50 = self.paired("redis", "bare-h1", key, "p50_ms", ratio=False)
                lines.append(f"- c. {case.title}: p50 {p50:+.2f} ms")
            else:
                ratio = self.paired("redis", "bare-h1", key, "rps", ratio=True)
                cpu = [self.median(mode, key, "cpu_us") for mode in ("bare-h1", "redis")]
                lines.append(
                    f"- {key}. {case.title}: req/s × {ratio:.2f}; CPU µs a request {cpu[0]:.0f} bare, "
                    f"{cpu[1]:.0f} tokenyard"
                )
        return lines

    def bar(self) -> list[str]:
        """The issues' bars, metering to Redis on: (what, measured, target, met) rows."""
        rows: list[tuple[str, str, str, bool]] = []
        for key, title, floor in (
            ("a", "non-streaming, c=64", 2600),
            ("b", "streaming with usage, c=64", 1500),
        ):
            if key in self.keys:
                rps = self.median("redis", key, "rps")
                rows.append((f"{key}. {title}", f"{rps:,.0f} req/s", f"≥ {floor:,} req/s", rps >= floor))
        if "c" in self.keys:
            for field, limit in (("p50_ms", 1.0), ("p99_ms", 5.0)):
                added = self.paired("redis", "direct", "c", field, ratio=False)
                what = f"c. added latency, {field.split('_')[0]}"
                rows.append((what, f"{added:+.2f} ms", f"≤ {limit:g} ms", added <= limit))
        if "d" in self.keys:
            rss, errors = self.median("redis", "d", "rss_mib"), self.errors("redis", "d")
            most_open = min(r["most_open"] for r in self.runs[("redis", "d")])
            # RSS is read in KiB: shown in MiB and in decimal MB, and held to the stricter (decimal) reading.
            shown = f"{rss:.1f} MiB = {rss * 1.048576:.1f} MB, {errors} errors, {most_open:.0f} open at once"
            ok = rss * 1.048576 <= 100 and errors == 0 and most_open == HELD_STREAMS
            rows.append((f"d. {HELD_STREAMS:,} open streams", shown, "≤ 100 MB, no errors", ok))
        for key in sorted(self.keys & {"a", "b"}):
            ratio = self.paired("redis", "off", key, "rps", ratio=True)
            shown = f"{ratio:.3f} ({(ratio - 1) * 100:+.1f} %)"
            rows.append((f"{key}. metering on / off, req/s", shown, "≥ 0.95", ratio >= 0.95))
        # Issue 19's goal, against the bare pass-through measured in the same runs.
        if ("bare", self.cases[0].key) in self.runs:
            for key in sorted(self.keys & {"a", "b"}):
                ratio = self.paired("redis", "bare", key, "rps", ratio=True)
                rows.append((f"{key}. tokenyard ÷ bare, req/s", f"{ratio:.2f}", "≥ 0.9", ratio >= 0.9))
            if "c" in self.keys:
                added = self.paired("redis", "bare", "c", "p50_ms", ratio=False)
                rows.append(("c. p50 above bare", f"{added:+.2f} ms", "≤ 0.5 ms", added <= 0.5))
        return [
            "| the bar (metering to Redis on) | measured | target | met |",
            "|---|---:|---:|---|",
            *(
                f"| {what} | {shown} | {target} | {'yes' if ok else '**no**'} |"
                for what, shown, target, ok in rows
            ),
        ]

    def direct_ratios(self) -> list[str]:
        lines = []
        for case in self.cases:
            if case.key not in "ab":
                continue
            ratio = self.paired("redis", "direct", case.key, "rps", ratio=True)
            line = f"- {case.key}. {case.title}: {ratio:.2f}"
            capacity = self.capacity.get(case.key)
            if capacity:
                times = capacity / self.median("redis", case.key, "rps")
                line += (
                    f" (the upstream alone under wrk on the proxy's core: {capacity:,.0f} req/s, "
                    f"{times:.0f}× tokenyard's)"
                )
            lines.append(line)
        return lines

    def against_baseline(self) -> list[str]:
        """This tokenyard against the baseline, metering to Redis: medians of per-run pairs."""
        if ("base-redis", self.cases[0].key) not in self.runs:
            return []
        lines = ["", "this tokenyard against the baseline (metering to Redis, medians of per-run pairs):"]
        for case in self.cases:
            if case.key in "ab":
                ratio = self.paired("redis", "base-redis", case.key, "rps", ratio=True)
                cpu = self.paired("redis", "base-redis", case.key, "cpu_us", ratio=True)
                lines.append(f"- {case.key}. {case.title}: req/s × {ratio:.3f}, CPU per request × {cpu:.3f}")
            elif case.key == "c":
                p50 = self.paired("redis", "base-redis", "c", "p50_ms", ratio=False)
                p99 = self.paired("redis", "base-redis", "c", "p99_ms", ratio=False)
                lines.append(f"- c. {case.title}: p50 {p50:+.2f} ms, p99 {p99:+.2f} ms")
            else:
                rss = self.paired("redis", "base-redis", case.key, "rss_mib", ratio=False)
                lines.append(f"- {case.key}. {case.title}: peak RSS {rss:+.1f} MiB")
        return lines

    def render(self, args: argparse.Namespace) -> str:
        ratios = self.direct_ratios()
        direct_label = HARNESSES[self.harness][0]
        return "\n".join(
            [
                f"tokenyard speed benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
                f"{measured_commit()}: {args.runs} runs, {args.seconds:g} s measured per closed-loop "
                f"scenario, medians; proxy pinned to core 0, upstream + load + Redis on core 1 "
                f"({os.cpu_count()} cores); harness: {HARNESSES[self.harness][1]}; this tokenyard over "
                f"{args.client} under {args.server}"
                + ("; the baseline over its own client under uvicorn" if args.baseline else ""),
                "",
                *self.table(),
                *self.against_bare(),
                *self.against_bare_h1(),
                "",
                *self.bar(),
                *(["", f"tokenyard (metering to Redis) / {direct_label}, req/s:", *ratios] if ratios else []),
                *self.against_baseline(),
            ]
        )
