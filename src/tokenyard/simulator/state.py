"""The live state of one simulator: counters, recent requests, current faults, RNG, slots, files and batches.

Built once by ``build_app`` and passed to every handler; in-process users read it as ``app.state``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tokenyard.simulator.batch_job import BatchStore
from tokenyard.simulator.capacity import Slots
from tokenyard.simulator.clock import Clock
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.file_store import FileStore
from tokenyard.simulator.message_batch_job import MessageBatchStore
from tokenyard.simulator.metrics import EngineMeter

REQUEST_LOG_SIZE = 200


@dataclass(slots=True)
class Counters:
    """Monotonic event counts since start or the last reset."""

    requests_total: int = 0
    """Requests received under ``/v1/``, whatever their outcome."""
    requests_completed: int = 0
    """Non-streamed inference answers delivered."""
    requests_cancelled: int = 0
    """Non-streamed inference requests whose client left before the answer."""
    streams_completed: int = 0
    """Streams that reached ``[DONE]``."""
    streams_cancelled: int = 0
    """Streams whose client disconnected mid-way."""
    streams_cut: int = 0
    """Streams aborted on purpose by ``cut_stream_after_chunks``."""
    errors_injected: int = 0
    """Requests answered with an injected error (``error_rate`` or ``fail_next``)."""
    by_path: dict[str, int] = field(default_factory=dict)
    """``requests_total`` split by request path."""


@dataclass(slots=True)
class RecordedRequest:
    """A request as it reached the simulator, for tests to check what a proxy forwarded."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed (integers past 64 bits come back as floats)
    raw: str  # the body's exact text


@dataclass(slots=True)
class StoredResponse:
    """A Response kept for ``GET /v1/responses/{id}``, with its input items. A background one is decided
    when it is created and seen by the simulator's clock: in progress until ``done_at``, then done, unless
    it was cancelled first."""

    response: dict[str, Any]
    items: list[dict[str, Any]]
    done_at: float | None = None  # background only: when it is done, and when it left the queue
    started_at: float = 0.0
    cancelled_at: float | None = None

    def seen(self, now: float) -> dict[str, Any]:
        """The response as a client sees it at ``now``."""
        done_at = self.done_at
        if done_at is None or (self.cancelled_at is None and now >= done_at):
            return self.response
        if self.cancelled_at is not None:
            status = "cancelled"
        else:
            status = "queued" if now < self.started_at else "in_progress"
        unfinished: dict[str, Any] = {
            "status": status,
            "output": [],
            "usage": None,
            "incomplete_details": None,
        }
        return {**self.response, **unfinished}


class SimulatorState:
    """Everything a running simulator knows and can be told at run time."""

    __slots__ = (
        "batches",
        "clock",
        "config",
        "counters",
        "engine",
        "faults",
        "files",
        "message_batches",
        "metrics_frozen",
        "prompt_cache",
        "recent_requests",
        "rng",
        "slots",
        "stored_responses",
    )

    def __init__(self, config: SimulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.slots = Slots(config.max_concurrency if config.mode == "dedicated" else None)
        self.counters = Counters()
        self.faults = config.faults.model_copy()
        self.recent_requests: deque[RecordedRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self.rng = random.Random(config.seed)
        self.files = FileStore(config.seed)
        self.batches = BatchStore(config.seed)
        self.message_batches = MessageBatchStore(config.seed)  # Anthropic's Message Batches
        self.engine = EngineMeter()  # the figures /metrics reports beside the slots
        self.metrics_frozen: str | None = None  # the page metrics_stale serves
        self.stored_responses: dict[str, StoredResponse] = {}
        self.prompt_cache: set[bytes] = set()  # the Messages prefixes written (dialects.messages_prompt)

    def reset(self) -> None:
        """Zero the counters, forget recent requests, files and batches, restore the configured faults and
        reseed the RNGs.

        Requests still running keep their slots, so ``in_flight`` and ``queued`` stay truthful gauges.
        """
        self.counters = Counters()
        self.recent_requests.clear()
        self.faults = self.config.faults.model_copy()
        self.rng = random.Random(self.config.seed)
        self.slots.reset_peak()
        self.files.clear()
        self.batches.clear()
        self.message_batches.clear()
        self.engine.reset(self.clock.monotonic())
        self.metrics_frozen = None
        self.stored_responses.clear()
        self.prompt_cache.clear()

    def record(self, request: RecordedRequest) -> None:
        """Count a ``/v1/`` request and remember it."""
        self.counters.requests_total += 1
        by_path = self.counters.by_path
        by_path[request.path] = by_path.get(request.path, 0) + 1
        self.recent_requests.append(request)

    def take_fault(self) -> int | None:
        """The injected error status for this request, if it gets one (``fail_next`` first, then the rate)."""
        faults = self.faults
        if faults.fail_next > 0:
            faults.fail_next -= 1
        # Draw only when a rate is set, so enabling faults later does not shift the latency samples before it.
        elif not (faults.error_rate > 0.0 and self.rng.random() < faults.error_rate):
            return None
        self.counters.errors_injected += 1
        return faults.error_status

    def model_ids(self) -> list[str]:
        """The models ``/v1/models`` lists."""
        return list(self.config.models) or ["sim-model"]

    def serves(self, model: str) -> bool:
        """Whether requests for ``model`` are accepted (any model when none are configured)."""
        return not self.config.models or model in self.config.models

    def stats(self) -> dict[str, Any]:
        """The ``/sim/stats`` snapshot.

        ``in_flight`` counts requests holding a generation slot (from prefill to their last byte; in
        serverless mode every generating request), ``queued`` those waiting for one (dedicated mode only).
        """
        counters = self.counters
        return {
            "name": self.config.name,
            "mode": self.config.mode,
            "requests_total": counters.requests_total,
            "in_flight": self.slots.in_flight,
            "queued": self.slots.queued,
            "max_in_flight": self.slots.max_in_flight,
            "requests_completed": counters.requests_completed,
            "requests_cancelled": counters.requests_cancelled,
            "streams_completed": counters.streams_completed,
            "streams_cancelled": counters.streams_cancelled,
            "streams_cut": counters.streams_cut,
            "errors_injected": counters.errors_injected,
            "by_path": dict(counters.by_path),
        }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` recorded requests, oldest first."""
        records = list(self.recent_requests)[-limit:] if limit > 0 else []
        return [
            {"method": r.method, "path": r.path, "headers": r.headers, "body": r.body, "raw": r.raw}
            for r in records
        ]
