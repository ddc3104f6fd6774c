"""nginx with the echo module as the fake upstream: ``bench.upstream``'s answers, served from C.

The same paths pick the same variants (``/v1``, ``/slow20/v1`` 20 ms late, ``/drip/S/v1`` one chunk a second
for S seconds), and the same bytes come back: the chat completion with its length, or the SSE stream (role,
three content chunks, finish, usage, ``[DONE]``) in HTTP chunks. Whether to stream is read from the request
body, as a real upstream does: the body is read into memory and a ``map`` over it chooses an internal
location. The server runs from a temporary folder (its own config, pid, logs and temp paths, a free port):
nothing is written outside it, and root is not needed.

    apt-get install nginx libnginx-mod-http-echo      # Debian
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench.services import DRIP_S, free_port, pinned, wait_ready
from bench.upstream import COMPLETION, CONTENT_EVENT, END_EVENTS, ROLE_EVENT

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def _quoted(data: bytes) -> str:
    """``data`` as an nginx single-quoted string (``\\n`` is nginx's own escape for a newline)."""
    text = data.decode()
    # '$' would be read as a variable, quotes and backslashes as escapes: the fixed answers have none.
    if any(c in text for c in "$'\\"):
        raise ValueError(f"cannot quote for nginx: {text!r}")
    return "'" + text.replace("\n", "\\n") + "'"


def _echo(*events: bytes) -> str:
    """Each event through ``echo -n``: one HTTP chunk each."""
    return " ".join(f"echo -n {_quoted(event)};" for event in events)


def config(port: int, home: Path) -> str:
    """The nginx.conf: one worker, no access log, keep-alive that does not close under load."""
    drip = " ".join(
        [
            f"echo -n {_quoted(ROLE_EVENT)}; echo_flush; echo_sleep 1;",
            *[f"echo -n {_quoted(CONTENT_EVENT)}; echo_flush; echo_sleep 1;"] * DRIP_S,
            _echo(END_EVENTS),
        ]
    )
    temp_paths = "\n".join(
        f"    {kind}_temp_path {home / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
load_module {ECHO_MODULE};
worker_processes 1;
worker_rlimit_nofile 16384;
pid {home / "nginx.pid"};
error_log {home / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp_paths}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    # The body stays in one memory buffer, so $request_body holds it for the map.
    client_body_buffer_size 64k;
    client_body_in_single_buffer on;
    map $request_body $answer {{
        '~"stream":\\s*true' /_stream;
        default /_json;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health/ready {{ return 200 'ok'; }}
        location = /v1/chat/completions {{ echo_read_request_body; echo_exec $answer; }}
        location = /slow20/v1/chat/completions {{
            echo_read_request_body; echo_sleep 0.02; echo_exec $answer;
        }}
        location = /drip/{DRIP_S}/v1/chat/completions {{
            default_type 'text/event-stream; charset=utf-8';
            echo_read_request_body; {drip}
        }}
        location = /_json {{ internal; default_type application/json; return 200 {_quoted(COMPLETION)}; }}
        location = /_stream {{
            internal; default_type 'text/event-stream; charset=utf-8';
            {_echo(ROLE_EVENT, *[CONTENT_EVENT] * 3, END_EVENTS)}
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_upstream(core: str | None, folder: Path) -> Iterator[int]:
    """nginx serving the fixed answers from ``folder`` (pinned to ``core``), ready; yields its port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists() or not ECHO_MODULE.exists():
        raise SystemExit(
            "--harness wrk needs nginx and its echo module: apt-get install nginx libnginx-mod-http-echo"
        )
    home = folder / "nginx"
    home.mkdir(exist_ok=True)
    port = free_port()
    conf = home / "nginx.conf"
    conf.write_text(config(port, home))
    command = ["-p", str(home), "-c", str(conf), "-e", str(home / "error.log"), "-g", "daemon off;"]
    process = subprocess.Popen(pinned(core, binary, *command), stdout=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready")
        yield port
    finally:
        process.terminate()
        process.wait(10)
