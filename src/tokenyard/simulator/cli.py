"""The ``tokenyard simulate`` command: run one simulated upstream until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from tokenyard.simulator.config import FaultConfig, SimulatorConfig

# (config field, type, metavar, help); the flag is the field with dashes, and defaults are read from the
# config models so they are stated once.
_Option = tuple[str, Callable[[str], Any], str, str]
_CONFIG_OPTIONS: tuple[_Option, ...] = (
    ("name", str, "NAME", "name reported in /sim/stats and as system_fingerprint fp_NAME"),
    ("seed", int, "N", "seed for generated text, latency jitter and injected errors"),
    ("ttft_ms", float, "MS", "time to first token (serverless: the mean of a jitter)"),
    ("ttft_jitter", float, "SIGMA", "serverless: relative spread of the time to first token"),
    ("tokens_per_s", float, "RATE", "per-stream decode rate (dedicated: the per-stream maximum)"),
    ("max_concurrency", int, "N", "dedicated: generation slots; further requests queue"),
    ("aggregate_tokens_per_s", float, "RATE", "dedicated: decode rate shared by the active streams"),
    ("default_max_tokens", int, "N", "completion length when the request sets no max_tokens"),
    ("max_output_tokens", int, "N", "largest max_tokens a request may set (more: 400)"),
    ("embedding_dimensions", int, "N", "embedding length when the request sets no dimensions"),
    ("batch_turnaround_s", float, "SECONDS", "Batch API: seconds from creation to completed"),
    ("batch_cancelling_s", float, "SECONDS", "Batch API: seconds a cancelled batch stays cancelling"),
    ("batch_max_lines", int, "N", "Batch API: most requests in one input file"),
    ("metrics_profile", str, "vllm|sglang", "whose metric names GET /metrics speaks"),
    ("kv_cache_tokens", int, "N", "KV-cache size in tokens, for /metrics' KV-cache usage"),
)
_FAULT_OPTIONS: tuple[_Option, ...] = (
    ("error_rate", float, "FRACTION", "fraction of inference requests answered with --error-status"),
    ("error_status", int, "STATUS", "HTTP status of injected errors (429 adds Retry-After)"),
    ("fail_next", int, "N", "answer the next N inference requests with --error-status"),
    ("retry_after_s", float, "SECONDS", "Retry-After of injected 429s"),
    ("first_byte_delay_ms", float, "MS", "extra delay before response headers"),
    ("cut_stream_after_chunks", int, "N", "drop streams after N content chunks (default: never)"),
    ("capacity_scale", float, "FACTOR", "dedicated: multiply the aggregate decode rate (0.5 halves it)"),
    ("batch_error_rate", float, "FRACTION", "fraction of batch lines answered with --error-status"),
    ("batch_expire_after_s", float, "SECONDS", "expire batches this long after creation (default: 24h)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser`` (the ``simulate`` subcommand or ``python -m``)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8100, help="port to listen on, 0 for any free port (default: %(default)s)"
    )
    parser.add_argument(
        "--mode",
        choices=("serverless", "dedicated"),
        default=None,
        help="latency model: serverless (unlimited, jittered ttft) or dedicated (slots, shared decode rate)"
        " (default: serverless)",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="ID",
        help="model id to serve (repeatable); none given accepts any model id",
    )
    for options, model in ((_CONFIG_OPTIONS, SimulatorConfig), (_FAULT_OPTIONS, FaultConfig)):
        group = parser.add_argument_group("faults") if model is FaultConfig else parser
        for field, type_, metavar, help_ in options:
            default = model.model_fields[field].default
            if default is not None:
                help_ = f"{help_} (default: {default})"
            flag = "--" + field.replace("_", "-")
            group.add_argument(flag, dest=field, type=type_, default=None, metavar=metavar, help=help_)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator config the parsed options describe; options left out keep the config defaults."""
    values = {field: getattr(args, field) for field, *_ in _CONFIG_OPTIONS}
    values |= {"mode": args.mode, "models": args.models}
    faults = {field: getattr(args, field) for field, *_ in _FAULT_OPTIONS}
    return SimulatorConfig.model_validate(
        {
            **{key: value for key, value in values.items() if value is not None},
            "faults": {key: value for key, value in faults.items() if value is not None},
        }
    )


def run(args: argparse.Namespace) -> int:
    """Serve a simulator until SIGINT or SIGTERM; the process exit code."""
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"tokenyard simulate: invalid options:\n{exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, args.host, args.port))


async def _serve(config: SimulatorConfig, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        from tokenyard.simulator.server import SimulatorServer  # not for every tokenyard command

        async with SimulatorServer(config, host, port, log_level="warning") as server:
            print(
                f"simulator {config.name} ({config.mode}) listening on http://{host}:{server.port}/v1",
                flush=True,
            )
            await stop.wait()
    except OSError as exc:
        print(f"tokenyard simulate: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
