"""One Anthropic Message Batch's life as plain data: its requests' results, its times, what is seen when.

Like the OpenAI Batch API beside it (``batches.py``), a batch is decided when it is created — each
request's answer, computed by the same code as the real-time ``/v1/messages``, and the moment it
finishes, spread evenly until ``batch_turnaround_s`` — and what a client sees at time *t* follows
from those times, the expiry and any cancel. Nothing runs in the background: the simulator's clock
drives the whole life::

    in_progress → ended                        every request succeeded or errored
    in_progress → ended                        at expiry: the requests not done by then expired
    in_progress → canceling → ended            the requests not done at the cancel were canceled

Faults: ``batch_error_rate`` errors requests with ``error_status``'s error type (529 ``overloaded_error``,
400 ``invalid_request_error`` …); ``batch_expire_after_s`` expires batches early. Counts stay 0 until the
batch ends, and results (JSONL, in no particular order) exist only then, as Anthropic's do.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from tokenyard.errors import InvalidRequest, ModelNotFound, TokenyardError
from tokenyard.simulator.config import FaultConfig, SimulatorConfig
from tokenyard.simulator.dialects import MessageParts, messages_prompt
from tokenyard.simulator.resources import IdMaker
from tokenyard.simulator.tokens import generate_texts, plan_dialect
from tokenyard.simulator.tool_calls import required_tool
from tokenyard.wire import anthropic

MAX_REQUESTS: Final = 100_000
EXPIRES_AFTER_S: Final = 86_400.0
CUSTOM_ID: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class BatchRefused(Exception):
    """A request the Message Batches API refuses, with its status (the error type follows from it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """How one request ends if it gets to run: when, and its ``succeeded`` or ``errored`` result."""

    custom_id: str
    done_at: float
    result: dict[str, Any]


@dataclass(slots=True)
class MessageBatch:
    """One Message Batch: its requests' outcomes, its times, and any cancel."""

    id: str
    created_at: float
    ends_at: float  # when its last request finishes, if nothing stops it
    expires_at: float
    cancelling_s: float
    outcomes: list[RequestOutcome]
    cancel_at: float | None = None
    rng_seed: str = ""

    def ended_at(self) -> float:
        """When processing ends: after its last request, at expiry, or once a cancel has settled."""
        natural = min(self.ends_at, self.expires_at)
        if self.cancel_at is not None and self.cancel_at < natural:
            return self.cancel_at + self.cancelling_s
        return natural

    def status(self, now: float) -> str:
        """``in_progress``, ``canceling`` or ``ended`` at ``now``."""
        if now >= self.ended_at():
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def result_of(self, outcome: RequestOutcome) -> dict[str, Any]:
        """A request's result once the batch has ended: its own, or why it never ran."""
        stopped_at = min(self.expires_at, self.cancel_at if self.cancel_at is not None else self.expires_at)
        if outcome.done_at <= stopped_at:
            return outcome.result
        cancelled = self.cancel_at is not None and self.cancel_at < self.expires_at
        return {"type": "canceled"} if cancelled else {"type": "expired"}

    def as_object(self, now: float, results_url: str) -> dict[str, Any]:
        """The ``message_batch`` object as seen at ``now``."""
        status = self.status(now)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if status == "ended":
            for outcome in self.outcomes:
                counts[self.result_of(outcome)["type"]] += 1
        else:
            counts["processing"] = len(self.outcomes)
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": rfc3339(self.ended_at()) if status == "ended" else None,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.created_at + EXPIRES_AFTER_S),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.cancel_at) if self.cancel_at is not None else None,
            "results_url": results_url if status == "ended" else None,
        }

    def results(self) -> bytes:
        """The results file: one ``{"custom_id", "result"}`` a line, in a shuffled (seeded) order."""
        order = list(range(len(self.outcomes)))
        random.Random(self.rng_seed).shuffle(order)
        lines = (
            {"custom_id": self.outcomes[i].custom_id, "result": self.result_of(self.outcomes[i])}
            for i in order
        )
        return b"".join(orjson.dumps(line) + b"\n" for line in lines)


class MessageBatchStore:
    """Message Batches by id, in creation order."""

    __slots__ = ("_batches", "_ids", "_seed")

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._batches: dict[str, MessageBatch] = {}
        self._ids = IdMaker(seed, "message_batches")

    def create(
        self,
        requests: list[tuple[str, dict[str, Any]]],
        now: float,
        config: SimulatorConfig,
        faults: FaultConfig,
        serves: Callable[[str], bool],
    ) -> MessageBatch:
        """Start a batch of (custom_id, params) at ``now``, with the config and faults of this moment."""
        batch_id = self._ids.base62_id("msgbatch_")
        rng = random.Random(f"{config.seed}\x00{batch_id}")
        turnaround_s = config.batch_turnaround_s
        outcomes = [
            RequestOutcome(
                custom_id,
                now + turnaround_s * (index + 1) / len(requests),
                _result(params, config, serves, faults, rng, int(now)),
            )
            for index, (custom_id, params) in enumerate(requests)
        ]
        expire_after_s = faults.batch_expire_after_s
        batch = MessageBatch(
            id=batch_id,
            created_at=now,
            ends_at=now + turnaround_s,
            expires_at=now + (EXPIRES_AFTER_S if expire_after_s is None else expire_after_s),
            cancelling_s=config.batch_cancelling_s,
            outcomes=outcomes,
            rng_seed=f"{config.seed}\x00{batch_id}\x00results",
        )
        self._batches[batch_id] = batch
        return batch

    def get(self, batch_id: str) -> MessageBatch:
        """The batch with this id; ``BatchRefused`` (404) if there is none."""
        batch = self._batches.get(batch_id)
        if batch is None:
            raise BatchRefused(404, f"No message batch found with id '{batch_id}'.")
        return batch

    def newest_first(self) -> list[MessageBatch]:
        """Every batch, the most recently created first."""
        return list(self._batches.values())[::-1]

    def clear(self) -> None:
        """Forget every batch and restart the ids."""
        self._batches.clear()
        self._ids = IdMaker(self._seed, "message_batches")


# -- a request's answer ---------------------------------------------------------------------------------


def _result(
    params: dict[str, Any],
    config: SimulatorConfig,
    serves: Callable[[str], bool],
    faults: FaultConfig,
    rng: random.Random,
    created: int,
) -> dict[str, Any]:
    """A request's ``succeeded`` result (a Messages answer) or ``errored`` one (a fault or a bad body)."""
    id_bits = rng.getrandbits(96)
    if faults.batch_error_rate > 0.0 and rng.random() < faults.batch_error_rate:
        return _errored(faults.error_status, "Injected failure from the simulator.")
    try:
        return {"type": "succeeded", "message": _message(params, config, serves, id_bits)}
    except TokenyardError as exc:
        return _errored(exc.status_code, exc.message)


def _message(
    params: dict[str, Any], config: SimulatorConfig, serves: Callable[[str], bool], id_bits: int
) -> dict[str, Any]:
    """The Messages answer ``/v1/messages`` would give ``params`` (a batch has no prompt cache to read: a
    marked prefix is written, as a first request's is)."""
    if not isinstance(params, dict) or params.get("max_tokens") is None:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    total, prefix, _ = messages_prompt(params)
    plan = plan_dialect(params, total, "max_tokens", config.default_max_tokens, config.max_output_tokens)
    if not serves(plan.model):
        raise ModelNotFound(f"model: {plan.model}")
    tool = required_tool(
        params.get("tools"), params.get("tool_choice"), f"toolu_{id_bits:024x}", api="messages"
    )
    parts = MessageParts(
        f"msg_{id_bits:024x}",
        plan.model,
        total - prefix,
        0,
        prefix,
        plan.completion_tokens,
        plan.finish_reason,
        tool,
    )
    [text] = generate_texts(config.seed, orjson.dumps(params), 1, plan.completion_tokens_per_choice)
    return parts.whole(text)


def _errored(status: int, message: str) -> dict[str, Any]:
    error = anthropic.error_payload(message, anthropic.error_type_for(status))
    return {"type": "errored", "error": {**error, "request_id": None}}


def rfc3339(at: float) -> str:
    """Unix seconds as Anthropic writes times: RFC 3339 in UTC."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
