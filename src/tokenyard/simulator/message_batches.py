"""Anthropic's Message Batches API (``/v1/messages/batches``): create, retrieve, list, cancel and results.

Every call reads the batch as it is at the simulator clock's present (``message_batch_job``); errors are in
Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from tokenyard.simulator.message_batch_job import (
    CUSTOM_ID,
    MAX_REQUESTS,
    BatchRefused,
    MessageBatch,
)
from tokenyard.simulator.request import Request
from tokenyard.simulator.state import SimulatorState
from tokenyard.wire import anthropic
from tokenyard.wire.asgi import Send, send_bytes, send_json

RESULTS_HEADERS: Final = [(b"content-type", b"application/binary")]  # how Anthropic labels results

# -- the endpoints ----------------------------------------------------------------------------------------


async def create_batch(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/messages/batches``: ``{"requests": [{"custom_id", "params"}]}``."""
    await _answer(send, lambda: _create(state, request))


async def retrieve_batch(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/messages/batches/{id}``."""
    await _answer(send, lambda: _seen(state, request, state.message_batches.get(request.path_param)))


async def list_batches(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/messages/batches``: newest first (one page: the simulator keeps few)."""
    data = [_seen(state, request, batch) for batch in state.message_batches.newest_first()]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    await send_json(send, 200, {"data": data, "has_more": False, "first_id": first, "last_id": last})


async def cancel_batch(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/messages/batches/{id}/cancel``: ``canceling``, ``ended`` after ``batch_cancelling_s``."""

    def cancel() -> dict[str, Any]:
        batch = state.message_batches.get(request.path_param)
        now = state.clock.time()
        if batch.status(now) == "ended":
            raise BatchRefused(400, f"Batch '{batch.id}' has already ended and cannot be canceled.")
        if batch.cancel_at is None:
            batch.cancel_at = now
        return _seen(state, request, batch)

    await _answer(send, cancel)


async def batch_results(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/messages/batches/{id}/results``: JSONL, once the batch has ended."""
    try:
        batch = state.message_batches.get(request.path_param)
        if batch.status(state.clock.time()) != "ended":
            raise BatchRefused(400, f"Batch '{batch.id}' is still processing; its results are not ready.")
    except BatchRefused as refused:
        await _refuse(send, refused)
        return
    await send_bytes(send, 200, batch.results(), RESULTS_HEADERS)


def _create(state: SimulatorState, request: Request) -> dict[str, Any]:
    requests = _read_requests(request.json if request.json_ok else None)
    batch = state.message_batches.create(
        requests, state.clock.time(), state.config, state.faults, state.serves
    )
    return _seen(state, request, batch)


def _read_requests(body: Any) -> list[tuple[str, dict[str, Any]]]:
    """The checked (custom_id, params) pairs of a create request; what Anthropic refuses at once is 400."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise BatchRefused(400, "requests: a list of at least one request is required")
    if len(requests) > MAX_REQUESTS:
        raise BatchRefused(400, f"requests: at most {MAX_REQUESTS} requests are allowed in one batch")
    seen: set[str] = set()
    checked = []
    for index, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        params = item.get("params") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise BatchRefused(400, f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if custom_id in seen:
            raise BatchRefused(400, f"requests.{index}.custom_id: '{custom_id}' is not unique in the batch")
        if not isinstance(params, dict):
            raise BatchRefused(400, f"requests.{index}.params: an object is required")
        seen.add(custom_id)
        checked.append((custom_id, params))
    return checked


def _seen(state: SimulatorState, request: Request, batch: MessageBatch) -> dict[str, Any]:
    host = request.headers.get("host", "127.0.0.1")
    results_url = f"http://{host}{anthropic.MESSAGE_BATCHES_PATH}/{batch.id}/results"
    return batch.as_object(state.clock.time(), results_url)


async def _answer(send: Send, build: Callable[[], dict[str, Any]]) -> None:
    try:
        payload = build()
    except BatchRefused as refused:
        await _refuse(send, refused)
        return
    await send_json(send, 200, payload)


async def _refuse(send: Send, refused: BatchRefused) -> None:
    payload = anthropic.error_payload(refused.message, anthropic.error_type_for(refused.status))
    await send_json(send, refused.status, payload)
