"""The ``tokenyard`` command: serve the proxy, check a config, run a simulated upstream."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tokenyard import __version__
from tokenyard.config import ServerConfig, TokenyardConfig, load_config
from tokenyard.errors import ConfigError
from tokenyard.tracing.settings import missing_packages

log = logging.getLogger("tokenyard")
_backends_log = logging.getLogger("tokenyard.backends")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenyard`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(_command(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        # The reader went away (`tokenyard replay log | head`): say nothing more, on a closed stdout too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (None: none, as in ``--help``)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The command line's parser. Only ``command``'s own module is imported to fill in its arguments (the
    others are listed, with their help): a proxy's resident memory is mostly the code it has loaded, and
    ``serve`` needs none of the report, export, keys, advisor or simulator commands' code."""
    parser = argparse.ArgumentParser(
        prog="tokenyard",
        description="An OpenAI-compatible inference proxy and cost meter.",
    )
    parser.add_argument("--version", action="version", version=f"tokenyard {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. With no --config (and no TOKENYARD_CONFIG), a built-in quick-start "
        "config starts simulated backends in-process, so it works with no keys and no network.",
        epilog="Signals: SIGTERM or SIGINT turns /health/ready to 503 for server.unready_s, then drains "
        "in-flight requests and streams for at most server.drain_timeout_s, flushes the meter and exits. "
        "SIGHUP re-reads the config file: keys, the admin key, async_track and advisor apply at once; "
        "other sections wait for a restart (POST /admin/reload does the same on every replica).",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="YAML config (default: $TOKENYARD_CONFIG, else built-in)"
    )
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file; print every problem by its path and exit 1 if there is any.",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=_check_config)

    report = commands.add_parser(
        "report",
        help="print spend from the meter store",
        description="Print spend by mode, backend kind, backend, model, tenant, team and key, dedicated "
        "utilization and idle GPU cost, and what the async track saved, from the meter store of a config.",
    )
    if command == "report":
        from tokenyard.telemetry import commands as meter_commands

        meter_commands.add_report_arguments(report)
        report.set_defaults(run=meter_commands.run_report)

    export = commands.add_parser(
        "export",
        help="write request records as JSON lines, or cost rows in FOCUS",
        description="Write the meter's request records (or, with --aggregates, its per-minute aggregates)\n"
        "as JSON lines: the traffic-log format `tokenyard replay` reads.\n\n"
        "With --format focus, write cost rows in the columns of FOCUS 1.2 (the FinOps Open Cost and\n"
        "Usage Specification) for whole hours, as CSV or Parquet: a row per hour x tenant x model x\n"
        "backend x kind x mode x key x team x meter (input, cached input and output tokens; a\n"
        "dedicated backend's GPU time, busy and idle apart, attributed by token share). Their costs\n"
        "add up to the usage API's (granularity hour), per tenant too.",
        epilog="examples:\n"
        "  tokenyard export --since 24h > traffic.jsonl\n"
        "  tokenyard export --format focus --since 30d --out costs.parquet\n"
        "  tokenyard export --format focus --since 2026-01-01 --until 2026-02-01 > january.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command == "export":
        from tokenyard.telemetry import commands as meter_commands

        meter_commands.add_export_arguments(export)
        export.set_defaults(run=meter_commands.run_export)

    keys = commands.add_parser(
        "keys",
        help="make, list, change, rotate and revoke virtual keys",
        description="Manage a running proxy's virtual keys through its admin API (/admin/keys): make one\n"
        "(its secret printed once), list them, change what one says, rotate its secret, revoke it.\n"
        "Every command takes --url, --config, --admin-key and --json.",
        epilog="examples:\n"
        "  export TOKENYARD_ADMIN_KEY=...   # the proxy's server.admin_key\n"
        "  tokenyard keys create --name ci-bot --tenant acme --expires-in 30d\n"
        "  tokenyard keys list --config tokenyard.yaml\n"
        "  tokenyard keys rotate key_0123abcd --grace 1h --url https://tokenyard.internal",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command == "keys":
        from tokenyard.telemetry import keys_commands

        keys_commands.add_keys_commands(keys)

    replay = commands.add_parser(
        "replay",
        help="replay a traffic log against every architecture",
        description="Replay a traffic log (tokenyard export, or one JSON object per request: ts, model, "
        "prompt_tokens, completion_tokens) against every architecture the config and catalog allow: "
        "serverless, dedicated (for peak, autoscaled), hybrid, dedicated serverless, batch. Prints what "
        "each would have cost, the recommendation and why.",
    )
    if command == "replay":
        from tokenyard.advisor import commands as advisor_commands

        advisor_commands.add_replay_arguments(replay)
        replay.set_defaults(run=advisor_commands.run_replay)

    advise = commands.add_parser(
        "advise",
        help="print the cheapest architecture for the metered traffic",
        description="Evaluate the meter store's traffic over advisor.window_days now and print, per "
        "workload, the recommended architecture, every candidate's cost, the saving and why.",
    )
    if command == "advise":
        from tokenyard.advisor import commands as advisor_commands

        advisor_commands.add_advise_arguments(advise)
        advise.set_defaults(run=advisor_commands.run_advise)

    profile = commands.add_parser(
        "profile",
        help="read a capacity profile measured elsewhere",
        description="Capacity profiles from vLLM bench serve (--save-result), GuideLLM or silybench, as "
        "advisor.profiles imports them.",
    )
    profile_commands = profile.add_subparsers(title="commands", metavar="COMMAND")
    show = profile_commands.add_parser(
        "show",
        help="print a profile's points and its requests/s per shape",
        description="Print the operating points a profile file holds and, per request shape, the best "
        "requests/s one replica sustained within the SLO.",
    )
    if command == "profile":
        from tokenyard.advisor import commands as advisor_commands

        advisor_commands.add_profile_show_arguments(show)
        show.set_defaults(run=advisor_commands.run_profile_show)

    simulate = commands.add_parser(
        "simulate",
        help="run a simulated OpenAI-compatible upstream",
        description="Run a simulated OpenAI-compatible upstream (serverless or dedicated, with faults).",
    )
    if command == "simulate":
        from tokenyard.simulator import cli as simulator_cli

        simulator_cli.add_arguments(simulate)
        simulate.set_defaults(run=simulator_cli.run)
    return parser


def _load(path: str | None, host: str | None = None, port: int | None = None) -> TokenyardConfig:
    config = load_config(path)
    if host is None and port is None:
        return config
    server = config.server.model_copy(
        update={"host": host or config.server.host, "port": config.server.port if port is None else port}
    )
    config = config.model_copy(update={"server": ServerConfig.model_validate(server.model_dump())})
    problems = config.cross_reference_problems()
    if problems:
        raise ConfigError(problems, source="command line")
    return config


def _usable(config: TokenyardConfig) -> TokenyardConfig:
    """``config``, if what it asks for is installed."""
    problems = missing_packages(config.telemetry)
    if problems:
        raise ConfigError(problems)
    return config


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = _usable(load_config(args.file))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok ({len(config.backends)} backends, {len(config.models)} models, "
        f"{len(config.keys)} keys)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = args.config or os.environ.get("TOKENYARD_CONFIG") or None
    try:
        config = _usable(_load(path, args.host, args.port))
    except ConfigError as exc:
        print(f"tokenyard: refusing to start, the config is invalid.\n{exc}", file=sys.stderr)
        return 1
    if config.advisor.profiles:  # their reader is loaded only for a config that names some
        from tokenyard.advisor.profiles import ProfileError, load_profiles

        try:  # the imported capacity profiles: files the config names, read once here to fail fast
            load_profiles(config.advisor, base=Path(path).parent if path else None)
        except ProfileError as exc:
            print(f"tokenyard: refusing to start, a capacity profile is unusable.\n{exc}", file=sys.stderr)
            return 1
    # Imported here: `check-config` and `--help` should not pay for the server stack.
    from tokenyard.edge.app import no_upstreams
    from tokenyard.edge.server import run_server

    _announce(config, path)
    simulated = any(backend.simulator is not None for backend in config.backends.values())
    run_server(
        config,
        config_path=path,
        # Only a config with ``simulator:`` backends (the quick start's) loads and starts the simulator.
        upstreams=(lambda: _simulated_backends(config)) if simulated else no_upstreams,
        log_level=args.log_level,
    )
    return 0


@contextlib.asynccontextmanager
async def _simulated_backends(config: TokenyardConfig) -> AsyncIterator[dict[str, str]]:
    """Start a simulator for each backend the config gives ``simulator:`` (the quick start's), in the
    server's event loop; yield their base URLs by backend name, and stop them after the backends close."""
    from tokenyard.simulator.server import SimulatorServer  # only when a backend is simulated

    async with contextlib.AsyncExitStack() as stack:
        base_urls: dict[str, str] = {}
        for name, backend in config.backends.items():
            if backend.simulator is None:
                continue
            sim = await stack.enter_async_context(SimulatorServer(backend.simulator))
            base_urls[name] = sim.base_url
            _backends_log.info("backend %s: simulator (%s) on %s", name, backend.simulator.mode, sim.base_url)
        yield base_urls


def _announce(config: TokenyardConfig, path: str | None) -> None:
    server = config.server
    log.info("config: %s", path or "built-in quick-start (simulated backends)")
    log.info("models: %s", ", ".join(config.models))
    if not config.keys:
        log.warning(
            "no API keys configured: any bearer key is accepted, so tokenyard listens on %s only", server.host
        )
    log.info("OpenAI base_url: http://%s:%d/v1", server.host, server.port)
