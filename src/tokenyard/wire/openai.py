"""OpenAI's API shapes that tokenyard serves, relays and imitates, defined once (pure).

The service, the simulator and the adapters all speak them: the inference paths, the error object, the
Files and Batch objects (``FileObject``, ``FileDeleted``, a cursor page, a batch's status and the lines of
its output and error files) and ``Model``. Plain data in, ``dict`` or ``bytes`` out; shapes and key order
follow the ``openai`` Python SDK's types and the Batch guide.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import orjson

from tokenyard.errors import TokenyardError

# -- paths ---------------------------------------------------------------------------------------------

API_PREFIX: Final = "/v1"  # what an upstream's base URL ends with; inference paths are relative to it
CHAT_PATH: Final = "/v1/chat/completions"
COMPLETIONS_PATH: Final = "/v1/completions"
EMBEDDINGS_PATH: Final = "/v1/embeddings"
RESPONSES_PATH: Final = "/v1/responses"
INFERENCE_PATHS: Final = (CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH)
"""The endpoints a request (and a batch line) may call, in the order OpenAI lists them."""

# -- errors --------------------------------------------------------------------------------------------


def error_payload(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_body(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """An OpenAI error body, serialised."""
    return orjson.dumps(error_payload(message, error_type, param=param, code=code))


def error_payload_for(exc: TokenyardError) -> dict[str, Any]:
    """The error object a tokenyard error maps to (its status is ``exc.status_code``)."""
    return error_payload(exc.message, exc.error_type, param=exc.param, code=exc.code)


# -- models --------------------------------------------------------------------------------------------


def model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    """One ``Model``, as ``/v1/models`` lists it."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``/v1/models`` answer (not paged)."""
    return {"object": "list", "data": models}


# -- files ---------------------------------------------------------------------------------------------


def file_object(
    file_id: str, size_bytes: int, created_at: int, filename: str, purpose: str, expires_at: int | None
) -> dict[str, Any]:
    """A ``FileObject``, as upload, retrieve and list return it."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size_bytes,
        "created_at": created_at,
        "expires_at": expires_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


def file_deleted(file_id: str) -> dict[str, Any]:
    """The answer to ``DELETE /v1/files/{id}``."""
    return {"id": file_id, "object": "file", "deleted": True}


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of a cursor-paged list (files, batches): the next page starts ``after`` ``last_id``."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# -- batches -------------------------------------------------------------------------------------------

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
BATCH_TERMINAL: Final[frozenset[BatchStatus]] = frozenset({"completed", "failed", "expired", "cancelled"})
"""The statuses a batch never leaves: its output and error files, if any, are final."""


def batch_response_line(
    line_id: str, custom_id: str, status_code: int, request_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A line of a batch output (2xx) or error (4xx/5xx) file: the request ran and got this answer."""
    response = {"status_code": status_code, "request_id": request_id, "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def batch_error_line(line_id: str, custom_id: str, error: dict[str, Any]) -> dict[str, Any]:
    """A line of a batch error file with no response: ``error`` is ``{"code", "message"}``."""
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": error}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    """JSON Lines, as batch files are written: one compact object per line, each ending in a newline."""
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)
