"""The Batch API endpoints: create, retrieve, list and cancel (``/v1/batches``).

Every call first brings the batches it shows up to the simulator clock's present (``BatchJob.advance``).
"""

from __future__ import annotations

from typing import Any

from tokenyard.errors import InvalidRequest
from tokenyard.simulator.answers import ENDPOINT_KINDS
from tokenyard.simulator.batch_job import COMPLETION_WINDOWS_S, BatchOrder
from tokenyard.simulator.request import Request
from tokenyard.simulator.resources import Query, page
from tokenyard.simulator.state import SimulatorState
from tokenyard.wire.asgi import Send, send_json
from tokenyard.wire.openai import list_page

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512


async def create_batch(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/batches``: ``{input_file_id, endpoint, completion_window, metadata}``."""
    order = _read_order(state, request.json_object())
    now = state.clock.time()
    job = state.batches.create(order, now, state.config, state.faults, state.serves)
    job.advance(now, state.files)  # a zero turnaround is done at once
    await send_json(send, 200, job.as_object(now))


async def retrieve_batch(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/batches/{id}``."""
    job = state.batches.get(request.path_param)
    now = state.clock.time()
    job.advance(now, state.files)
    await send_json(send, 200, job.as_object(now))


async def list_batches(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/batches?after=&limit=``: newest first, a page at a time."""
    query = Query(request.query)
    limit = query.integer("limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
    chosen, has_more = page(state.batches.newest_first(), lambda job: job.id, query.text("after"), limit)
    now = state.clock.time()
    for job in chosen:
        job.advance(now, state.files)
    await send_json(send, 200, list_page([job.as_object(now) for job in chosen], has_more))


async def cancel_batch(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/batches/{id}/cancel``: the batch goes ``cancelling``, then ``cancelled``."""
    job = state.batches.get(request.path_param)
    now = state.clock.time()
    job.cancel(now, state.files)
    await send_json(send, 200, job.as_object(now))


def _read_order(state: SimulatorState, body: dict[str, Any]) -> BatchOrder:
    """The checked fields of a create request; what OpenAI refuses at once is refused here too."""
    input_file_id = _required_text(body, "input_file_id")
    endpoint = _required_text(body, "endpoint")
    if endpoint not in ENDPOINT_KINDS:
        listed = ", ".join(f"'{supported}'" for supported in ENDPOINT_KINDS)
        raise InvalidRequest(
            f"Invalid value: '{endpoint}'. Supported values are: {listed}.", param="endpoint"
        )
    window = _required_text(body, "completion_window")
    if window not in COMPLETION_WINDOWS_S:
        raise InvalidRequest(
            f"Invalid value: '{window}'. Supported values are: '24h'.", param="completion_window"
        )
    input_file = state.files.lookup(input_file_id, param="input_file_id")
    if input_file.purpose != "batch":
        raise InvalidRequest(
            f"The file {input_file_id} has purpose '{input_file.purpose}'; a batch needs purpose 'batch'.",
            param="input_file_id",
        )
    return BatchOrder(input_file, endpoint, window, _metadata(body.get("metadata")))


def _required_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{name}': expected a string.", param=name)
    return value


def _metadata(value: object) -> dict[str, str] | None:
    """Up to 16 string pairs, keys up to 64 characters and values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > METADATA_MAX_PAIRS:
        raise InvalidRequest(
            f"'metadata' must be an object of at most {METADATA_MAX_PAIRS} pairs.", param="metadata"
        )
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX_CHARS or not isinstance(item, str):
            raise InvalidRequest(
                f"Invalid metadata key '{key}': keys are at most {METADATA_KEY_MAX_CHARS} characters"
                " and values strings.",
                param="metadata",
            )
        if len(item) > METADATA_VALUE_MAX_CHARS:
            raise InvalidRequest(
                f"Invalid metadata value for '{key}': at most {METADATA_VALUE_MAX_CHARS} characters.",
                param="metadata",
            )
    return dict(value)
