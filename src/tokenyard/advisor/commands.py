"""The options of ``tokenyard replay`` (a traffic log) and ``tokenyard advise`` (the meter store).

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


def run_replay(args: argparse.Namespace) -> int:
    """Replay a traffic log against every architecture and print the advice."""
    from tokenyard.advisor import offline

    return offline.replay(args)


def run_advise(args: argparse.Namespace) -> int:
    """Evaluate the meter store's traffic now and print the advice."""
    from tokenyard.advisor import offline

    return offline.advise(args)
