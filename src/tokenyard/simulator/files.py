"""The Files API endpoints: upload, list, retrieve, download and delete (``/v1/files``)."""

from __future__ import annotations

from tokenyard.errors import InvalidRequest
from tokenyard.simulator.request import Request
from tokenyard.simulator.resources import Query, page
from tokenyard.simulator.shapes import BINARY_HEADERS
from tokenyard.simulator.state import SimulatorState
from tokenyard.wire.asgi import Send, send_bytes, send_json
from tokenyard.wire.multipart import parse_form
from tokenyard.wire.openai import file_deleted, list_page

# What clients may upload with; ``batch_output`` files are written by the simulator's batches only.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
LIST_LIMIT_MAX = 10_000


async def upload_file(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/files`` (multipart/form-data with ``file`` and ``purpose``)."""
    fields = parse_form(request.headers.get("content-type", ""), request.raw_body)
    upload, purpose_field = fields.get("file"), fields.get("purpose")
    if upload is None or upload.filename is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    if purpose_field is None:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
    purpose = purpose_field.content.decode("utf-8", "replace")
    if purpose not in UPLOAD_PURPOSES:
        listed = ", ".join(f"'{option}'" for option in UPLOAD_PURPOSES)
        raise InvalidRequest(f"'{purpose}' is not one of [{listed}] - 'purpose'", param="purpose")
    stored = state.files.add(upload.filename, purpose, upload.content, int(state.clock.time()))
    await send_json(send, 200, stored.as_object())


async def list_files(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/files?purpose=&order=&after=&limit=``: newest first unless ``order=asc``."""
    query = Query(request.query)
    limit = query.integer("limit", LIST_LIMIT_MAX, 1, LIST_LIMIT_MAX)
    newest_first = query.choice("order", "desc", ("asc", "desc")) == "desc"
    files = state.files.listing(query.text("purpose"), newest_first=newest_first)
    chosen, has_more = page(files, lambda stored: stored.id, query.text("after"), limit)
    await send_json(send, 200, list_page([stored.as_object() for stored in chosen], has_more))


async def retrieve_file(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/files/{id}``."""
    await send_json(send, 200, state.files.get(request.path_param).as_object())


async def file_content(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/files/{id}/content``: the file's exact bytes."""
    await send_bytes(send, 200, state.files.get(request.path_param).content, BINARY_HEADERS)


async def delete_file(state: SimulatorState, request: Request, send: Send) -> None:
    """``DELETE /v1/files/{id}`` (batches that read it keep their own copy of its lines)."""
    state.files.delete(request.path_param)
    await send_json(send, 200, file_deleted(request.path_param))
