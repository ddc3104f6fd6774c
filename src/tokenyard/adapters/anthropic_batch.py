"""Anthropic's Message Batches API as a provider Batch API: Messages requests in, a batch polled, results out.

Anthropic has no files: a batch is created with its requests in the body (``POST /messages/batches``,
``{"requests": [{"custom_id", "params"}]}``, at most 100,000 requests and 256 MB), polled
(``GET /messages/batches/{id}``: ``processing_status`` in_progress | canceling | ended) and, once ended, its
results read as JSONL (``GET /messages/batches/{id}/results``), one ``{"custom_id", "result"}`` a line in
any order. Speaks the protocol only (``adapters.base.BatchUpstream``), in OpenAI's words where the protocol
has them: ``canceling`` is ``cancelling``, an ended batch ``completed`` (or ``cancelled`` once a cancel was
asked, ``expired`` when nothing ran).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import orjson

from tokenyard.adapters.base import BatchLine, BatchState, LineResult
from tokenyard.adapters.batch_http import BatchHttp
from tokenyard.adapters.providers import auth_headers
from tokenyard.errors import UpstreamError
from tokenyard.wire import anthropic

# Anthropic's published limits for one batch.
MAX_REQUESTS: Final = 100_000
MAX_BYTES: Final = 256 * 1024 * 1024
ENDPOINTS: Final = frozenset({anthropic.MESSAGES_PATH})
BATCHES_PATH: Final = anthropic.MESSAGE_BATCHES_PATH.removeprefix("/v1")  # under a base URL ending in /v1

_HEAD: Final = b'{"requests":['
_TAIL: Final = b"]}"
_STATUS_OF_TYPE: Final = {error_type: status for status, error_type in anthropic.ERROR_TYPES.items()}


def encode_request(line: BatchLine) -> bytes:
    """One entry of a create request: the client's Messages body embedded as ``params``, not re-parsed."""
    return orjson.dumps({"custom_id": line.custom_id})[:-1] + b',"params":' + line.body + b"}"


def create_bodies(
    lines: Iterable[BatchLine], *, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES
) -> Iterator[tuple[bytes, list[str]]]:
    """The lines as create-request bodies within the limits: (body, its custom_ids), in order."""
    entries: list[bytes] = []
    ids: list[str] = []
    size = len(_HEAD) + len(_TAIL)
    for line in lines:
        entry = encode_request(line)
        if len(_HEAD) + len(entry) + len(_TAIL) > max_bytes:
            raise ValueError(f"request {line.custom_id} alone is larger than a batch may be")
        if entries and (len(entries) >= max_requests or size + len(entry) + 1 > max_bytes):
            yield _HEAD + b",".join(entries) + _TAIL, ids
            entries, ids, size = [], [], len(_HEAD) + len(_TAIL)
        size += len(entry) + (1 if entries else 0)  # the comma before it
        entries.append(entry)
        ids.append(line.custom_id)
    if entries:
        yield _HEAD + b",".join(entries) + _TAIL, ids


def batch_state(obj: Mapping[str, Any]) -> BatchState:
    """A ``BatchState`` from Anthropic's Message Batch object."""
    counts = {name: int(value) for name, value in (obj.get("request_counts") or {}).items()}
    succeeded, errored = counts.get("succeeded", 0), counts.get("errored", 0)
    unrun = counts.get("canceled", 0) + counts.get("expired", 0)
    processing = obj["processing_status"]
    if processing == "in_progress":
        status = "in_progress"
    elif processing == "canceling":
        status = "cancelling"
    elif processing == "ended":
        if obj.get("cancel_initiated_at"):
            status = "cancelled"
        else:
            status = "expired" if counts.get("expired", 0) and not succeeded + errored else "completed"
    else:
        raise ValueError(f"unknown processing_status {processing!r}")
    return BatchState(
        id=str(obj["id"]),
        status=status,
        output_file_id=None,
        error_file_id=None,
        total=succeeded + errored + unrun + counts.get("processing", 0),
        completed=succeeded,
        failed=errored + unrun,
    )


def results(content: bytes) -> dict[str, LineResult]:
    """Every answered line of a results file by ``custom_id``, as the Messages API would have answered.

    ``succeeded``: 200 and the message; ``errored``: the error's status (``invalid_request_error`` 400,
    ``overloaded_error`` 529, …; 500 for a type Anthropic does not list) and its error body. ``canceled``
    and ``expired`` lines, and lines that cannot be read, are left out: nobody answered those requests.
    """
    out: dict[str, LineResult] = {}
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            custom_id, result = line["custom_id"], line["result"]
            kind = result["type"]
        except (KeyError, TypeError, ValueError):  # ValueError: not JSON
            continue
        if not isinstance(custom_id, str):
            continue
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            out[custom_id] = LineResult(200, orjson.dumps(result["message"]))
        elif kind == "errored":
            out[custom_id] = _errored(result.get("error"))
    return out


def _errored(error: Any) -> LineResult:
    """An errored result's status and body: the error response it carries (``{"type": "error", "error":
    {"type", "message"}}``), or one built around a bare error object."""
    if isinstance(error, dict) and error.get("type") == "error" and isinstance(error.get("error"), dict):
        inner, body = error["error"], error
    elif isinstance(error, dict):
        inner = error
        body = anthropic.error_payload(str(error.get("message", "")), str(error.get("type", "api_error")))
    else:
        inner = {}
        body = anthropic.error_payload("the provider returned no result for this request", "api_error")
    return LineResult(_STATUS_OF_TYPE.get(inner.get("type"), 500), orjson.dumps(body))


class AnthropicBatchUpstream:
    """A client for Anthropic's Message Batches endpoints (``https://api.anthropic.com/v1``)."""

    endpoints: Final = ENDPOINTS

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float = 120.0) -> None:
        self._http = BatchHttp(base_url, auth_headers("anthropic", api_key), timeout_s=timeout_s)

    def input_files(
        self, lines: Iterable[BatchLine], *, max_requests: int = MAX_REQUESTS
    ) -> Iterator[tuple[bytes, list[str]]]:
        """The lines as create-request bodies within Anthropic's limits (``create_bodies``)."""
        return create_bodies(lines, max_requests=min(max_requests, MAX_REQUESTS))

    async def submit(
        self,
        content: bytes,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchState:
        """Create a Message Batch from one of ``input_files``' bodies (Anthropic's window is always 24 h and
        a batch has no metadata: both are ignored)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"Anthropic's Message Batches take {anthropic.MESSAGES_PATH} requests only")
        headers = {"Content-Type": "application/json"}
        return _state(await self._http.json("POST", BATCHES_PATH, data=content, headers=headers))

    async def retrieve(self, batch_id: str) -> BatchState:
        """A batch's current state."""
        return _state(await self._http.json("GET", f"{BATCHES_PATH}/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        """Ask Anthropic to cancel a batch (``canceling``, then ``ended`` with the rest ``canceled``)."""
        return _state(await self._http.json("POST", f"{BATCHES_PATH}/{batch_id}/cancel"))

    async def outcomes(self, state: BatchState) -> dict[str, LineResult]:
        """An ended batch's results by ``custom_id``.

        Read from this client's own base URL, not the batch's ``results_url``: the key is only ever sent to
        the host the configuration names."""
        body, _ = await self._http.call("GET", f"{BATCHES_PATH}/{state.id}/results")
        return results(body)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()


def _state(value: dict[str, Any]) -> BatchState:
    try:
        return batch_state(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(
            "the Message Batches API answered with a batch that has no valid id or processing_status"
        ) from exc
