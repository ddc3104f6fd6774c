"""The queue's data, defined once: a job, its result, and what the queue holds right now."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

import orjson

from tokenyard.wire.ids import new_object_id

JSON_TYPE: Final = "application/json"
# A result stored before results kept their content type, whose body is not JSON: it was UTF-8 text (the
# old format kept bodies as strings), and what it was is not known.
LEGACY_TEXT_TYPE: Final = "text/plain; charset=utf-8"


def _dumps(record: Job | JobResult) -> bytes:
    """A job or result as JSON; its body kept as a string (base64 under ``body_b64`` if it is not UTF-8)."""
    value: dict[str, Any] = asdict(record)
    try:
        value["body"] = record.body.decode()
    except UnicodeDecodeError:  # an upstream's answer may be anything; a client's request is JSON
        del value["body"]
        value["body_b64"] = base64.b64encode(record.body).decode()
    return orjson.dumps(value)


def _fields(data: bytes | str, known: frozenset[str]) -> dict[str, Any]:
    """The fields of ``_dumps``'s JSON, the body as bytes again; fields this version does not know (written
    by a newer one) are left out, so replicas of two versions can share a store."""
    value: dict[str, Any] = orjson.loads(data)
    encoded = value.pop("body_b64", None)
    value["body"] = base64.b64decode(encoded) if encoded is not None else value["body"].encode()
    return {key: item for key, item in value.items() if key in known}


def new_job_id() -> str:
    """A fresh job id."""
    return new_object_id("job_")


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
    request_id: str = ""  # the id of the request that made it (none for a Batch API line)
    key_id: str = ""  # the name of the key that made it (never its secret)
    traceparent: str = ""  # the W3C trace context of the request that made it (its spans join that trace)
    team: str = ""  # the key's team when it was made ("" when it has none)
    # The budget reservation its answer draws down (its batch's); "": its answer settles the one made under
    # request_id, if any (a queued request's own).
    budget_hold: str = ""

    def dumps(self) -> bytes:
        """The job as the stores keep it."""
        return _dumps(self)

    @classmethod
    def loads(cls, data: bytes | str) -> Job:
        """The inverse of ``dumps``."""
        return cls(**_fields(data, _JOB_FIELDS))


@dataclass(slots=True)
class JobResult:
    """The answer to a job: exactly what the client gets, and which path produced it."""

    job_id: str
    status: int  # HTTP status of the answer
    body: bytes  # the OpenAI response (or error) body
    path: str  # idle_dedicated | provider_batch | realtime | expired | cancelled
    finished_at: float
    content_type: str = JSON_TYPE  # of the body, as its upstream (or tokenyard) labelled it
    # Who served it, as the real-time answer said: x-tokenyard-backend, -backend-kind, -route, -attempts …
    served_by: list[tuple[str, str]] = field(default_factory=list)
    request_id: str = ""  # the id it was run (and metered) under

    def dumps(self) -> bytes:
        """The result as the stores keep it."""
        return _dumps(self)

    @classmethod
    def loads(cls, data: bytes | str) -> JobResult:
        """The inverse of ``dumps``; a result stored before results had a content type gets its body's."""
        value = _fields(data, _RESULT_FIELDS)
        if "content_type" not in value:
            value["content_type"] = JSON_TYPE if _json_object(value["body"]) is not None else LEGACY_TEXT_TYPE
        value["served_by"] = [tuple(pair) for pair in value.get("served_by", ())]
        return cls(**value)

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object (every OpenAI answer is one), or None: an HTML page from a gateway in
        front of the upstream, say, whatever its content type claims."""
        return _json_object(self.body)

    def describe(self) -> str:
        """What the answer was, in words, for an error message about a body that is not JSON."""
        text = " ".join(self.body[:600].decode("utf-8", "replace").split())[:200]
        said = f": {text}" if text else " (empty)"
        return f"The upstream answered {self.status} with a {self.content_type} body, not JSON{said}"


def _json_object(body: bytes) -> dict[str, Any] | None:
    if not body[:64].lstrip().startswith(b"{"):  # most bodies that are not JSON are ruled out unparsed
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


_JOB_FIELDS: Final = frozenset(f.name for f in fields(Job))
_RESULT_FIELDS: Final = frozenset(f.name for f in fields(JobResult))


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
