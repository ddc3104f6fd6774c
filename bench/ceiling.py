"""Raising the limit: the bare pass-through under other servers and over other clients, side by side.

Each target is ``bench.thin_proxy`` with one server (uvicorn + httptools, hypercorn, granian's ASGI or
RSGI interface; all on uvloop, one process or worker) and one upstream client (aiohttp, pyreqwest,
httpr). The current bare pass-through, uvicorn + aiohttp, runs in the same runs, and every ratio is to it.
The machinery is ``bench.speed``'s: the proxy pinned to core 0, the upstream and the load to core 1, the
targets taking turns within each scenario in an order that rotates run by run, ratios as medians of
per-run pairs, the CPU of the serving process a request. Scenarios a (non-streaming, c=64),
b (streaming with usage, c=64) and d (1,000 held streams: peak RSS, failures).

Before the runs, each target is checked once:
- keep-alive: three requests (plain, stream, plain) on one HTTP/1.1 connection, none answered with
  ``Connection: close``; the stream ends with ``data: [DONE]``;
- streams unbuffered: the first chunk of a stream dripping one chunk a second arrives within 0.5 s;
- client disconnects: 200 dripping streams are opened, their first chunk read, and the client hangs up;
  2 s later, how many of the proxy's connections to the upstream are still open (0 when a hang-up
  closes the upstream request; 200 when the proxy reads each stream to its end, 10 s), and its open fds
  and RSS then and after the streams would have ended.

Written to ``bench/results/ceiling.md`` (``ceiling-wrk.md`` with ``--harness wrk``).

    python -m bench.ceiling --runs 3 --seconds 3 --harness wrk
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.nginx_upstream import nginx_upstream
from bench.services import DRIP_S, OTHER_CORE, ROOT, python_upstream, rss_mib, upstream_paths, write_results
from bench.speed import Harness, PythonLoad, Running, WrkLoad, bare, measure, scenarios
from bench.speed_results import Results, Scenario, measured_commit

CURRENT = "uvicorn+aiohttp"
TARGETS = (
    CURRENT,
    "hypercorn+aiohttp",
    "granian-asgi+aiohttp",
    "granian-rsgi+aiohttp",
    "uvicorn+pyreqwest",
    "uvicorn+httpr",
    "granian-rsgi+pyreqwest",
    "granian-rsgi+httpr",
    "uvicorn+http1",
    "granian-rsgi+http1",
)
ABORTED = 200
_PLAIN = b'{"model":"bench","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'
_STREAM = _PLAIN[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'
_DONE = b"data: [DONE]\n\n"


def open_fds(pid: int) -> set[str]:
    """What a process's file descriptors point at (``socket:[inode]`` for sockets)."""
    fds = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            fds.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return fds


def upstream_connections(pid: int, upstream_port: int) -> int:
    """The process's TCP connections to the upstream's port."""
    inodes = {fd[8:-1] for fd in open_fds(pid) if fd.startswith("socket:[")}
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == upstream_port and fields[9] in inodes:
            count += 1
    return count


def keep_alive_and_done(port: int, path: str) -> tuple[bool, bool]:
    """Three requests on one connection: (kept alive throughout, the stream ended in ``[DONE]``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    kept, done = True, False
    sock = None
    for payload in (_PLAIN, _STREAM, _PLAIN):
        conn.request("POST", path, payload, {"content-type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
        kept = kept and resp.status == 200 and not resp.will_close and sock in (None, conn.sock)
        sock = conn.sock
        done = done or answer.endswith(_DONE)
    conn.close()
    return kept, done


async def _open_stream(port: int, path: str) -> tuple[asyncio.StreamWriter, float]:
    """A dripping stream, opened and read to its first event: (the connection, seconds to that event)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(_STREAM)}\r\n\r\n".encode() + _STREAM)
    seen = b""
    while b"data:" not in seen:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError("the proxy closed a stream before its first event")
        seen += chunk
    return writer, time.monotonic() - started


async def _hang_up(port: int, path: str, streams: int) -> list[float]:
    """Open ``streams`` dripping streams, read each to its first event, then hang up on all of them."""
    opened = await asyncio.gather(*(_open_stream(port, path) for _ in range(streams)))
    for writer, _ in opened:
        writer.transport.abort()
    return [seconds for _, seconds in opened]


def check(target: Running, port: int, upstream_port: int) -> dict[str, float]:
    """The checks above, on a running target: keep-alive, [DONE], unbuffered streams, hang-ups."""
    plain_path = target.urls["bench"].split(str(port), 1)[1]
    drip_path = target.urls["bench-drip"].split(str(port), 1)[1]
    kept, done = keep_alive_and_done(port, plain_path)
    first = asyncio.run(_hang_up(port, drip_path, 1))[0]
    time.sleep(0.5)
    fds_before, rss_idle = len(open_fds(target.pid)), rss_mib(target.pid)
    seconds = asyncio.run(_hang_up(port, drip_path, ABORTED))
    time.sleep(2)
    return {
        "kept_alive": kept,
        "done": done,
        "first_chunk_s": max(first, *seconds),
        "rss_idle": rss_idle,
        "fds_before": fds_before,
        "fds_2s": len(open_fds(target.pid)),
        "upstream_2s": upstream_connections(target.pid, upstream_port),
        "rss_2s": rss_mib(target.pid),
        "hung_up_at": time.monotonic(),
    }


@contextlib.contextmanager
def started(name: str, upstream_port: int, paths: dict[str, str]) -> Iterator[Running]:
    server, client = name.split("+")
    with bare(upstream_port, paths, server, client) as running:
        yield running


def port_of(target: Running) -> int:
    return int(target.urls["bench"].split(":")[2].split("/")[0])


def check_all(names: list[str], upstream_port: int, paths: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each target checked once, all started together; the late sample waits for the streams' end."""
    checks: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        running = {name: stack.enter_context(started(name, upstream_port, paths)) for name in names}
        for name, target in running.items():
            try:
                checks[name] = check(target, port_of(target), upstream_port)
            except (OSError, RuntimeError, http.client.HTTPException) as exc:  # a finding: recorded
                checks[name] = {"error": 1.0}
                print(f"check {name}: {exc!r}", flush=True)
        late = max((c.get("hung_up_at", 0.0) for c in checks.values()), default=0.0) + DRIP_S + 3
        time.sleep(max(0.0, late - time.monotonic()))
        for name, target in running.items():
            if "error" not in checks[name]:
                checks[name]["fds_late"] = len(open_fds(target.pid))
                checks[name]["rss_late"] = rss_mib(target.pid)
                checks[name]["upstream_late"] = upstream_connections(target.pid, upstream_port)
    return checks


def measure_all(
    names: list[str], cases: list[Scenario], args: argparse.Namespace, upstream_port: int, harness: Harness
) -> Results:
    results = Results(cases, args.harness)
    paths = upstream_paths(upstream_port)
    for run in range(args.runs):
        with contextlib.ExitStack() as stack:
            running = {name: stack.enter_context(started(name, upstream_port, paths)) for name in names}
            for case in cases:
                shift = run % len(names)
                for name in names[shift:] + names[:shift]:
                    results.add(name, case.key, measure(running[name], case, args.seconds, harness))
        progress = ", ".join(
            f"{case.key}/{name} {results.runs[(name, case.key)][-1].get('rps', 0):,.0f}"
            for case in cases
            for name in names
            if case.key != "d"
        )
        print(f"run {run + 1}/{args.runs}: {progress} req/s", flush=True)
    return results


def _cell(results: Results, name: str, key: str) -> list[str]:
    """req/s ÷ current, CPU µs/req (and ÷ current's), p50 ms for one closed-loop scenario; blanks if not
    run."""
    if (name, key) not in results.runs:
        return ["-", "-", "-"]
    ratio = results.paired(name, CURRENT, key, "rps", ratio=True)
    cpu = results.median(name, key, "cpu_us")
    cpu_ratio = results.paired(name, CURRENT, key, "cpu_us", ratio=True)
    return [f"{ratio:.2f}", f"{cpu:.0f} (×{cpu_ratio:.2f})", f"{results.median(name, key, 'p50_ms'):.2f}"]


def table(results: Results, checks: dict[str, dict[str, float]], names: list[str]) -> list[str]:
    lines = [
        "| server + client | a: req/s ÷ current | a: CPU µs/req | a: p50 ms | b: req/s ÷ current "
        "| b: CPU µs/req | b: p50 ms | idle RSS MiB | d: peak RSS MiB | errors a / b / d |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        idle = checks.get(name, {}).get("rss_idle")
        peak = f"{results.median(name, 'd', 'rss_mib'):.1f}" if (name, "d") in results.runs else "-"
        errors = " / ".join(
            str(results.errors(name, key)) if (name, key) in results.runs else "-" for key in "abd"
        )
        cells = [*_cell(results, name, "a"), *_cell(results, name, "b")]
        idle_text = f"{idle:.1f}" if idle else "-"
        lines.append(f"| {name} | {' | '.join(cells)} | {idle_text} | {peak} | {errors} |")
    return lines


def checks_table(checks: dict[str, dict[str, float]], names: list[str]) -> list[str]:
    lines = [
        "",
        f"Checks (once per target): keep-alive over three requests, the stream ends in [DONE], the slowest "
        f"first chunk of {ABORTED + 1} dripping streams, then {ABORTED} streams hung up on: the proxy's "
        f"connections to the upstream, open fds and RSS 2 s later and {DRIP_S + 3} s after.",
        "",
        "| server + client | keep-alive | [DONE] | first chunk s | upstream conns +2 s | "
        "fds before → +2 s → late | RSS MiB idle → +2 s → late | upstream conns late |",
        "|---|---|---|---:|---:|---|---|---:|",
    ]
    for name in names:
        c = checks.get(name, {})
        if "error" in c or not c:
            lines.append(f"| {name} | **failed** | | | | | | |")
            continue
        yes = {True: "yes", False: "**no**"}
        lines.append(
            f"| {name} | {yes[bool(c['kept_alive'])]} | {yes[bool(c['done'])]} | {c['first_chunk_s']:.2f} | "
            f"{c['upstream_2s']:.0f} | {c['fds_before']:.0f} → {c['fds_2s']:.0f} → {c['fds_late']:.0f} | "
            f"{c['rss_idle']:.1f} → {c['rss_2s']:.1f} → {c['rss_late']:.1f} | {c['upstream_late']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per scenario a and b")
    parser.add_argument("--only", default="abd", help="scenarios to run, of a, b and d")
    parser.add_argument("--harness", choices=("python", "wrk"), default="wrk")
    parser.add_argument("--targets", default=",".join(TARGETS), help="server+client, comma-separated")
    parser.add_argument("--out", help="default: bench/results/ceiling.md (ceiling-wrk.md for wrk)")
    args = parser.parse_args()
    names = args.targets.split(",")
    if CURRENT not in names:
        parser.error(f"the targets must include {CURRENT}: the ratios are to it")
    cases = [case for case in scenarios() if case.key in args.only and case.key in "abd"]
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as services:
        folder = Path(tmp)
        upstream = (
            nginx_upstream(OTHER_CORE, folder) if args.harness == "wrk" else python_upstream(OTHER_CORE)
        )
        upstream_port = services.enter_context(upstream)
        harness: Harness = WrkLoad(folder) if args.harness == "wrk" else PythonLoad()
        checks = check_all(names, upstream_port, upstream_paths(upstream_port))
        results = measure_all(names, cases, args, upstream_port, harness)
    load = os.getloadavg()
    text = "\n".join(
        [
            f"bench.ceiling, {started_at}, commit {measured_commit()}: {args.runs} runs, {args.seconds:g} s "
            f"per scenario, harness {args.harness}; ratios to {CURRENT} are medians of per-run pairs; "
            f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} ({os.cpu_count()} cores)",
            "",
            *table(results, checks, names),
            *checks_table(checks, names),
        ]
    )
    print("\n" + text)
    raw = {f"{name}/{key}": runs for (name, key), runs in results.runs.items()}
    raw_path = ROOT / "bench" / "results" / "ceiling-raw.json"  # every run's figures, for a second look
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps({"runs": raw, "checks": checks}, indent=1))
    write_results(text, args.out, "ceiling", args.harness)


if __name__ == "__main__":
    main()
