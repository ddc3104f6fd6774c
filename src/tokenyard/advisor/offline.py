"""What ``tokenyard replay`` and ``tokenyard advise`` do: read the traffic, evaluate, print, draw.

Imported only when one of those commands runs (``commands.py`` holds their options), so ``tokenyard
serve`` does not carry the readers, the tables and the charts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from tokenyard.advisor import evaluation, plot, report
from tokenyard.advisor.catalog import Catalog, load_catalog
from tokenyard.advisor.decide import Advice
from tokenyard.advisor.live import load_document
from tokenyard.advisor.profiles import ProfileError, load_profiles
from tokenyard.advisor.replay import TrafficLog, TrafficLogError, parse_time
from tokenyard.advisor.service import grouping, replay_evaluations
from tokenyard.capacity import envelope
from tokenyard.config import TokenyardConfig, load_config
from tokenyard.errors import ConfigError, StoreError
from tokenyard.meter.open_store import open_configured_store, redacted
from tokenyard.terminal import Progress


def _configured(path: str | None) -> tuple[TokenyardConfig, Catalog] | None:
    """The config and its catalog, or None after saying what is wrong with them."""
    try:
        config = load_config(path)
        # The imported capacity profiles are files: read here so a bad one stops the command at once.
        load_profiles(config.advisor, base=Path(path).parent if path else None)
        return config, load_catalog(config.advisor.catalog)
    except (ConfigError, ProfileError) as exc:
        print(exc, file=sys.stderr)
        return None


def replay(args: argparse.Namespace) -> int:
    """Replay a traffic log against every architecture and print the advice."""
    configured = _configured(args.config)
    if configured is None:
        return 1
    config, catalog = configured
    try:
        start = None if args.start is None else parse_time(_number_or_text(args.start), "--start")
        end = None if args.end is None else parse_time(_number_or_text(args.end), "--end")
    except ValueError as exc:
        print(f"tokenyard: {exc}", file=sys.stderr)
        return 2
    log = TrafficLog()
    try:
        _read(log, args.traffic, args.progress)
    except OSError as exc:
        print(f"tokenyard: cannot read {args.traffic}: {exc.strerror}", file=sys.stderr)
        return 2
    except TrafficLogError as exc:
        print(f"tokenyard: {args.traffic}: {exc}", file=sys.stderr)
        return 2
    try:
        window = log.span(start, end)
    except ValueError as exc:
        print(f"tokenyard: {args.traffic}: {exc}", file=sys.stderr)
        return 2
    workload_of, eligible = grouping(config)
    traffic, outside = log.traffic(workload_of, eligible, window)
    if not traffic:
        print(f"tokenyard: {args.traffic}: no requests in the window", file=sys.stderr)
        return 2
    # Evaluated as at the window's end: what a proxy metering this traffic would have seen then.
    now = window.end
    advices, skipped = replay_evaluations(traffic, config, catalog, now=now, today=_today(now))
    source = f"{args.traffic}: {log.lines:,} lines"
    if outside:
        source += f", {outside:,.0f} requests outside the window left out"
    return _print(advices, skipped, args, source=source)


def _number_or_text(text: str) -> float | str:
    """A command-line time: unix seconds are a number there too."""
    try:
        return float(text)
    except ValueError:
        return text


def _read(log: TrafficLog, path: str, progress: bool | None) -> None:
    if path == "-":
        with Progress("reading stdin", None, enabled=progress) as bar:
            log.read(sys.stdin.buffer, bar.update)
        return
    size = os.path.getsize(path)
    with open(path, "rb") as file, Progress(f"reading {Path(path).name}", size, enabled=progress) as bar:
        log.read(file, bar.update)


def _today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def _print(
    advices: list[Advice],
    skipped: list[str],
    args: argparse.Namespace,
    *,
    source: str,
    envelopes: Sequence[EnvelopeChart] = (),
) -> int:
    if args.json:
        document = {
            "format": report.FORMAT_VERSION,
            "source": source,
            "workloads": [report.advice_json(a) for a in advices],
            "skipped": skipped,
        }
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"tokenyard advice ({source})\n")
        print(report.summary_table(advices) if advices else "  (no workloads)")
        for advice in advices:
            print()
            print(report.details(advice))
        for problem in skipped:
            print(f"\nskipped: {problem}")
    if args.plot:
        written = write_plots(advices, Path(args.plot), envelopes)
        print(f"wrote {written} charts to {args.plot}/index.html", file=sys.stderr)
    return 0


EnvelopeChart = tuple[str, str]  # (file slug, SVG)


def envelope_charts(config: TokenyardConfig, document: dict[str, Any] | None) -> list[EnvelopeChart]:
    """Per dedicated backend in the stored ``capacity:envelope``: its measured curve, the SLA's per-stream
    floor and the capacity level marked."""
    charts = []
    for name, backend in config.backends.items():
        sla = backend.sla
        stored = envelope.backend_envelope(document, name, sla, backend.max_concurrency)
        points, capacity = stored.points, stored.capacity
        drawn = [
            (p.level, p.stream_tokens_per_s, p.aggregate_tokens_per_s)
            for p in points
            if p.stream_tokens_per_s is not None and p.aggregate_tokens_per_s is not None
        ]
        if not drawn:
            continue
        title = f"{name}: measured envelope ({sum(p.samples for p in points):,.0f} samples)"
        svg = plot.envelope_svg(
            title,
            drawn,
            sla_tokens_per_s=sla.min_stream_tokens_per_s if sla else None,
            capacity_at=capacity.concurrency if capacity else None,
        )
        charts.append((re.sub(r"[^A-Za-z0-9._-]+", "_", name), svg))
    return charts


def write_plots(advices: list[Advice], directory: Path, envelopes: Sequence[EnvelopeChart] = ()) -> int:
    """Per workload: traffic by hour of the week, cost against replicas, cost per candidate; per dedicated
    backend with a measured envelope, its curve; and an index."""
    directory.mkdir(parents=True, exist_ok=True)
    figures: list[str] = []
    for slug, svg in envelopes:
        (directory / f"{slug}-envelope.svg").write_text(svg)
        figures.append(f'<figure><img src="{slug}-envelope.svg" alt="measured envelope of {slug}"></figure>')
    for advice in advices:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", advice.workload)
        per_month = advice.per_month
        charts = {
            "candidates": plot.candidate_costs_svg(
                f"{advice.workload}: cost per month by architecture",
                [(c.label, c.cost.total_usd * per_month) for c in advice.candidates]
                + (
                    [(advice.current.label, advice.current.cost.total_usd * per_month)]
                    if advice.current
                    else []
                ),
                recommended=advice.best.label,
                current=advice.current.label if advice.current else None,
            ),
        }
        if advice.traffic is not None:
            charts["traffic"] = plot.traffic_heatmap_svg(
                f"{advice.workload}: average tokens by hour of the week (UTC)",
                advice.traffic.tokens_by_hour_of_week(),
            )
        if advice.curve is not None:
            references = {
                "all " + c.architecture.replace("_", " "): c.cost.total_usd * per_month
                for c in advice.candidates
                if c.architecture in ("serverless", "dedicated_serverless")
            }
            charts["cost-curve"] = plot.cost_curve_svg(
                f"{advice.workload}: cost against always-on {advice.curve.option.label} replicas",
                [(n, usd * per_month) for n, usd in advice.curve.points],
                optimum_n=advice.curve.optimum_n,
                breakeven_n=advice.curve.breakeven_n,
                references=references,
            )
        for kind, svg in charts.items():
            name = f"{slug}-{kind}.svg"
            (directory / name).write_text(svg)
            figures.append(f'<figure><img src="{name}" alt="{kind} of {slug}"></figure>')
    index = (
        "<!doctype html><meta charset=utf-8><title>tokenyard advice</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto}img{width:100%}</style>"
        "<h1>tokenyard advice</h1>" + "".join(figures)
    )
    (directory / "index.html").write_text(index)
    return len(figures)


def advise(args: argparse.Namespace) -> int:
    """Evaluate the meter store's traffic now and print the advice."""
    configured = _configured(args.config)
    if configured is None:
        return 1
    config, catalog = configured
    if not config.meter.enabled:
        print("tokenyard: metering is off in this config (meter.store: off)", file=sys.stderr)
        return 1
    store = open_configured_store(config.meter)

    async def evaluate() -> tuple[list[Advice], dict[str, Any] | None]:
        try:
            result = await evaluation.evaluate_store(
                store, config, catalog, now=time.time(), keep_state=False
            )
            return result.advices, await load_document(store, envelope.DOCUMENT)
        finally:
            await store.aclose()

    try:
        advices, measured = asyncio.run(evaluate())
    except StoreError as exc:
        print(
            f"tokenyard: cannot read the meter store {redacted(config.meter.store)}: {exc}", file=sys.stderr
        )
        return 1
    source = f"meter store {redacted(config.meter.store)}"
    return _print(advices, [], args, source=source, envelopes=envelope_charts(config, measured))
