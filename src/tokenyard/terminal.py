"""Output for people at a terminal: plain text tables, and a progress bar on stderr for long work."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

_WIDTH = 24


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  " + "  ".join(
            [
                first.ljust(widths[0]),
                *(cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)),
            ]
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


class Progress:
    """Draws ``label  45% |█████░░░| 12.3/27.1 MB  3.4 s, 4 s left`` in place, at most ten times a second.

    Shown when ``enabled`` (default: when the stream is a terminal). Use as a context manager, call
    ``update(done)`` as work advances; the last state is left on its own line when it ends.
    """

    __slots__ = ("_drawn_at", "_started", "done", "enabled", "label", "stream", "total", "unit")

    def __init__(
        self,
        label: str,
        total: float | None,
        *,
        unit: str = "MB",
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total if total else None
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0.0
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def update(self, done: float) -> None:
        """Record progress; redraw if a tenth of a second has passed."""
        self.done = done
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn_at >= 0.1:
                self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        elapsed = now - self._started
        scale = 1e6 if self.unit == "MB" else 1.0
        if self.total:
            share = min(1.0, self.done / self.total)
            filled = round(share * _WIDTH)
            left = elapsed * (1 - share) / share if share > 0 else 0.0
            bar = f"{share:4.0%} |{'█' * filled}{'░' * (_WIDTH - filled)}| "
            amount = f"{self.done / scale:,.1f}/{self.total / scale:,.1f} {self.unit}"
            tail = f"  {elapsed:.1f} s, {left:.0f} s left"
        else:
            bar, amount, tail = "", f"{self.done / scale:,.1f} {self.unit}", f"  {elapsed:.1f} s"
        self.stream.write(f"\r{self.label}  {bar}{amount}{tail}\x1b[K")
        self.stream.flush()
