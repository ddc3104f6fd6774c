"""OpenAI's background responses, run on tokenyard's async track: the queued answer, and the response as a
job stands (pure).

``POST /v1/responses`` with ``background: true`` is a job whose id is the response's (``resp_…``). The client
gets a ``Response`` with status ``queued`` at once, and ``GET /v1/responses/{id}`` reads the job: queued
until a dispatcher answers it, then the upstream's whole response under the job's id (``completed`` or
``incomplete`` as the upstream said), ``failed`` with the error when the upstream refused it, ``cancelled``
when the client cancelled it first.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from tokenyard.queue.front import CANCELLED_PATH
from tokenyard.queue.model import Job, JobResult

CANCELLED_STATUS: Final = 499  # a job's result when its client cancelled it before it ran (nobody served it)

# The request fields a Response echoes (the openai SDK's ``Response`` reads them).
_ECHOED: Final = (
    "instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "previous_response_id",
    "reasoning", "service_tier", "temperature", "text", "tool_choice", "tools", "top_p", "truncation", "user",
)  # fmt: skip
_DEFAULTS: Final[dict[str, Any]] = {
    "metadata": {},
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
}


def response_of(job: Job, status: str, **fields: Any) -> dict[str, Any]:
    """The ``Response`` a background job stands for, with ``status`` and no output yet (or ``fields``)."""
    try:
        request = orjson.loads(job.body)
    except orjson.JSONDecodeError:
        request = {}
    echoed = {name: request.get(name, _DEFAULTS.get(name)) for name in _ECHOED}
    return {
        "id": job.id,
        "object": "response",
        "created_at": int(job.created_at),
        "status": status,
        "background": True,
        "error": None,
        "incomplete_details": None,
        "model": job.model,
        "output": [],
        "usage": None,
        **echoed,
        **fields,
    }


def queued_answer(job: Job) -> bytes:
    """The answer to ``POST /v1/responses`` with ``background: true``: the response, queued."""
    return orjson.dumps(response_of(job, "queued"))


def cancelled_result(job: Job, wall_s: float) -> JobResult:
    """The result a cancelled background job is stored with (so no dispatcher runs it after)."""
    body = orjson.dumps(response_of(job, "cancelled"))
    return JobResult(job.id, CANCELLED_STATUS, body, CANCELLED_PATH, wall_s, "application/json")


def answered(job: Job, result: JobResult) -> dict[str, Any]:
    """The response of a background job that has its result."""
    if result.path == CANCELLED_PATH:
        return response_of(job, "cancelled")
    body = result.json_object()
    if result.status == 200 and body is not None and body.get("object") == "response":
        # The upstream ran it in the foreground: its response, under the id the client knows.
        return {**body, "id": job.id, "background": True, "created_at": int(job.created_at)}
    error = body.get("error") if body is not None else None
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return response_of(
        job,
        "failed",
        error={
            "code": code if isinstance(code, str) else "server_error",
            "message": message if isinstance(message, str) else f"the upstream answered {result.status}",
        },
    )
