"""``python -m tokenyard.simulator``: the ``tokenyard simulate`` command without the main CLI."""

from __future__ import annotations

import argparse
import sys

from tokenyard.simulator.cli import add_arguments, run


def main() -> int:
    """Parse the command line and run a simulator."""
    parser = argparse.ArgumentParser(
        prog="python -m tokenyard.simulator",
        description="Run a simulated OpenAI-compatible upstream"
        " (chat, completions, embeddings, models, files, batches).",
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
