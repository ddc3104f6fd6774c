"""The queue's data, defined once: a job, its result, and what the queue holds right now."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson


def _dumps(record: Job | JobResult) -> bytes:
    """A job or result as JSON; its body (JSON bytes) kept as a string."""
    fields: dict[str, Any] = asdict(record)
    fields["body"] = record.body.decode()
    return orjson.dumps(fields)


def _fields(data: bytes | str) -> dict[str, Any]:
    """The fields of ``_dumps``'s JSON, the body as bytes again."""
    fields: dict[str, Any] = orjson.loads(data)
    fields["body"] = fields["body"].encode()
    return fields


def new_job_id() -> str:
    """A fresh job id."""
    return f"job_{uuid.uuid4().hex}"


@dataclass(slots=True)
class Job:
    """One request that nobody waits on: what to run, for whom, and by when."""

    id: str
    tenant: str
    model: str
    endpoint: str  # /v1/chat/completions | /v1/completions | /v1/embeddings
    body: bytes  # the request body as the client sent it (JSON)
    created_at: float  # unix seconds
    deadline: float  # unix seconds: answered by then, by whichever path
    reason: str = ""  # why it is async (the classification's reason)
    delivery: str = "poll"  # poll (the client polls, or a callback) | hold (a connection waits on it)
    callback: str | None = None  # POST the result here when done (an allow-listed URL)

    def dumps(self) -> bytes:
        """The job as the stores keep it."""
        return _dumps(self)

    @classmethod
    def loads(cls, data: bytes | str) -> Job:
        """The inverse of ``dumps``."""
        return cls(**_fields(data))


@dataclass(slots=True)
class JobResult:
    """The answer to a job: exactly what the client gets, and which path produced it."""

    job_id: str
    status: int  # HTTP status of the answer
    body: bytes  # the OpenAI response (or error) body
    path: str  # idle_dedicated | provider_batch | realtime | failed
    finished_at: float

    def dumps(self) -> bytes:
        """The result as the stores keep it."""
        return _dumps(self)

    @classmethod
    def loads(cls, data: bytes | str) -> JobResult:
        """The inverse of ``dumps``."""
        return cls(**_fields(data))


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the queue holds right now (the queue-depth gauges)."""

    waiting: int  # nobody holds them
    claimed: int  # a dispatcher holds them
    in_batches: int  # inside provider batches
    oldest_created_at: float | None  # of the jobs not yet answered


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A tenant's object kept beside the jobs: a Batch API file, its content, or a batch's record."""

    kind: str  # file | file_content | batch
    id: str
    tenant: str
    created_at: float
    body: bytes
