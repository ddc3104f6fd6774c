"""The speed benchmark: the upstream, the bare pass-through and tokenyard, taking turns, in one go.

tokenyard runs with metering to Redis off and on.

Scenarios (closed loop unless said otherwise):
  a  non-streaming chat, 64 concurrent
  b  streaming chat with include_usage, 64 concurrent, each stream read to ``[DONE]``
  c  8 concurrent against the upstream that answers after 20 ms (added latency)
  d  1,000 streams opened at once and held for 10 s (the proxy's RSS while they are open)

Targets: the upstream itself; the bare pass-through (``bench.thin_proxy``: uvicorn, uvloop, httptools and a
pooled aiohttp client, no auth, routing or metering), the floor issue 19 measured from; with
``--bare-http1`` the same pass-through over tokenyard's own client (``adapters/http1.py``), the floor on the
client tokenyard uses; and tokenyard. The proxies are pinned to core 0; the upstream, the load generator
and a private Redis share core 1. Each run starts a fresh process per proxy target (all pinned to core 0,
only one under load at a time) and, scenario by scenario, measures every target in turn, in an order that
rotates from run to run.
With ``--baseline SRC`` another checkout's tokenyard takes its turns too: a before/after in one go.

Two harnesses: ``python`` (default) is ``bench.upstream`` under ``bench.load``, both asyncio; ``wrk`` is
nginx with the echo module (``bench.nginx_upstream``) under ``wrk`` with a Lua script (``bench.wrk``), both C,
so the proxy's share of the work is all that is Python. Scenario d holds its streams with ``bench.load`` in
both (wrk has no such mode).

The table gives medians over the runs; ratios and added latency are medians of per-run pairs, so drift on a
shared machine cancels out. tokenyard ÷ bare and the CPU per request of both say what tokenyard's own work
costs. Written to ``bench/results/speed.md`` (``speed-wrk.md`` for the wrk harness).

    python -m bench.speed --runs 5
    python -m bench.speed --runs 5 --harness wrk
    git worktree add /tmp/before <commit> && python -m bench.speed --baseline /tmp/before/src
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from bench import wrk
from bench.nginx_upstream import nginx_upstream
from bench.services import (
    DRIP_S,
    OTHER_CORE,
    PROXY_CORE,
    cpu_seconds,
    cpu_us_per_request,
    free_port,
    load,
    proxy_config,
    python_upstream,
    redis_server,
    rss_mib,
    serve_command,
    server_on_proxy_core,
    upstream_paths,
    write_results,
)
from bench.speed_results import HELD_STREAMS, Result, Results, Scenario


def scenarios() -> list[Scenario]:
    return [
        Scenario("a", "non-streaming, c=64", "bench", concurrency=64),
        Scenario("b", "streaming with usage, c=64", "bench", concurrency=64, stream=True),
        Scenario("c", "c=8, upstream answers in 20 ms", "bench-slow", concurrency=8),
        Scenario("d", f"{HELD_STREAMS:,} streams held {DRIP_S} s", "bench-drip", hold=HELD_STREAMS),
    ]


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
    """A target under test: its process id (None: the upstream itself) and its chat completions URL for
    each model."""

    pid: int | None
    urls: dict[str, str]


def direct(paths: dict[str, str]) -> Running:
    """The upstream itself."""
    return Running(None, {model: base + "/chat/completions" for model, base in paths.items()})


# Other upstream clients tokenyard can be measured over: each module is `tokenyard` with its client swapped.
_CLIENT_MODULES = {"pyreqwest": "bench.reqwest_upstream"}


@contextlib.contextmanager
def tokenyard(
    config_path: Path,
    paths: dict[str, str],
    src: str | None = None,
    client: str = "http1",
    server: str = "uvicorn",
) -> Iterator[Running]:
    """A fresh ``tokenyard serve`` on ``config_path``, pinned to the proxy core, ready; ``src``: the
    ``src`` folder of another checkout to run instead of this one; ``client``: ``pyreqwest`` runs it over
    ``bench.reqwest_upstream`` instead of its own client (``http1``);
    ``server``: ``granian`` runs its app under granian's ASGI server (``bench.granian_serve``) instead of
    its own uvicorn. Its pid is the serving process's (granian's worker)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src} if src else None
    command = serve_command(config_path, port)
    if client != "http1":
        command[command.index("tokenyard")] = _CLIENT_MODULES[client]
    if server == "granian":
        command[command.index("tokenyard")] = "bench.granian_serve"
    with server_on_proxy_core(command, port, env) as process:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        yield Running(serving_pid(process.pid), dict.fromkeys(paths, url))


def serving_pid(pid: int) -> int:
    """The process that serves: ``pid`` itself, or its biggest child when it is a supervisor (granian's
    worker is a child process of the one started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return max((int(child) for child in children), key=rss_mib, default=pid)


@contextlib.contextmanager
def bare(
    upstream_port: int, paths: dict[str, str], server: str = "uvicorn", client: str = "aiohttp"
) -> Iterator[Running]:
    """The bare pass-through (``bench.thin_proxy``, by default over aiohttp under uvicorn), pinned to the
    proxy core, ready. It has no routing: the client names the upstream's variant in the path, which it
    relays as it is. Its pid is the serving process's (a worker, for granian)."""
    port = free_port()
    command = [sys.executable, "-m", "bench.thin_proxy", "--server", server, "--client", client]
    command += ["--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}"]
    # 1,000 held streams need 1,000 upstream connections, as in tokenyard's config.
    command += ["--connections", "2048"]
    with server_on_proxy_core(command, port) as process:
        urls = {
            model: f"http://127.0.0.1:{port}{urlsplit(base).path}/chat/completions"
            for model, base in paths.items()
        }
        yield Running(serving_pid(process.pid), urls)


def start_targets(
    stack: contextlib.ExitStack,
    targets: list[str],
    args: argparse.Namespace,
    upstream_port: int,
    paths: dict[str, str],
    configs: dict[str, Path],
) -> dict[str, Running]:
    """Every target of a run, started fresh (``stack`` stops them)."""
    running = {"direct": direct(paths)}
    for target in targets[1:]:
        if target.startswith("bare"):
            client = "http1" if target == "bare-h1" else "aiohttp"
            running[target] = stack.enter_context(bare(upstream_port, paths, client=client))
            continue
        src = args.baseline if target.startswith("base") else None
        client, server = ("http1", "uvicorn") if src else (args.client, args.server)
        running[target] = stack.enter_context(tokenyard(configs[target], paths, src, client, server))
    return running


class PythonLoad:
    """``bench.load``, which warms up for a second on its own before it measures."""

    name = "python"

    def warm_up(self, url: str, case: Scenario) -> None:
        pass

    def drive(self, url: str, case: Scenario, seconds: float) -> Result:
        return load(OTHER_CORE, url, "--model", case.model, *case.load_args(seconds))


class WrkLoad:
    """``wrk`` with a Lua script per scenario, after an untimed second of warm-up; scenario d (held streams)
    stays with ``bench.load``."""

    name = "wrk"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def warm_up(self, url: str, case: Scenario) -> None:
        if not case.hold:
            wrk.run(OTHER_CORE, url, wrk.script(self.folder, case.model, case.stream), case.concurrency, 1)

    def drive(self, url: str, case: Scenario, seconds: float) -> Result:
        if case.hold:
            return PythonLoad().drive(url, case, seconds)
        lua = wrk.script(self.folder, case.model, case.stream)
        return wrk.run(OTHER_CORE, url, lua, case.concurrency, seconds)


Harness = PythonLoad | WrkLoad


def measure(target: Running, case: Scenario, seconds: float, harness: Harness) -> Result:
    """One scenario against a target, with the proxy's CPU per request and peak RSS."""
    url = target.urls[case.model]
    harness.warm_up(url, case)
    if target.pid is None:
        return harness.drive(url, case, seconds)
    cpu_before = cpu_seconds(target.pid)
    with PeakRss(target.pid) as rss:
        result = harness.drive(url, case, seconds)
    result["rss_mib"] = rss.peak
    if "rps" in result:
        cpu_s = cpu_seconds(target.pid) - cpu_before
        # wrk counts the requests of exactly the span measured; bench.load's warm-up is estimated.
        counted = "requests" in result
        result["cpu_us"] = (
            cpu_s / result["requests"] * 1e6 if counted else cpu_us_per_request(cpu_s, result, seconds)
        )
    return result


def upstream_capacity(url: str, stream: bool, folder: Path) -> float | None:
    """The upstream's own rate at c=64 under ``wrk`` (pinned to the proxy's core, idle then): it must be
    far above the proxy's, or the benchmark measures the upstream. None if wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    result = wrk.run(PROXY_CORE, url, wrk.script(folder, "bench", stream), 64, 3)
    if result["non_2xx"] or result["failed"]:
        raise RuntimeError(f"the upstream answered errors under wrk: {result}")
    return result["rps"]


def write_configs(folder: Path, upstream_port: int, redis_url: str) -> dict[str, Path]:
    """tokenyard's config for each metering mode, and the baseline's."""
    configs = {}
    for mode in ("off", "redis"):
        config = proxy_config(upstream_port, redis_url if mode == "redis" else "off")
        configs[mode] = folder / f"{mode}.yaml"
        configs[mode].write_text(yaml.safe_dump(config))
        # A baseline older than the advisor refuses the section it does not know.
        config.pop("advisor")
        configs[f"base-{mode}"] = folder / f"base-{mode}.yaml"
        configs[f"base-{mode}"].write_text(yaml.safe_dump(config))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="measured seconds per closed-loop scenario"
    )
    parser.add_argument("--only", default="abcd", help="scenarios to run, e.g. ab")
    parser.add_argument(
        "--harness",
        choices=("python", "wrk"),
        default="python",
        help="python: bench.upstream under bench.load; wrk: nginx (echo module) under wrk",
    )
    parser.add_argument("--out", help="default: bench/results/speed.md, or speed-wrk.md for --harness wrk")
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run the tokenyard in SRC (the src/ folder of another checkout, e.g. a git worktree at "
        "an older commit), taking turns with this one: a before/after in one go",
    )
    parser.add_argument(
        "--client",
        choices=("http1", *_CLIENT_MODULES),
        default="http1",
        help="this tokenyard's upstream client: http1 is its own (adapters/http1.py), pyreqwest runs it "
        "over bench.reqwest_upstream (the baseline keeps its own)",
    )
    parser.add_argument(
        "--bare-http1",
        action="store_true",
        help="also run the bare pass-through over tokenyard's own HTTP/1.1 client (target bare-h1): the "
        "limit over the client tokenyard uses, beside the one over aiohttp",
    )
    parser.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="this tokenyard's HTTP server: granian runs its app under granian's ASGI interface "
        "(bench.granian_serve; the baseline keeps uvicorn)",
    )
    args = parser.parse_args()
    if args.harness == "wrk" and args.seconds != round(args.seconds):
        parser.error("wrk measures whole seconds: give --seconds as a whole number")
    if args.client != "http1" and args.server != "uvicorn":
        parser.error("--client and --server each swap one part of tokenyard: give one of them")

    cases = [case for case in scenarios() if case.key in args.only]
    targets = ["direct", "bare", "off", "redis", *(["base-off", "base-redis"] if args.baseline else [])]
    if args.bare_http1:
        targets.insert(2, "bare-h1")
    results = Results(cases, args.harness)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as services:
        folder = Path(tmp)
        redis_url = services.enter_context(redis_server(OTHER_CORE))
        upstream = (
            nginx_upstream(OTHER_CORE, folder) if args.harness == "wrk" else python_upstream(OTHER_CORE)
        )
        upstream_port = services.enter_context(upstream)
        harness: Harness = WrkLoad(folder) if args.harness == "wrk" else PythonLoad()
        paths = upstream_paths(upstream_port)
        configs = write_configs(folder, upstream_port, redis_url)
        for case in cases:
            if case.key in "ab":
                url = direct(paths).urls[case.model]
                results.capacity[case.key] = upstream_capacity(url, case.stream, folder)
        for run in range(args.runs):
            with contextlib.ExitStack() as stack:
                running = start_targets(stack, targets, args, upstream_port, paths, configs)
                for case in cases:
                    # Targets take turns within each scenario, in an order that rotates run by run.
                    shift = run % len(targets)
                    for target in targets[shift:] + targets[:shift]:
                        if target != "direct" or not case.hold:
                            results.add(
                                target, case.key, measure(running[target], case, args.seconds, harness)
                            )
            print(f"run {run + 1}/{args.runs}: " + results.progress(), flush=True)

    table = results.render(args)
    print("\n" + table)
    write_results(table, args.out, "speed", args.harness)


if __name__ == "__main__":
    main()
