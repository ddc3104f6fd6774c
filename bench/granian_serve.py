"""tokenyard's app under granian's ASGI server instead of uvicorn: issue 19 part 3's "then as tokenyard's own"
for the server.

granian (hyper on a Tokio runtime) carried more streams than uvicorn as the bare pass-through's server
(``bench.ceiling``). This runs tokenyard's own ASGI app, unchanged, under it, so the two servers can be
measured with everything tokenyard does on top:

    python -m bench.granian_serve serve --config tokenyard.yaml --port 8080   # as `tokenyard serve`
    python -m bench.speed --server granian --baseline /tmp/same-commit/src     # beside uvicorn, one run

It is kept in ``bench/`` because it is a measurement, not a way to run tokenyard: under granian the app
loses what tokenyard's own uvicorn protocol gives it (``edge/connections.py``: the connection limits and
timeouts, the hang-up notice, the head written with the body), the unready-then-drain shutdown
(``edge/server.py``) and the simulated backends of the quick start. A hang-up is noticed by
``wire.LeaveWatch``'s fallback, a task watching ``receive``. One worker process, one runtime thread, uvloop,
HTTP/1.1, as ``bench.thin_proxy`` runs granian.
"""

from __future__ import annotations

import argparse
import os
import sys

_ENV = "TOKENYARD_GRANIAN_CONFIG"  # the worker process reads the config path from here


def app() -> object:
    """granian's factory for tokenyard's ASGI app (run in its worker process)."""
    from tokenyard.config import load_config
    from tokenyard.edge.app import TokenyardApp

    path = os.environ[_ENV]
    return TokenyardApp(load_config(path), config_path=path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("serve",))
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    from bench.thin_proxy import serve_granian

    os.environ[_ENV] = args.config
    # tokenyard's own backlog under uvicorn
    serve_granian("bench.granian_serve:app", "asgi", args.port, backlog=4096, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
