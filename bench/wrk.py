"""``wrk`` as the load generator: the same closed loop as ``bench.load``, from C.

A Lua script POSTs the chat body with the bench key; for streams it checks that every 200 ends in
``data: [DONE]`` (the body is then collected, which costs wrk a little). Its ``done()`` prints one JSON
line from wrk's own summary and latency histogram (the distribution ``--latency`` prints), so nothing is
parsed from the human-readable report. One wrk thread: at these rates a thread is far from its limit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.load import HEADERS, body
from bench.services import pinned

_SCRIPT = """\
wrk.method = "POST"
{headers}
wrk.body = [[{body}]]
failed = 0
{check}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do failed = failed + thread:get("failed") end
  local e = summary.errors
  io.write(string.format(
    '\\n{{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, "failed": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    failed + e.connect + e.read + e.write + e.timeout))
end
"""
_CHECK_DONE = """\
local DONE = "data: [DONE]\\n\\n"
function response(status, headers, body)
  if status == 200 and body:sub(-#DONE) ~= DONE then failed = failed + 1 end
end"""


def script(folder: Path, model: str, stream: bool) -> Path:
    """The Lua script for ``model``, streaming with usage or not, written into ``folder``."""
    path = folder / f"wrk-{model}-{'stream' if stream else 'plain'}.lua"
    payload = body(model, stream).decode()
    assert "]]" not in payload
    headers = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in HEADERS.items())
    path.write_text(_SCRIPT.format(headers=headers, body=payload, check=_CHECK_DONE if stream else ""))
    return path


def run(core: str | None, url: str, lua: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One wrk run (pinned to ``core``): req/s, p50/p99 ms, non-2xx, failed, and the requests counted."""
    duration = f"{max(1, round(seconds))}s"  # wrk takes whole seconds
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}", "--latency", "-s", str(lua), url]
    out = subprocess.run(pinned(core, *command), capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith('{"requests"'))
    summary = json.loads(line)
    return {
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "non_2xx": summary["non_2xx"],
        "failed": summary["failed"],
        "requests": summary["requests"],
    }
