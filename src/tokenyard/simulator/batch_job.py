"""One batch's life as plain data: its timeline, its lines' outcomes, and what can be seen of it at any time.

Everything about a batch is decided when it is created: its input is checked (``batch_input``), each line's
answer is computed by the same code as the real-time endpoints (``answers``), and each line is given the
moment it finishes, spread evenly over the ``in_progress`` phase. What a client sees at time *t* (status,
timestamps, request counts, usage, output and error files) follows from those times, the expiry and any
cancel request. ``advance(now)`` applies the transitions that are due, so nothing runs in the background
and a fake clock drives the whole life cycle::

    validating → in_progress → finalizing → completed
    validating → failed                          the input file has errors
    validating | in_progress | finalizing → expired     it would complete after expires_at
    validating | in_progress | finalizing → cancelling → cancelled

Request counts add up at the end: ``completed`` lines are in the output file, ``failed`` ones (errors, and
the lines an expiry or a cancel kept from running) in the error file, and ``completed + failed == total``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenyard.errors import ObjectNotFound, TokenyardError
from tokenyard.simulator import shapes
from tokenyard.simulator.answers import answer, output_work
from tokenyard.simulator.batch_input import BatchInput, BatchRequest, read_batch_input
from tokenyard.simulator.config import FaultConfig, SimulatorConfig
from tokenyard.simulator.file_store import FileStore, StoredFile
from tokenyard.simulator.resources import IdMaker, InvalidState
from tokenyard.wire import openai

Status = openai.BatchStatus

COMPLETION_WINDOWS_S = {"24h": 86_400.0}
MAX_BATCH_OUTPUT = 1_000_000
"""Tokens (and embedding numbers) one batch may ask for in all. Every line is answered when the batch is
created, inside the event loop a quick-start proxy shares, so the total is bounded, as OpenAI bounds what a
batch may enqueue (``token_limit_exceeded``)."""
VALIDATING_SHARE = 0.1
FINALIZING_SHARE = 0.1
TIMESTAMPED: tuple[Status, ...] = (
    "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
)  # fmt: skip
# The error-file entry of a line that never ran, by the status that stopped it.
UNRUN_ERRORS: dict[Status, dict[str, str]] = {
    "expired": {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    },
    "cancelled": {
        "code": "batch_cancelled",
        "message": "This request was not executed because the batch was cancelled.",
    },
}


@dataclass(frozen=True, slots=True)
class Timeline:
    """When a batch reaches each phase if nothing stops it, and when it expires (Unix seconds)."""

    created_at: float
    in_progress_at: float
    finalizing_at: float
    completed_at: float
    expires_at: float

    @classmethod
    def plan(cls, created_at: float, turnaround_s: float, expires_after_s: float) -> Timeline:
        """The phases of a batch created at ``created_at``: 10% validating, 80% running, 10% finalizing."""
        return cls(
            created_at,
            created_at + VALIDATING_SHARE * turnaround_s,
            created_at + (1.0 - FINALIZING_SHARE) * turnaround_s,
            created_at + turnaround_s,
            created_at + expires_after_s,
        )

    @property
    def expires_first(self) -> bool:
        """Whether the batch would complete after it expires, and so expires instead."""
        return self.completed_at > self.expires_at

    def line_done_at(self, index: int, total: int) -> float:
        """When line ``index`` of ``total`` finishes: evenly spread, the last one at ``finalizing_at``."""
        span_s = self.finalizing_at - self.in_progress_at
        return self.in_progress_at + span_s * (index + 1) / total


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """How one line ends, if it gets to run: its output- or error-file entry, its time and its tokens."""

    custom_id: str
    line_id: str
    done_at: float
    succeeded: bool
    entry: dict[str, Any]
    input_tokens: int
    output_tokens: int


def run_lines(
    requests: list[BatchRequest],
    endpoint: str,
    timeline: Timeline,
    config: SimulatorConfig,
    serves: Callable[[str], bool],
    faults: FaultConfig,
    rng: random.Random,
) -> list[LineOutcome]:
    """Every line's outcome, in input order; ``rng`` gives the ids and the injected failures."""
    total = len(requests)
    return [
        _run_line(request, endpoint, timeline.line_done_at(index, total), config, serves, faults, rng)
        for index, request in enumerate(requests)
    ]


def _check_output_budget(checked: BatchInput, endpoint: str, config: SimulatorConfig) -> None:
    """Fail a batch whose lines ask for more than ``MAX_BATCH_OUTPUT`` in all."""
    asked = sum(output_work(endpoint, request.body, config) for request in checked.requests)
    if asked > MAX_BATCH_OUTPUT:
        checked.fail(
            "token_limit_exceeded",
            f"The batch's requests ask for {asked} output tokens in all; at most {MAX_BATCH_OUTPUT} may be "
            "enqueued in one batch.",
        )
        checked.requests = []


def _run_line(
    request: BatchRequest,
    endpoint: str,
    done_at: float,
    config: SimulatorConfig,
    serves: Callable[[str], bool],
    faults: FaultConfig,
    rng: random.Random,
) -> LineOutcome:
    line_id = f"batch_req_{rng.getrandbits(128):032x}"
    request_id = f"req_{rng.getrandbits(128):032x}"
    # Draw only when a rate is set, as the real-time faults do.
    if faults.batch_error_rate > 0.0 and rng.random() < faults.batch_error_rate:
        status, body = faults.error_status, shapes.injected_error_payload(faults.error_status)
    else:
        try:
            body = answer(
                endpoint,
                request.body,
                request.raw_body,
                config,
                serves,
                id_bits=rng.getrandbits(96),
                created=int(done_at),
            )
            status = 200
        except TokenyardError as exc:
            status, body = exc.status_code, openai.error_payload_for(exc)
    succeeded = 200 <= status < 300
    usage: dict[str, int] = body.get("usage", {}) if succeeded else {}
    return LineOutcome(
        request.custom_id,
        line_id,
        done_at,
        succeeded,
        openai.batch_response_line(line_id, request.custom_id, status, request_id, body),
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
    )


@dataclass(slots=True)
class BatchJob:
    """A batch: what it was asked, how each line will end, and how far it has got."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    model: str | None
    timeline: Timeline
    cancelling_s: float
    input_errors: list[dict[str, Any]]
    outcomes: list[LineOutcome]
    status: Status = "validating"
    reached: dict[Status, float] = field(default_factory=dict)
    """When the batch entered each status it has reached (Unix seconds)."""
    output_file_id: str | None = None
    error_file_id: str | None = None

    def advance(self, now: float, files: FileStore) -> None:
        """Apply every transition due by ``now``; the one that ends the batch writes its files."""
        while (step := self._next_transition()) is not None and step[1] <= now:
            status, at = step
            self.status = status
            self.reached[status] = at
            if status in UNRUN_ERRORS or status == "completed":
                self._write_files(at, files)

    def cancel(self, now: float, files: FileStore) -> None:
        """Start cancelling at ``now`` (again: no change); a batch that has ended cannot be cancelled."""
        self.advance(now, files)
        if self.status in openai.BATCH_TERMINAL:
            raise InvalidState(f"Cannot cancel a batch with status '{self.status}'.")
        if self.status != "cancelling":
            self.status = "cancelling"
            self.reached["cancelling"] = now

    def as_object(self, now: float) -> dict[str, Any]:
        """The ``batch`` object as seen at ``now`` (after ``advance(now)``)."""
        total, completed, failed, input_tokens, output_tokens = self._tally(now)
        stamps = {f"{status}_at": _stamp(self.reached.get(status)) for status in TIMESTAMPED}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.input_errors} if self.status == "failed" else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.timeline.created_at),
            "expires_at": int(self.timeline.expires_at),
            **stamps,
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": shapes.batch_usage(input_tokens, output_tokens),
            "metadata": self.metadata,
        }

    def _next_transition(self) -> tuple[Status, float] | None:
        timeline = self.timeline
        planned: tuple[Status, float]
        if self.status == "cancelling":
            return "cancelled", self.reached["cancelling"] + self.cancelling_s
        if self.status == "validating":
            planned = ("failed" if self.input_errors else "in_progress", timeline.in_progress_at)
        elif self.status == "in_progress":
            planned = ("finalizing", timeline.finalizing_at)
        elif self.status == "finalizing":
            planned = ("completed", timeline.completed_at)
        else:
            return None
        if timeline.expires_first and timeline.expires_at <= planned[1]:
            return "expired", timeline.expires_at
        return planned

    def _ran_until(self, now: float) -> float:
        """Lines that finish by this time ran; a cancel or an expiry stops the rest."""
        return self.reached.get("cancelling", self.reached.get("expired", now))

    def _tally(self, now: float) -> tuple[int, int, int, int, int]:
        """Total, completed and failed requests, and input and output tokens, as seen at ``now``."""
        if self.status in ("validating", "failed"):
            return 0, 0, 0, 0, 0
        ran_until = self._ran_until(now)
        ran = [outcome for outcome in self.outcomes if outcome.done_at <= ran_until]
        succeeded = [outcome for outcome in ran if outcome.succeeded]
        failed = len(ran) - len(succeeded)
        if self.status in UNRUN_ERRORS:
            failed += len(self.outcomes) - len(ran)
        input_tokens = sum(outcome.input_tokens for outcome in succeeded)
        output_tokens = sum(outcome.output_tokens for outcome in succeeded)
        return len(self.outcomes), len(succeeded), failed, input_tokens, output_tokens

    def _write_files(self, at: float, files: FileStore) -> None:
        ran_until = self._ran_until(at)
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        unrun = UNRUN_ERRORS.get(self.status)
        for outcome in self.outcomes:
            if outcome.done_at <= ran_until:
                (outputs if outcome.succeeded else errors).append(outcome.entry)
            elif unrun is not None:
                errors.append(openai.batch_error_line(outcome.line_id, outcome.custom_id, dict(unrun)))
        # OpenAI leaves a file id null when the file would be empty.
        if outputs:
            name = f"{self.id}_output.jsonl"
            self.output_file_id = files.add(name, "batch_output", openai.jsonl(outputs), int(at)).id
        if errors:
            name = f"{self.id}_error.jsonl"
            self.error_file_id = files.add(name, "batch_output", openai.jsonl(errors), int(at)).id


def _stamp(at: float | None) -> int | None:
    return None if at is None else int(at)


@dataclass(frozen=True, slots=True)
class BatchOrder:
    """What ``POST /v1/batches`` asks for, once its fields are checked."""

    input_file: StoredFile
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


class BatchStore:
    """Batches by id, in creation order."""

    __slots__ = ("_batches", "_ids", "_seed")

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._batches: dict[str, BatchJob] = {}
        self._ids = IdMaker(seed, "batches")

    def create(
        self,
        order: BatchOrder,
        now: float,
        config: SimulatorConfig,
        faults: FaultConfig,
        serves: Callable[[str], bool],
    ) -> BatchJob:
        """Start a batch at ``now``; it takes the config and faults of this moment for its whole life."""
        batch_id = self._ids.hex_id("batch_")
        expires_after_s = faults.batch_expire_after_s
        if expires_after_s is None:
            expires_after_s = COMPLETION_WINDOWS_S[order.completion_window]
        timeline = Timeline.plan(now, config.batch_turnaround_s, expires_after_s)
        checked = read_batch_input(order.input_file.content, order.endpoint, config.batch_max_lines)
        _check_output_budget(checked, order.endpoint, config)
        # Seeded per batch, so a retried batch of the same lines gets fresh failures, deterministically.
        rng = random.Random(f"{config.seed}\x00{batch_id}")
        outcomes = run_lines(checked.requests, order.endpoint, timeline, config, serves, faults, rng)
        job = BatchJob(
            id=batch_id,
            endpoint=order.endpoint,
            input_file_id=order.input_file.id,
            completion_window=order.completion_window,
            metadata=order.metadata,
            model=checked.model,
            timeline=timeline,
            cancelling_s=config.batch_cancelling_s,
            input_errors=checked.errors,
            outcomes=outcomes,
        )
        self._batches[batch_id] = job
        return job

    def get(self, batch_id: str) -> BatchJob:
        """The batch with this id; raises ``ObjectNotFound`` if there is none."""
        job = self._batches.get(batch_id)
        if job is None:
            raise ObjectNotFound(f"No batch found with id '{batch_id}'.")
        return job

    def newest_first(self) -> list[BatchJob]:
        """Every batch, the most recently created first."""
        return list(self._batches.values())[::-1]

    def clear(self) -> None:
        """Forget every batch and restart the ids, as in a fresh simulator."""
        self._batches.clear()
        self._ids = IdMaker(self._seed, "batches")
