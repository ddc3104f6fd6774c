"""Async-track jobs and their answers, built for tests: a chat completion for tenant ``acme`` created
around ``T0`` (``tests.support.clocks``), and the upstream's reply to it."""

from __future__ import annotations

import orjson

from tests.support.clocks import T0
from tokenyard.queue.model import Job, JobResult, new_job_id


def job(n: int = 0, **overrides: object) -> Job:
    """A job created ``n`` seconds after ``T0`` with a fresh id, due a day later; fields as overridden."""
    fields: dict[str, object] = {
        "id": new_job_id(),
        "tenant": "acme",
        "model": "llama",
        "endpoint": "/v1/chat/completions",
        "body": b'{"model": "llama", "messages": [{"role": "user", "content": "caf\\u00e9 \xc3\xa9"}]}',
        "created_at": float(T0 + n),
        "deadline": float(T0 + 86400),
        "reason": "Prefer: respond-async",
    }
    return Job(**(fields | overrides))  # type: ignore[arg-type]


def answer(job_id: str, path: str = "realtime", content: str = "hi") -> JobResult:
    """A 200 chat completion saying ``content``, served by ``path`` a minute after ``T0``."""
    body = orjson.dumps({"object": "chat.completion", "choices": [{"message": {"content": content}}]})
    return JobResult(job_id, 200, body, path, float(T0 + 60))
