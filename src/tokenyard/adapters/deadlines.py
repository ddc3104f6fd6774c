"""Deadlines for many waits on one lazily re-armed timer: what ``asyncio.timeout_at`` does, without a timer
per wait.

Every upstream request waits twice under a deadline (for the response head, then for its body or each
chunk of its stream). ``asyncio.timeout_at`` schedules and cancels a loop timer for each wait, ~2.5-4 µs
apiece under uvloop (measured), several times a request and once a chunk when streaming. Here a wait is a
field in a set: one timer, armed for the earliest deadline, finds on firing the waits that are due, cancels
their tasks (each then raises ``TimeoutError``, as under ``asyncio.timeout_at``), and re-arms itself for
the earliest deadline left. A deadline that moves later (the next chunk's) costs an assignment; only one
earlier than the timer re-arms it. ``edge.connections`` keeps a connection's own deadlines the same way.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType


class Deadlines:
    """The deadlines of waits in one event loop, on one timer."""

    __slots__ = ("_due", "_loop", "_timer", "_waits")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waits: dict[Wait, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf  # when the timer fires (inf: not armed)

    def time(self) -> float:
        """The loop's clock, which deadlines are on."""
        return self._loop.time()

    def wait(self, deadline: float) -> Wait:
        """A wait due at ``deadline`` (loop time): enter it around the awaits it bounds (again and again,
        with ``deadline`` moved in between, if one wait follows another)."""
        return Wait(self, deadline)

    def _arm(self, deadline: float) -> None:
        """Make the timer fire by ``deadline``."""
        if self._timer is not None:
            self._timer.cancel()
        self._due = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._due = None, math.inf
        now = self._loop.time()
        earliest = math.inf
        for wait in list(self._waits):
            if wait.deadline <= now:
                wait.expire()
            elif wait.deadline < earliest:
                earliest = wait.deadline
        if earliest < math.inf:
            self._arm(earliest)


class Wait:
    """A task's wait under a deadline: a context manager that raises ``TimeoutError`` when the deadline
    passes inside it (it cancels the task, and turns that cancellation into the timeout on the way out, as
    ``asyncio.timeout_at`` does). Set ``deadline`` before entering; it may be entered again after."""

    __slots__ = ("_cancelling", "_owner", "_task", "deadline", "expired")

    def __init__(self, owner: Deadlines, deadline: float) -> None:
        self._owner = owner
        self._task: asyncio.Task[object] | None = None
        self.deadline = deadline
        self.expired = False
        self._cancelling = 0

    def due_in(self, seconds: float) -> None:
        """Set the deadline ``seconds`` from now (for the next time the wait is entered)."""
        self.deadline = self._owner._loop.time() + seconds

    def expire(self) -> None:
        """The deadline passed: cancel the waiting task (once); leaving the wait raises ``TimeoutError``."""
        if not self.expired and self._task is not None:
            self.expired = True
            self._task.cancel()

    def __enter__(self) -> Wait:
        owner = self._owner
        task = self._task = asyncio.current_task(owner._loop)
        assert task is not None, "a deadline bounds a task's await"
        self._cancelling = task.cancelling()
        owner._waits[self] = None
        if self.deadline < owner._due:
            owner._arm(self.deadline)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        del self._owner._waits[self]
        task, self._task = self._task, None
        if self.expired:
            self.expired = False
            # As asyncio.Timeout: the timeout's only if no one else cancelled the task as well.
            if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:  # type: ignore[union-attr]
                raise TimeoutError from exc
