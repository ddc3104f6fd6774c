"""An OpenAI-compatible Batch API upstream: JSONL in, a batch to poll, JSONL out (files + batches).

Speaks the protocol only (it knows nothing of jobs, tenants or prices): build input files within the
provider's limits, upload them, create and poll batches, and read the output and error files back into
one result per ``custom_id`` (``adapters.base.BatchUpstream``). aiohttp, like the real-time adapter;
these calls are few and large.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import aiohttp
import orjson

from tokenyard.adapters.base import BatchLine, BatchState, BatchUpstream, LineResult
from tokenyard.adapters.batch_http import BatchHttp
from tokenyard.adapters.providers import auth_headers
from tokenyard.errors import UpstreamError
from tokenyard.wire import openai
from tokenyard.wire.ids import new_object_id

# OpenAI's published limits for one batch input file.
MAX_REQUESTS: Final = 50_000
MAX_BYTES: Final = 200 * 1024 * 1024
ENDPOINTS: Final = frozenset({openai.CHAT_PATH, openai.COMPLETIONS_PATH, openai.EMBEDDINGS_PATH})


def encode_line(line: BatchLine) -> bytes:
    """The line as the input file carries it (the body is embedded as JSON, not re-parsed)."""
    head = orjson.dumps({"custom_id": line.custom_id, "method": "POST", "url": line.url})
    body = line.body
    if b"\n" in body or b"\r" in body:
        # A client's pretty-printed JSON: a raw line break in JSON is whitespace between tokens (inside a
        # string it must be escaped), so a space stands for it and the body stays on its one line.
        body = body.replace(b"\r", b" ").replace(b"\n", b" ")
    return head[:-1] + b',"body":' + body + b"}\n"


def input_files(
    lines: Iterable[BatchLine], *, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES
) -> Iterator[tuple[bytes, list[str]]]:
    """The lines as JSONL files within the limits: (file content, its custom_ids), in order."""
    buffer: list[bytes] = []
    ids: list[str] = []
    size = 0
    for line in lines:
        encoded = encode_line(line)
        if len(encoded) > max_bytes:
            raise ValueError(f"request {line.custom_id} alone is larger than a batch file may be")
        if buffer and (len(buffer) >= max_requests or size + len(encoded) > max_bytes):
            yield b"".join(buffer), ids
            buffer, ids, size = [], [], 0
        buffer.append(encoded)
        ids.append(line.custom_id)
        size += len(encoded)
    if buffer:
        yield b"".join(buffer), ids


def results(output: bytes, errors: bytes = b"") -> dict[str, LineResult]:
    """Every line of the output and error files by ``custom_id``.

    An output line carries ``response: {status_code, body}``; an error line either a response with an
    error status or ``error: {code, message}`` and no response (then 500 with that error as the body).
    A line that cannot be read (not JSON, no ``custom_id``, no status) is left out: its request has no
    answer, as if the provider had dropped it.
    """
    out: dict[str, LineResult] = {}
    for raw in (*output.splitlines(), *errors.splitlines()):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            custom_id = line["custom_id"]
            response = line.get("response")
            status = None if response is None else int(response["status_code"])
        except (KeyError, TypeError, ValueError, AttributeError):  # ValueError: not JSON, or no int
            continue
        if not isinstance(custom_id, str):
            continue
        if response is not None and status is not None:
            out[custom_id] = LineResult(status, orjson.dumps(response.get("body")))
        else:
            error = line.get("error")
            if not isinstance(error, dict):
                error = {"message": "the provider returned no response for this request"}
            # As the provider wrote them (a line without a message keeps its null).
            message: Any = error.get("message")
            code: Any = error.get("code")
            out[custom_id] = LineResult(500, openai.error_body(message, "server_error", code=code))
    return out


def batch_state(obj: Mapping[str, Any]) -> BatchState:
    """A ``BatchState`` from OpenAI's Batch object."""
    counts = obj.get("request_counts") or {}
    return BatchState(
        id=obj["id"],
        status=obj["status"],
        output_file_id=obj.get("output_file_id"),
        error_file_id=obj.get("error_file_id"),
        total=int(counts.get("total", 0)),
        completed=int(counts.get("completed", 0)),
        failed=int(counts.get("failed", 0)),
    )


class OpenAIBatchUpstream:
    """A client for one provider's files and batches endpoints (``https://host/v1``)."""

    endpoints: Final = ENDPOINTS

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float = 120.0) -> None:
        self._http = BatchHttp(base_url, auth_headers("openai", api_key), timeout_s=timeout_s)

    def input_files(
        self, lines: Iterable[BatchLine], *, max_requests: int = MAX_REQUESTS
    ) -> Iterator[tuple[bytes, list[str]]]:
        """The lines as JSONL files within OpenAI's limits (``input_files``)."""
        return input_files(lines, max_requests=max_requests)

    def results(self, output: bytes, errors: bytes = b"") -> dict[str, LineResult]:
        """A finished batch's lines by ``custom_id`` (``results``)."""
        return results(output, errors)

    async def submit(
        self,
        content: bytes,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchState:
        """Upload an input file and start a batch over it."""
        file_id = await self.upload(content, filename=new_object_id("tokenyard-") + ".jsonl")
        return await self.create(file_id, endpoint, completion_window=completion_window, metadata=metadata)

    async def outcomes(self, state: BatchState) -> dict[str, LineResult]:
        """A finished batch's output and error files, read back by ``custom_id``."""
        output = await self.content(state.output_file_id) if state.output_file_id else b""
        errors = await self.content(state.error_file_id) if state.error_file_id else b""
        return results(output, errors)

    async def upload(self, content: bytes, filename: str = "batch.jsonl") -> str:
        """Upload a batch input file; its file id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        uploaded = await self._http.json("POST", "/files", data=form)
        if not isinstance(uploaded.get("id"), str):
            raise UpstreamError("the batch API answered an upload without the file's id")
        return str(uploaded["id"])

    async def create(
        self,
        file_id: str,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchState:
        """Start a batch over an uploaded input file."""
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            body["metadata"] = dict(metadata)
        return _state(await self._http.json("POST", "/batches", json=body))

    async def retrieve(self, batch_id: str) -> BatchState:
        """A batch's current state."""
        return _state(await self._http.json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        """Ask the provider to cancel a batch (it goes ``cancelling``, then ``cancelled``)."""
        return _state(await self._http.json("POST", f"/batches/{batch_id}/cancel"))

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""
        body, _ = await self._http.call("GET", f"/files/{file_id}/content")
        return body

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()


def _state(value: dict[str, Any]) -> BatchState:
    try:
        return batch_state(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(
            "the batch API answered with a batch object that has no valid id or status"
        ) from exc


async def wait_until_terminal(
    upstream: BatchUpstream, batch_id: str, *, poll_s: float = 5.0, timeout_s: float | None = None
) -> BatchState:
    """Poll a batch until it is terminal (for tools and tests; the dispatcher polls on its own clock)."""
    async with asyncio.timeout(timeout_s):
        while True:
            state = await upstream.retrieve(batch_id)
            if state.terminal:
                return state
            await asyncio.sleep(poll_s)
