"""A progress bar for long command-line work, on stderr, only where a person is watching."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 24


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
