"""Traffic logs into per-workload traffic: the meter's export formats, or a minimal one; JSON lines.

Accepted lines (extra keys are ignored):

- minimal: ``{"ts": unix seconds or ISO 8601, "model", "prompt_tokens", "completion_tokens"}`` with optional
  ``"cached_tokens"``, ``"tenant"``, ``"mode": "realtime"|"async"``, ``"async_eligible": bool``;
- ``tokenyard export``: request records (the same fields, and more);
- ``tokenyard export --aggregates``: per-minute buckets, which add ``"requests"`` (a line stands for that
  many requests).

Lines are summed per minute while reading, so memory follows minutes × workloads, not requests.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tokenyard.router.advisor.traffic import MINUTE_S, Traffic, TrafficBuilder


class TrafficLogError(ValueError):
    """A line of a traffic log that cannot be read; the message names the line."""


_Key = tuple[str, str, str, bool, int]  # model, tenant, mode, async_eligible, minute


def _when(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("ts must be unix seconds or ISO 8601")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ValueError(f"ts must be unix seconds or ISO 8601, not {value!r}")


def _count(obj: dict[str, Any], name: str, *, default: int | None = None) -> float:
    value = obj.get(name, default)
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, not {value!r}")
    return float(value)


@dataclass(slots=True)
class TrafficLog:
    """Per-minute sums of a traffic log, by model × tenant × mode × async-eligible."""

    minutes: dict[_Key, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0] * 4))
    lines: int = 0
    first_ts: float | None = None
    last_ts: float | None = None

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
        ts = _when(obj.get("ts"))
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
        sums = self.minutes[(model, str(obj.get("tenant") or ""), mode, eligible, minute)]
        for i, value in enumerate(counts):
            sums[i] += value
        self.lines += 1
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

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

    def traffic(
        self, workload_of: Callable[[str, str], str | None], eligible: Callable[[str, str], bool]
    ) -> dict[str, Traffic]:
        """Per-workload traffic over the log's whole span, minute by minute."""
        if self.first_ts is None or self.last_ts is None:
            return {}
        start = int(self.first_ts) // MINUTE_S * MINUTE_S
        end = (int(self.last_ts) // MINUTE_S + 1) * MINUTE_S
        builder = TrafficBuilder(start, end, workload_of, eligible)
        for (model, tenant, mode, is_eligible, minute), (
            requests,
            prompt,
            cached,
            completion,
        ) in self.minutes.items():
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
            )
        return builder.workloads
