"""The options of ``tokenyard replay`` (a traffic log), ``tokenyard advise`` (the meter store) and
``tokenyard profile show`` (an imported capacity profile).

What they do is in ``offline.py``, imported when one of them runs: every ``tokenyard`` command builds
this parser, ``serve`` included, and the proxy should not carry the log reader and the charts.
"""

from __future__ import annotations

import argparse


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tokenyard replay``."""
    parser.add_argument(
        "traffic", metavar="TRAFFIC.jsonl", help="a traffic log (see the README), or - for stdin"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config with the deployments, prices and advisor settings (default: built-in)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the advice as JSON (documented in the README)"
    )
    parser.add_argument("--plot", metavar="DIR", help="also write SVG charts and an index.html to DIR")
    parser.add_argument(
        "--start",
        metavar="WHEN",
        help="replay from WHEN (unix seconds or ISO 8601, UTC without a zone; default: the log's window "
        "line, else 00:00 UTC of the first request's day)",
    )
    parser.add_argument(
        "--end",
        metavar="WHEN",
        help="replay until WHEN, exclusive (default: the log's window line, else 00:00 UTC after the "
        "last request's day)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )


def add_advise_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tokenyard advise``."""
    parser.add_argument(
        "--config", metavar="FILE", help="the proxy's config (for its meter store and advisor)"
    )
    parser.add_argument("--json", action="store_true", help="print the advice as JSON")
    parser.add_argument("--plot", metavar="DIR", help="also write SVG charts and an index.html to DIR")


def add_profile_show_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tokenyard profile show``."""
    parser.add_argument(
        "file", metavar="FILE", help="a vLLM bench serve result, GuideLLM report or silybench CSV"
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "vllm", "guidellm", "silybench"],
        help="the file's format (default: auto, detected from its content)",
    )
    parser.add_argument(
        "--ttft-p99-ms",
        type=float,
        metavar="MS",
        help="SLO: p99 time to first token (checked where the file has no goodput)",
    )
    parser.add_argument(
        "--itl-median-ms",
        type=float,
        metavar="MS",
        help="SLO: median inter-token latency (checked where the file has no goodput)",
    )
    parser.add_argument("--json", action="store_true", help="print the points and the table as JSON")


def run_profile_show(args: argparse.Namespace) -> int:
    """Print the points a profile file holds and the requests/s per shape it gives."""
    import json
    import sys
    from pathlib import Path

    from tokenyard.advisor.profiles import Format, ProfileError, Slo, cells, detect, parse_profile
    from tokenyard.meter.shapes import SHAPES, shape_index, shape_label
    from tokenyard.terminal import format_table

    try:
        text = Path(args.file).read_text(encoding="utf-8")
        fmt: Format = detect(text, args.file) if args.format == "auto" else args.format
        points = parse_profile(text, name=args.file, fmt=fmt, slo=Slo(args.ttft_p99_ms, args.itl_median_ms))
    except (OSError, UnicodeDecodeError, ProfileError) as exc:
        print(f"tokenyard: {exc}", file=sys.stderr)
        return 1
    table = cells(points)
    labels = [
        shape_label(SHAPES[shape_index(round(p.prompt_tokens), round(p.completion_tokens))]) for p in points
    ]
    if args.json:
        document = {
            "file": args.file,
            "format": fmt,
            "points": [
                {
                    "prompt_tokens": round(p.prompt_tokens, 1),
                    "completion_tokens": round(p.completion_tokens, 1),
                    "requests_per_s": round(p.requests_per_s, 4),
                    "meets_slo": p.meets_slo,
                    "shape": label,
                    "note": p.note,
                }
                for p, label in zip(points, labels, strict=True)
            ],
            "shapes": [
                {"shape": shape_label(SHAPES[index]), "requests_per_s": round(rate, 4)}
                for index, rate in sorted(table.items())
            ],
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"{args.file}: {fmt} profile, {len(points)} points\n")
    rows = [
        [label, f"{p.prompt_tokens:,.0f}", f"{p.completion_tokens:,.0f}", f"{p.requests_per_s:.3f}",
         "yes" if p.meets_slo else "no", p.note]
        for p, label in zip(points, labels, strict=True)
    ]  # fmt: skip
    print(format_table(["shape", "prompt", "completion", "req/s", "meets SLO", "measured at"], rows))
    print("\nCapacity at the SLO per shape (one replica):\n")
    shape_rows = [[shape_label(SHAPES[index]), f"{rate:.3f}"] for index, rate in sorted(table.items())]
    print(format_table(["shape", "req/s"], shape_rows) if shape_rows else "  (no point meets the SLO)")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Replay a traffic log against every architecture and print the advice."""
    from tokenyard.advisor import offline

    return offline.replay(args)


def run_advise(args: argparse.Namespace) -> int:
    """Evaluate the meter store's traffic now and print the advice."""
    from tokenyard.advisor import offline

    return offline.advise(args)
