"""The speed benchmark: the upstream direct, then tokenyard with metering to Redis off and on, in one go.

Scenarios (closed loop unless said otherwise):
  a  non-streaming chat, 64 concurrent
  b  streaming chat with include_usage, 64 concurrent, each stream read to ``[DONE]``
  c  8 concurrent against the upstream that answers after 20 ms (added latency)
  d  1,000 streams opened at once and held for 10 s (the proxy's RSS while they are open)

The proxy is pinned to core 0; the upstream, the load generator and a private Redis share core 1. Each run
starts a fresh proxy per metering mode (all pinned to core 0, only one under load at a time) and, scenario
by scenario, measures the upstream direct and each proxy in turn, in an order that rotates from run to
run. With ``--baseline SRC`` another checkout's tokenyard takes its turns too: a before/after in one go.
The table gives medians over the runs; ratios and added latency are medians of per-run pairs, so drift on a
shared machine cancels out. It also shows the issue's bar and is written to ``bench/results/speed.md``.

    python -m bench.speed --runs 5
    git worktree add /tmp/before <commit> && python -m bench.speed --baseline /tmp/before/src
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.load import body
from bench.services import (
    DRIP_S,
    OTHER_CORE,
    PROXY_CORE,
    ROOT,
    cpu_seconds,
    cpu_us_per_request,
    free_port,
    load,
    pinned,
    proxy_config,
    redis_and_upstream,
    rss_mib,
    serve_command,
    server_on_proxy_core,
    upstream_paths,
)

HELD_STREAMS = 1000


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    model: str
    args: tuple[str, ...]
    direct: bool = True  # also measured against the upstream itself


def scenarios(seconds: float) -> list[Scenario]:
    timed = ("--seconds", str(seconds))
    return [
        Scenario("a", "non-streaming, c=64", "bench", ("--concurrency", "64", *timed)),
        Scenario("b", "streaming with usage, c=64", "bench", ("--concurrency", "64", "--stream", *timed)),
        Scenario("c", "c=8, upstream answers in 20 ms", "bench-slow", ("--concurrency", "8", *timed)),
        Scenario(
            "d",
            f"{HELD_STREAMS:,} streams held {DRIP_S} s",
            "bench-drip",
            ("--hold", str(HELD_STREAMS)),
            False,
        ),
    ]


Result = dict[str, float]


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_mib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Running:
    """A proxy under test: its process id and its chat completions URL."""

    pid: int
    url: str


@contextlib.contextmanager
def proxy(config_path: Path, src: str | None = None) -> Iterator[Running]:
    """A fresh ``tokenyard serve`` on ``config_path``, pinned to the proxy core, ready; ``src``: the
    ``src`` folder of another checkout to run instead of this one."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src} if src else None
    with server_on_proxy_core(serve_command(config_path, port), port, env) as process:
        yield Running(process.pid, f"http://127.0.0.1:{port}/v1/chat/completions")


def measure(process: Running, case: Scenario, seconds: float) -> Result:
    """One scenario against a running proxy, with its CPU per request and peak RSS."""
    cpu_before = cpu_seconds(process.pid)
    with PeakRss(process.pid) as rss:
        result = load(OTHER_CORE, process.url, "--model", case.model, *case.args)
    result["rss_mib"] = rss.peak
    if "rps" in result:
        result["cpu_us"] = cpu_us_per_request(cpu_seconds(process.pid) - cpu_before, result, seconds)
    return result


def upstream_capacity(url: str, stream: bool, folder: Path) -> float | None:
    """The upstream's own rate at c=64 under ``wrk`` (pinned to the proxy's core, idle then): it must be
    far above the proxy's, or the benchmark measures the upstream. None if wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    script = folder / f"post-{stream}.lua"
    payload = body("bench", stream).decode()
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {payload!r}\n'
    )
    out = subprocess.run(
        pinned(PROXY_CORE, "wrk", "-t1", "-c64", "-d3s", "-s", str(script), url),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"the upstream answered errors under wrk:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="measured seconds per closed-loop scenario"
    )
    parser.add_argument("--only", default="abcd", help="scenarios to run, e.g. ab")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed.md"))
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run the tokenyard in SRC (the src/ folder of another checkout, e.g. a git worktree at "
        "an older commit), taking turns with this one: a before/after in one go",
    )
    args = parser.parse_args()

    cases = [case for case in scenarios(args.seconds) if case.key in args.only]
    targets = ["direct", "off", "redis", *(["base-off", "base-redis"] if args.baseline else [])]
    results = Results(cases)
    with redis_and_upstream(OTHER_CORE) as (redis_url, upstream_port), tempfile.TemporaryDirectory() as tmp:
        paths = upstream_paths(upstream_port)
        configs = {}
        for mode in ("off", "redis"):
            config = proxy_config(upstream_port, redis_url if mode == "redis" else "off")
            configs[mode] = Path(tmp) / f"{mode}.yaml"
            configs[mode].write_text(yaml.safe_dump(config))
            # A baseline older than the advisor refuses the section it does not know.
            config.pop("advisor")
            configs[f"base-{mode}"] = Path(tmp) / f"base-{mode}.yaml"
            configs[f"base-{mode}"].write_text(yaml.safe_dump(config))
        for case in cases:
            if case.key in "ab":
                url = paths[case.model] + "/chat/completions"
                results.capacity[case.key] = upstream_capacity(url, "--stream" in case.args, Path(tmp))
        for run in range(args.runs):
            with contextlib.ExitStack() as stack:
                proxies = {
                    target: stack.enter_context(
                        proxy(configs[target], args.baseline if "base" in target else None)
                    )
                    for target in targets[1:]
                }
                for case in cases:
                    # Targets take turns within each scenario, in an order that rotates run by run.
                    shift = run % len(targets)
                    for target in targets[shift:] + targets[:shift]:
                        if target == "direct":
                            if case.direct:
                                url = paths[case.model] + "/chat/completions"
                                results.add(target, case.key, load(OTHER_CORE, url, *case.args))
                        else:
                            results.add(target, case.key, measure(proxies[target], case, args.seconds))
            print(f"run {run + 1}/{args.runs}: " + results.progress(), flush=True)

    table = results.render(args)
    print("\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    print(f"\nwritten to {out}")


class Results:
    """Every run's result by (target, scenario); medians, errors and the tables."""

    LABELS = (
        ("direct", "upstream direct"),
        ("off", "tokenyard, metering off"),
        ("redis", "tokenyard, metering to Redis"),
        ("base-off", "baseline, metering off"),
        ("base-redis", "baseline, metering to Redis"),
    )

    def __init__(self, cases: list[Scenario]) -> None:
        self.cases = cases
        self.keys = {case.key for case in cases}
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
            for mode, _ in self.LABELS:
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
            for mode, label in self.LABELS:
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

    def bar(self) -> list[str]:
        """The issue's bar, metering to Redis on: (what, measured, target, met) rows."""
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
                line += f" (the upstream alone under wrk: {capacity:,.0f} req/s, {times:.0f}× tokenyard's)"
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
        return "\n".join(
            [
                f"tokenyard speed benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                f"{args.runs} runs, {args.seconds:g} s measured per closed-loop scenario, medians; "
                f"proxy pinned to core 0, upstream + load + Redis on core 1 ({os.cpu_count()} cores)",
                "",
                *self.table(),
                "",
                *self.bar(),
                *(["", "tokenyard (metering to Redis) / upstream direct, req/s:", *ratios] if ratios else []),
                *self.against_baseline(),
            ]
        )


if __name__ == "__main__":
    main()
