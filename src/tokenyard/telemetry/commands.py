"""``tokenyard report`` and ``tokenyard export``: read the meter store directly, no proxy needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import ValidationError

from tokenyard.admission.managed_keys import ManagedKey
from tokenyard.config import TokenyardConfig, load_config
from tokenyard.errors import ConfigError, OptionalDependencyMissing, StoreError
from tokenyard.meter.engine_usage import ENGINE_MAX_GAP_S, EngineUsage, engine_window
from tokenyard.meter.model import AggKey
from tokenyard.meter.open_store import open_configured_store, redacted
from tokenyard.meter.shapes import SHAPE_FIELDS
from tokenyard.meter.store import MeterStore
from tokenyard.telemetry import focus, focus_files, report
from tokenyard.terminal import format_table

_SHAPE_FIELDS = frozenset(SHAPE_FIELDS)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tokenyard report``."""
    _add_window(parser, default_since="24h")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tokenyard export``."""
    _add_window(parser, default_since="7d")
    parser.add_argument(
        "--format",
        choices=["jsonl", "focus"],
        default="jsonl",
        help="jsonl: request records as JSON lines, the traffic log `tokenyard replay` reads (default); "
        "focus: cost rows in FOCUS 1.2's columns, per hour, for FinOps tools",
    )
    parser.add_argument(
        "--aggregates",
        action="store_true",
        help="jsonl only: per-minute aggregates instead of request records",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write to FILE instead of stdout; for focus FILE.csv or FILE.parquet (Parquet needs "
        "tokenyard[parquet]); focus on stdout is CSV",
    )


def _add_window(parser: argparse.ArgumentParser, default_since: str) -> None:
    parser.add_argument("--config", metavar="FILE", help="the proxy's config (for its meter.store)")
    parser.add_argument(
        "--since",
        default=default_since,
        help=f"start: an age (90m, 24h, 7d), unix seconds or ISO 8601 (default {default_since})",
    )
    parser.add_argument("--until", default=None, help="end (default: now)")


def run_report(args: argparse.Namespace) -> int:
    """Print spend by mode, backend kind, backend, model, tenant, team and key; dedicated utilization; async
    savings."""
    return _run(args, _report)


def run_export(args: argparse.Namespace) -> int:
    """Write request records (or per-minute aggregates) as JSON lines, or FOCUS rows as CSV or Parquet."""
    if args.format == "jsonl" and args.out is None:
        return _run(args, _export)
    if args.format == "jsonl":
        with open(args.out, "w", encoding="utf-8") as out:
            return _run(args, _export, out)
    try:
        if args.aggregates:
            raise ValueError("--aggregates is for --format jsonl: FOCUS rows are always per hour")
        if args.out is not None:
            focus_files.format_of(args.out)
    except ValueError as exc:
        print(f"tokenyard: {exc}", file=sys.stderr)
        return 2
    return _run(args, _export_focus)


def _run(args: argparse.Namespace, command: Any, out: TextIO | None = None) -> int:
    try:
        config = load_config(args.config)
        now = time.time()
        since = report.parse_when(args.since, now)
        until = report.parse_when(args.until, now) if args.until else now
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"tokenyard: {exc}", file=sys.stderr)
        return 2
    if not config.meter.enabled:
        print("tokenyard: metering is off in this config (meter.store: off)", file=sys.stderr)
        return 1
    store = open_configured_store(config.meter)
    try:
        code: int = asyncio.run(command(store, config, since, until, args, out or sys.stdout))
        return code
    except StoreError as exc:
        print(
            f"tokenyard: cannot read the meter store {redacted(config.meter.store)}: {exc}", file=sys.stderr
        )
        return 1


async def _report(
    store: MeterStore,
    config: TokenyardConfig,
    since: float,
    until: float,
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    try:
        start, end = int(since) // 60 * 60, (int(until) // 60 + 1) * 60
        aggregates = await store.aggregates(start, end)
        gpu = await store.gpu(start, end)
        engine = engine_window(await store.engine(start - ENGINE_MAX_GAP_S, end), start, end)
        _, stored_keys = await store.all_keys()
    finally:
        await store.aclose()
    key_names = _key_names(stored_keys)
    when = f"{_iso(start)} → {_iso(end)}"
    print(f"tokenyard usage {when}  (store: {redacted(config.meter.store)})\n", file=out)
    total = report.totals(report.summarize(aggregates, gpu, group_by=[], granularity="total"))
    print(
        f"requests {total['requests']:,}  errors {total['errors']:,}  "
        f"tokens in {total['prompt_tokens']:,} / out {total['completion_tokens']:,}  "
        f"spend ${total['cost_usd']:,.4f} (tokens ${total['token_cost_usd']:,.4f}, "
        f"GPU ${total['gpu_cost_usd']:,.4f})\n",
        file=out,
    )
    for dimension in ("mode", "kind", "backend", "model", "tenant", "team", "key"):
        rows = report.summarize(aggregates, gpu, group_by=[dimension], granularity="total")
        names = key_names if dimension == "key" else {}
        table = [
            [
                names.get(row.group[0], row.group[0]) or "(none)",
                f"{row.counts['requests']:,}",
                f"{row.counts['errors']:,}",
                f"{row.counts['prompt_tokens']:,}",
                f"{row.counts['completion_tokens']:,}",
                f"{row.token_cost_pusd / 1e12:,.4f}",
                f"{row.gpu_cost_usd:,.4f}",
                f"{row.token_cost_pusd / 1e12 + row.gpu_cost_usd:,.4f}",
            ]
            for row in sorted(rows, key=lambda r: -(r.token_cost_pusd / 1e12 + r.gpu_cost_usd))
        ]
        headers = [dimension, "requests", "errors", "tokens in", "tokens out", "token $", "GPU $", "total $"]
        print(f"spend by {dimension}", file=out)
        print(format_table(headers, table) if table else "  (no traffic)", file=out)
        print(file=out)
    dedicated = report.dedicated_summaries(aggregates, gpu, config.backends, engine)
    print("dedicated backends", file=out)
    if dedicated:
        print(format_table(*_dedicated_table(dedicated)), file=out)
        engines = [s for s in dedicated if s.engine is not None]
        if engines:
            print("\nengines' own figures (metrics_url)", file=out)
            print(format_table(*_engine_table(engines)), file=out)
    else:
        print("  (none metered)", file=out)
    saved = report.async_savings_usd(aggregates, config)
    print(f"\nasync track saved ${saved:,.4f} against real-time prices", file=out)
    return 0


def _dedicated_table(dedicated: list[report.DedicatedSummary]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the dedicated backends' table; each figure's source where it may be the
    engine's."""
    table = []
    for s in dedicated:
        d = s.to_json()
        per_1m = d["effective_usd_per_1m_tokens"]
        table.append(
            [
                s.backend,
                f"{s.gpu_hours:,.3f}",
                f"{s.utilization:.1%} ({s.utilization_source})",
                f"{s.gpu_cost_usd:,.4f}",
                f"{d['idle_cost_usd']:,.4f}",
                f"{per_1m:,.4f} ({s.tokens_source})" if per_1m is not None else "-",
            ]
        )
    headers = ["backend", "GPU-hours", "utilization", "GPU $", "idle GPU $", "$ / 1M tokens"]
    return headers, table


def _engine_table(dedicated: list[report.DedicatedSummary]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of what the engines said they did, beside what tokenyard metered."""

    def figure(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    def mean_max(usage: EngineUsage, gauge: str, spec: str) -> str:
        return f"{figure(usage.mean(gauge), spec)} / {figure(usage.peak(gauge), spec)}"

    table = []
    for s in dedicated:
        assert s.engine is not None
        usage = s.engine.usage

        table.append(
            [
                s.backend,
                figure(s.engine.tokens, ",d"),
                f"{s.engine.tokenyard_tokens:,d}",
                figure(s.engine.unseen_tokens, ",d"),
                figure(usage.busy_s, ",.1f"),
                mean_max(usage, "waiting", ".1f"),
                mean_max(usage, "kv_cache_usage", ".0%"),
                f"{usage.scrapes:,d}",
                f"{usage.restarts:,d}",
            ]
        )
    headers = ["backend", "engine tokens", "via tokenyard", "unseen", "busy s", "queue mean/max"]
    return [*headers, "KV mean/max", "scrapes", "restarts"], table


async def _export(
    store: MeterStore,
    config: TokenyardConfig,
    since: float,
    until: float,
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    count = 0
    try:
        # The span exported, so a replay costs the quiet hours at its ends too (the advisor reads this
        # line; every other line is one request, or one minute bucket).
        out.write(orjson.dumps({"window": {"start": since, "end": until}}).decode() + "\n")
        if args.aggregates:
            rows = await store.aggregates(int(since) // 60 * 60, (int(until) // 60 + 1) * 60)
            for key, fields in sorted(rows, key=lambda item: item[0]):
                out.write(orjson.dumps(_aggregate_json(key, fields)).decode() + "\n")
                count += 1
        else:
            for record in await store.records(since, until):
                out.write(orjson.dumps(record.to_json()).decode() + "\n")
                count += 1
    finally:
        await store.aclose()
    what = "per-minute aggregates" if args.aggregates else "request records"
    print(f"exported {count:,} {what}", file=sys.stderr)
    return 0


async def _export_focus(
    store: MeterStore,
    config: TokenyardConfig,
    since: float,
    until: float,
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    start, end = focus.hour_window(since, until)
    try:
        aggregates = await store.aggregates(start, end)
        gpu = await store.gpu(start, end)
    finally:
        await store.aclose()
    rows = focus.focus_rows(aggregates, gpu, config)
    if args.out is None:
        out.write(focus_files.to_csv(rows))
    else:
        try:
            data = focus_files.encode(rows, focus_files.format_of(args.out))
        except OptionalDependencyMissing as exc:
            print(f"tokenyard: {exc.message}", file=sys.stderr)
            return 1
        await asyncio.to_thread(Path(args.out).write_bytes, data)
    print(f"exported {len(rows):,} FOCUS rows, {_iso(start)} → {_iso(end)}", file=sys.stderr)
    return 0


def _key_names(bodies: list[bytes]) -> dict[str, str]:
    """Managed keys' ids to ``name (id)``, for people (a config key is grouped by its name already)."""
    names = {}
    for body in bodies:
        with contextlib.suppress(ValidationError):  # a record no tokenyard wrote: shown by its id
            key = ManagedKey.model_validate_json(body)
            names[key.id] = f"{key.name} ({key.id})"
    return names


def _aggregate_json(key: AggKey, fields: dict[str, int]) -> dict[str, Any]:
    # The per-shape fields a bucket did not see are left out: sixty zeros a line say nothing.
    kept = {name: value for name, value in fields.items() if value or name not in _SHAPE_FIELDS}
    return {"ts": key.minute, **key._asdict(), **kept}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
