"""Traffic logs into per-workload traffic: the meter's export formats, or a minimal one; JSON lines.

Accepted lines (extra keys are ignored):

- minimal: ``{"ts": unix seconds or ISO 8601, "model", "prompt_tokens", "completion_tokens"}`` with optional
  ``"cached_tokens"``, ``"tenant"``, ``"mode": "realtime"|"async"``, ``"async_eligible": bool``;
- ``tokenyard export``: request records (the same fields, and more);
- ``tokenyard export --aggregates``: per-minute buckets, which add ``"requests"`` (a line stands for that
  many requests);
- and at most one ``{"window": {"start": …, "end": …}}`` line: the span the log covers (an export's
  ``--since``/``--until``), quiet hours at its ends included.

``ts`` is unix seconds or ISO 8601; ISO 8601 without a zone is UTC (never the machine's local time). Times
must fall in 2000–2099 and counts in 0–10^12, so that a stray line cannot make the replay's work
unbounded. Lines are summed per minute while reading, so memory follows busy minutes × workloads, not
requests, nor the span between the first and the last line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from tokenyard.advisor.traffic import DAY_S, MINUTE_S, Traffic, TrafficBuilder
from tokenyard.meter.shapes import SHAPE_COUNT, shape_index

TS_MIN = 946_684_800  # 2000-01-01 00:00 UTC
TS_MAX = 4_102_444_800  # 2100-01-01 00:00 UTC
MAX_COUNT = 1e12  # tokens or requests on one line: far above any minute of any deployment


class TrafficLogError(ValueError):
    """A line of a traffic log that cannot be read; the message names the line."""


_Key = tuple[str, str, str, bool, int]  # model, tenant, mode, async_eligible, minute


def parse_time(value: Any, name: str = "ts") -> float:
    """Unix seconds or ISO 8601 (UTC when it names no zone) in 2000–2099, as unix seconds."""
    when: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        when = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:  # a time without a zone is UTC, whatever the machine's zone is
            when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if when is None:
        raise ValueError(f"{name} must be unix seconds or ISO 8601, not {value!r}")
    if not TS_MIN <= when < TS_MAX:  # NaN fails too
        raise ValueError(f"{name} must be between 2000-01-01 and 2100-01-01 UTC, not {value!r}")
    return when


def _count(obj: dict[str, Any], name: str, *, default: int | None = None) -> float:
    value = obj.get(name, default)
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be a number from 0 to 10^12, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Window:
    """The span a replay covers, unix seconds, minute-aligned, ``end`` exclusive; ``basis`` says why."""

    start: int
    end: int
    basis: str

    @property
    def minutes(self) -> int:
        """Its length in minutes."""
        return (self.end - self.start) // MINUTE_S


@dataclass(slots=True)
class TrafficLog:
    """Per-minute sums of a traffic log, by model × tenant × mode × async-eligible."""

    minutes: dict[_Key, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0] * 4))
    # The same requests by shape: shape index → [requests, prompt, completion].
    shapes: dict[_Key, dict[int, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    lines: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    window: tuple[float, float] | None = None  # from the log's own window line

    def add_line(self, line: bytes, number: int) -> None:
        """Parse and add one line (``number``, from 1, names it in errors); blank lines are skipped."""
        if not line.strip():
            return
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            self._add(obj)
        except orjson.JSONDecodeError as exc:
            raise TrafficLogError(f"line {number}: not JSON ({exc})") from exc
        except ValueError as exc:
            raise TrafficLogError(f"line {number}: {exc}") from exc

    def _add(self, obj: dict[str, Any]) -> None:
        if "window" in obj and "ts" not in obj:
            self._window(obj["window"])
            return
        ts = parse_time(obj.get("ts"))
        model = obj.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string")
        mode = obj.get("mode") or "realtime"
        if mode not in ("realtime", "async"):
            raise ValueError(f"mode must be realtime or async, not {mode!r}")
        eligible = obj.get("async_eligible", False)
        if not isinstance(eligible, bool):
            raise ValueError("async_eligible must be true or false")
        prompt = _count(obj, "prompt_tokens")
        cached = _count(obj, "cached_tokens", default=0)
        if cached > prompt:
            raise ValueError("cached_tokens is more than prompt_tokens")
        counts = (_count(obj, "requests", default=1), prompt, cached, _count(obj, "completion_tokens"))
        minute = int(ts) // MINUTE_S * MINUTE_S
        key = (model, str(obj.get("tenant") or ""), mode, eligible, minute)
        sums = self.minutes[key]
        for i, value in enumerate(counts):
            sums[i] += value
        by_shape = self.shapes[key]
        for shape, requests, shape_prompt, shape_completion in _shapes(obj, counts):
            held = by_shape.setdefault(shape, [0.0, 0.0, 0.0])
            held[0] += requests
            held[1] += shape_prompt
            held[2] += shape_completion
        self.lines += 1
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def _window(self, value: Any) -> None:
        if self.window is not None:
            raise ValueError("a second window line (a log has at most one)")
        if not isinstance(value, dict):
            raise ValueError('window must be {"start": …, "end": …}')
        start, end = (
            parse_time(value.get("start"), "window.start"),
            parse_time(value.get("end"), "window.end"),
        )
        if end <= start:
            raise ValueError("window.end must be after window.start")
        self.window = (start, end)

    def read(self, chunks: Iterable[bytes], on_progress: Callable[[int], None] | None = None) -> None:
        """Add every line of a byte stream (e.g. a file opened in binary mode)."""
        done = 0
        for number, line in enumerate(chunks, start=1):
            self.add_line(line, number)
            done += len(line)
            if on_progress is not None and number % 4096 == 0:
                on_progress(done)
        if on_progress is not None:
            on_progress(done)

    def span(self, start: float | None = None, end: float | None = None) -> Window:
        """The window to replay: ``start``/``end`` where given, else the log's window line, else the whole
        UTC days from the first request's to the last's (so quiet hours at the ends count, as the
        replicas' cost does). Raises ``ValueError`` when the window is empty."""
        if self.first_ts is None or self.last_ts is None:
            raise ValueError("no requests in the log")
        if self.window is not None:
            default_start, default_end = self.window
            basis = "the log's window"
        else:
            default_start = self.first_ts // DAY_S * DAY_S
            default_end = (self.last_ts // DAY_S + 1) * DAY_S
            basis = "whole UTC days of the log"
        if start is not None or end is not None:
            basis = "--start/--end" if start is not None and end is not None else f"--start/--end and {basis}"
        lo = int(default_start if start is None else start) // MINUTE_S * MINUTE_S
        hi = -(-math.ceil(default_end if end is None else end) // MINUTE_S) * MINUTE_S
        if hi <= lo:
            raise ValueError(f"the window ends before it starts ({_iso(lo)} to {_iso(hi)})")
        return Window(lo, hi, basis)

    def traffic(
        self,
        workload_of: Callable[[str, str], str | None],
        eligible: Callable[[str, str], bool],
        window: Window,
    ) -> tuple[dict[str, Traffic], float]:
        """Per-workload traffic over ``window``, and how many requests fell outside it."""
        builder = TrafficBuilder(window.start, window.end, workload_of, eligible, basis=window.basis)
        # In time order, so that each series only appends.
        for (model, tenant, mode, is_eligible, minute), (
            requests,
            prompt,
            cached,
            completion,
        ) in sorted(self.minutes.items(), key=lambda item: item[0][4]):
            shapes = self.shapes.get((model, tenant, mode, is_eligible, minute), {})
            builder.add(
                minute,
                model=model,
                tenant=tenant,
                mode=mode,
                requests=requests,
                prompt=prompt,
                cached=cached,
                completion=completion,
                async_eligible=is_eligible,
                shapes=[(k, n, p, c) for k, (n, p, c) in shapes.items()],
            )
        return builder.workloads, builder.skipped_requests


def _shapes(obj: dict[str, Any], counts: tuple[float, ...]) -> list[tuple[int, float, float, float]]:
    """A line's requests by shape: a request's own, or the per-shape fields of an exported minute (what they
    leave out counts in the shape of its mean lengths, as the traffic builder does)."""
    requests, prompt, _, completion = counts
    if requests == 1:
        return [(shape_index(round(prompt), round(completion)), 1.0, prompt, completion)]
    out = []
    for k in range(SHAPE_COUNT):
        n = obj.get(f"s{k}_requests")
        if isinstance(n, int | float) and not isinstance(n, bool) and n > 0:
            out.append(
                (k, float(n), float(obj.get(f"s{k}_prompt") or 0), float(obj.get(f"s{k}_completion") or 0))
            )
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
