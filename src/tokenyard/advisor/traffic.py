"""Per-minute traffic of a workload (pure): what the cost model replays against every architecture.

Traffic covers a window of minutes, but only the minutes that had requests are stored (a minute with none
is zeros), so memory and work follow the busy minutes, not the window: two requests a year apart are two
stored minutes. It is split three ways because the candidates and the current setup treat them
differently:

- ``realtime``: someone was waiting, and nothing says it could have waited;
- ``eligible``: it ran real-time, but its workload or tenant is marked async-eligible;
- ``ran_async``: it went down the async track.

Series are ``array``s (minute indices and values side by side): 30 busy days × 20 models stays ~50 MB,
and summing them stays in C.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tokenyard.meter.shapes import SHAPE_COUNT, shape_index

MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86400
WEEK_H = 7 * 24


def _floats() -> array[float]:
    return array("d")


class Totals(NamedTuple):
    """A series summed over its minutes: what every per-token price needs (prices are linear)."""

    requests: float
    prompt: float
    cached: float
    completion: float

    def plus(self, other: Totals) -> Totals:
        """Both totals."""
        return Totals(*(a + b for a, b in zip(self, other, strict=True)))

    @property
    def tokens(self) -> float:
        """Input and output tokens."""
        return self.prompt + self.completion


@dataclass(slots=True)
class ShapeCounts:
    """A series' requests per request shape (``meter/shapes.py``), minute by minute, and each shape's totals.

    Sparse: per shape, only the minutes that had requests of it (a minute sees a few shapes, not twenty).
    Every request of a series is in some shape: rows stored before the meter counted shapes (or a log
    without them) put their requests in the shape of their mean lengths (``TrafficBuilder.add``).
    """

    # Per shape: the minutes (ascending) and their requests, side by side.
    minutes: list[array[int]] = field(default_factory=lambda: [array("q") for _ in range(SHAPE_COUNT)])
    requests: list[array[float]] = field(default_factory=lambda: [_floats() for _ in range(SHAPE_COUNT)])
    # Per shape: requests, prompt tokens and completion tokens over the series.
    sums: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0, 0.0] for _ in range(SHAPE_COUNT)])

    def add(self, i: int, shape: int, requests: float, prompt: float, completion: float) -> None:
        """Add ``requests`` of shape ``shape`` (and their tokens) to minute ``i``."""
        minutes, counts = self.minutes[shape], self.requests[shape]
        if not minutes or i > minutes[-1]:
            minutes.append(i)
            counts.append(requests)
        else:
            k = bisect_left(minutes, i)
            if k == len(minutes) or minutes[k] != i:
                minutes.insert(k, i)
                counts.insert(k, 0.0)
            counts[k] += requests
        sums = self.sums[shape]
        sums[0] += requests
        sums[1] += prompt
        sums[2] += completion

    def columns(self, index: Sequence[int]) -> list[array[float]]:
        """Per shape, its requests at each minute of ``index`` (ascending), 0 where it had none."""
        where = {minute: k for k, minute in enumerate(index)}
        out = []
        for minutes, counts in zip(self.minutes, self.requests, strict=True):
            column = array("d", bytes(8 * len(index)))
            for minute, count in zip(minutes, counts, strict=True):
                k = where.get(minute)
                if k is not None:
                    column[k] += count
            out.append(column)
        return out

    def weighted(self, index: Sequence[int], weights: Sequence[float]) -> list[float]:
        """At each minute of ``index``: ``Σ_shape requests × weights[shape]`` (a minute's load on a table)."""
        out = [0.0] * len(index)
        where: dict[int, int] | None = None
        for minutes, counts, weight in zip(self.minutes, self.requests, weights, strict=True):
            if not minutes:
                continue
            if minutes == index:  # the shape is in every minute (compared in C): no look-ups
                out = list(map(float.__add__, out, map(weight.__mul__, counts)))
                continue
            if where is None:
                where = {minute: k for k, minute in enumerate(index)}
            for minute, count in zip(minutes, counts, strict=True):
                k = where.get(minute)
                if k is not None:
                    out[k] += count * weight
        return out

    def totals(self) -> list[tuple[float, float, float]]:
        """Per shape: (requests, prompt tokens, completion tokens) over the series."""
        return [(r, p, c) for r, p, c in self.sums]

    def plus(self, other: ShapeCounts) -> ShapeCounts:
        """Both, minute by minute."""
        out = ShapeCounts()
        for shape in range(SHAPE_COUNT):
            merged: dict[int, float] = {}
            for source in (self, other):
                for minute, count in zip(source.minutes[shape], source.requests[shape], strict=True):
                    merged[minute] = merged.get(minute, 0.0) + count
            ordered = sorted(merged)
            out.minutes[shape] = array("q", ordered)
            out.requests[shape] = array("d", map(merged.__getitem__, ordered))
            out.sums[shape] = [a + b for a, b in zip(self.sums[shape], other.sums[shape], strict=True)]
        return out

    def between(self, start: int, end: int) -> ShapeCounts:
        """Minutes ``start`` to ``end``, re-indexed from ``start`` (as ``TokenSeries.between``).

        The per-shape token sums are scaled by the share of the shape's requests kept (the series keeps
        tokens per minute, not per shape and minute)."""
        out = ShapeCounts()
        for shape in range(SHAPE_COUNT):
            minutes, counts = self.minutes[shape], self.requests[shape]
            a, b = bisect_left(minutes, start), bisect_left(minutes, end)
            kept = counts[a:b]
            out.minutes[shape] = array("q", [m - start for m in minutes[a:b]]) if start else minutes[a:b]
            out.requests[shape] = kept
            requests, prompt, completion = self.sums[shape]
            share = sum(kept) / requests if requests else 0.0
            out.sums[shape] = [sum(kept), prompt * share, completion * share]
        return out

    def is_empty(self) -> bool:
        """Whether no shape has a request."""
        return not any(sums[0] for sums in self.sums)


@dataclass(slots=True)
class TokenSeries:
    """Requests and tokens of the minutes that had any; ``prompt`` includes the ``cached`` tokens.

    ``index`` holds the minutes' indices in the window, ascending; the other columns their values, in the
    same order. Every per-minute list the cost model derives from a series is aligned with ``index``.
    """

    index: array[int] = field(default_factory=lambda: array("q"))
    requests: array[float] = field(default_factory=_floats)
    prompt: array[float] = field(default_factory=_floats)
    cached: array[float] = field(default_factory=_floats)
    completion: array[float] = field(default_factory=_floats)
    shapes: ShapeCounts = field(default_factory=ShapeCounts, kw_only=True)  # the requests by shape
    # The sums, kept until the next add.
    _totals: Totals | None = field(default=None, repr=False, compare=False, kw_only=True)

    def add(
        self,
        i: int,
        requests: float,
        prompt: float,
        cached: float,
        completion: float,
        shapes: Iterable[tuple[int, float, float, float]] = (),
    ) -> None:
        """Add usage to minute ``i`` (fastest in ascending order: then it only appends), and its requests by
        shape: ``shapes`` holds (shape index, requests, prompt, completion) as the meter counted them; the
        requests they leave out (a row stored before the meter counted shapes, a log without them) count in
        the shape of their mean lengths."""
        self.add_minute(i, requests, prompt, cached, completion)
        by_shape = self.shapes
        for shape, n, p, c in shapes:
            if n > 0:
                by_shape.add(i, shape, n, p, c)
                requests, prompt, completion = requests - n, prompt - p, completion - c
        if requests >= 0.5:
            rest = shape_index(round(max(0.0, prompt) / requests), round(max(0.0, completion) / requests))
            by_shape.add(i, rest, requests, max(0.0, prompt), max(0.0, completion))

    def add_minute(self, i: int, requests: float, prompt: float, cached: float, completion: float) -> None:
        """Add usage to minute ``i``'s columns only (its shapes are the caller's)."""
        self._totals = None
        index = self.index
        # Spelled out column by column: this runs once per stored row (a loop over the columns was 2× slower).
        if not index or i > index[-1]:
            index.append(i)
            self.requests.append(requests)
            self.prompt.append(prompt)
            self.cached.append(cached)
            self.completion.append(completion)
            return
        k = len(index) - 1 if i == index[-1] else bisect_left(index, i)
        if index[k] != i:
            index.insert(k, i)
            for column in self.columns():
                column.insert(k, 0.0)
        self.requests[k] += requests
        self.prompt[k] += prompt
        self.cached[k] += cached
        self.completion[k] += completion

    def plus(self, other: TokenSeries) -> TokenSeries:
        """Both series, minute by minute."""
        if other.is_empty():
            return self
        if self.is_empty():
            return other
        if self.index == other.index:  # the same minutes (compared in C): add column by column
            return TokenSeries(
                array("q", self.index),  # a copy: adding to the sum must not move this series' minutes
                *(
                    array("d", map(float.__add__, a, b))
                    for a, b in zip(self.columns(), other.columns(), strict=True)
                ),
                shapes=self.shapes.plus(other.shapes),
            )
        merged = TokenSeries(shapes=self.shapes.plus(other.shapes))
        for i, *values in sorted(
            [
                *zip(self.index, *self.columns(), strict=True),
                *zip(other.index, *other.columns(), strict=True),
            ],
            key=lambda row: row[0],
        ):
            merged.add_minute(i, *values)
        return merged

    def is_empty(self) -> bool:
        """Whether no minute has any request or token (``any`` on an array runs in C)."""
        return not (any(self.requests) or any(self.prompt) or any(self.completion))

    def totals(self) -> Totals:
        """Every column summed (once: the candidates all ask)."""
        if self._totals is None:
            self._totals = Totals(*map(sum, self.columns()))
        return self._totals

    def columns(self) -> tuple[array[float], array[float], array[float], array[float]]:
        """Requests, prompt, cached and completion, aligned with ``index``."""
        return (self.requests, self.prompt, self.cached, self.completion)

    def between(self, start: int, end: int) -> TokenSeries:
        """Minutes ``start`` to ``end`` (indices, 0 <= start <= end), re-indexed from ``start``."""
        a, b = bisect_left(self.index, start), bisect_left(self.index, end)
        index = self.index[a:b]
        if start:
            index = array("q", [i - start for i in index])
        return TokenSeries(
            index, *(column[a:b] for column in self.columns()), shapes=self.shapes.between(start, end)
        )


@dataclass(slots=True)
class Traffic:
    """One workload's traffic over ``minutes`` minutes from ``start_minute`` (unix s, minute-aligned)."""

    start_minute: int
    minutes: int
    realtime: TokenSeries
    eligible: TokenSeries
    ran_async: TokenSeries
    first_seen: float | None = None  # unix seconds of the first request seen (how much history there is)
    last_seen: float | None = None
    model: str = ""  # the model the workload's requests named
    basis: str = ""  # how the window was chosen, in words (the advice says it)

    @classmethod
    def empty(cls, start_minute: int, minutes: int, basis: str = "") -> Traffic:
        """No traffic over ``minutes`` minutes."""
        return cls(start_minute, minutes, TokenSeries(), TokenSeries(), TokenSeries(), basis=basis)

    @property
    def end_minute(self) -> int:
        """Where the window ends (unix seconds, exclusive)."""
        return self.start_minute + MINUTE_S * self.minutes

    def sliced(self, start: int, end: int) -> Traffic:
        """Minutes ``start`` to ``end`` (indices, as in a list slice) of this traffic."""
        span = range(self.minutes)[start:end]
        start, end = span.start, max(span.start, span.stop)
        return Traffic(
            self.start_minute + MINUTE_S * start,
            end - start,
            self.realtime.between(start, end),
            self.eligible.between(start, end),
            self.ran_async.between(start, end),
            self.first_seen,
            self.last_seen,
            self.model,
            self.basis,
        )

    def stored_minutes(self) -> int:
        """Minutes held in memory over the three series (the busy ones): what the work is proportional to."""
        return len(self.realtime.index) + len(self.eligible.index) + len(self.ran_async.index)

    def deferrable(self) -> Totals:
        """What could have waited, summed: eligible plus what ran async (the batch candidate's share)."""
        return self.eligible.totals().plus(self.ran_async.totals())

    def must_wait_for(self) -> TokenSeries:
        """What ran real-time (the current setup's real-time share)."""
        return self.realtime.plus(self.eligible)

    def tokens_by_hour_of_week(self) -> list[float]:
        """Average tokens in each hour of the week (Monday 00:00 UTC first), for the traffic picture.

        Each hour of the week is averaged over the times it occurs in the window (a window of eight days
        from a Sunday holds two Sundays), so the picture shows a typical week, not the log's length.
        """
        out = [0.0] * WEEK_H
        # The unix epoch was a Thursday: day 3 with Monday = 0.
        first = self.start_minute // HOUR_S
        for series in (self.realtime, self.eligible, self.ran_async):
            start = self.start_minute
            for i, p, c in zip(series.index, series.prompt, series.completion, strict=True):
                if p or c:
                    out[((start + MINUTE_S * i) // HOUR_S + 3 * 24) % WEEK_H] += p + c
        hours = (self.end_minute - 1) // HOUR_S - first + 1 if self.minutes else 0
        weeks, rest = divmod(hours, WEEK_H)
        occurrences = [weeks] * WEEK_H
        for k in range(rest):
            occurrences[(first + 3 * 24 + k) % WEEK_H] += 1
        return [total / n if n else 0.0 for total, n in zip(out, occurrences, strict=True)]

    def history_days(self, now: float) -> float:
        """Days from the first request seen to ``now``: how much of the weekly cycle was observed."""
        return 0.0 if self.first_seen is None else max(0.0, now - self.first_seen) / 86400


@dataclass(slots=True)
class TrafficBuilder:
    """Collects usage rows into per-workload ``Traffic`` over ``[start_minute, end_minute)``.

    ``workload_of(model, tenant)`` names the workload a row belongs to (None: ignore the row);
    ``eligible(model, tenant)`` says whether its real-time traffic could have been async.
    """

    start_minute: int
    end_minute: int
    workload_of: Callable[[str, str], str | None]
    eligible: Callable[[str, str], bool]
    basis: str = ""  # how the window was chosen, in words
    workloads: dict[str, Traffic] = field(default_factory=dict)
    skipped_rows: int = 0  # outside the window, or of no workload
    skipped_requests: float = 0.0  # ...and the requests they held

    @property
    def minutes(self) -> int:
        """The window's length in minutes."""
        return (self.end_minute - self.start_minute) // MINUTE_S

    def add(
        self,
        ts: float,
        *,
        model: str,
        tenant: str,
        mode: str,
        requests: float,
        prompt: float,
        cached: float,
        completion: float,
        async_eligible: bool = False,
        shapes: Iterable[tuple[int, float, float, float]] = (),
    ) -> None:
        """Add one request (or a minute's aggregate) finished at ``ts``; ``shapes``: its requests by shape
        (``TokenSeries.add``)."""
        i = (int(ts) - self.start_minute) // MINUTE_S
        name = self.workload_of(model, tenant)
        if name is None or not 0 <= i < self.minutes:
            self.skipped_rows += 1
            self.skipped_requests += requests
            return
        traffic = self.workloads.get(name)
        if traffic is None:
            traffic = self.workloads[name] = Traffic.empty(self.start_minute, self.minutes, self.basis)
            traffic.model = model
        if mode == "async":
            series = traffic.ran_async
        elif async_eligible or self.eligible(model, tenant):
            series = traffic.eligible
        else:
            series = traffic.realtime
        series.add(i, requests, prompt, cached, completion, shapes)
        if traffic.first_seen is None or ts < traffic.first_seen:
            traffic.first_seen = ts
        if traffic.last_seen is None or ts > traffic.last_seen:
            traffic.last_seen = ts
