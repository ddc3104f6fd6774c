"""The small interfaces between tokenyard and what it calls over the network: an upstream (send one
request, get a response back), a provider's Batch API (files and batches) and a webhook (a job's callback).

The rest of tokenyard codes against these protocols only, so the HTTP client underneath (aiohttp today, see
``openai_http.py``) can change without touching routing or the queue. Implementations raise only the
``tokenyard.errors.Upstream*`` errors, mapping their client library's exceptions where they occur, and
``ProxyOverloaded`` when this machine, not the upstream, ran out of something (file descriptors, ports).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tokenyard.wire import openai


class UpstreamResponse(Protocol):
    """An upstream's answer whose head has arrived; the body is read once, whole or chunk by chunk."""

    status: int
    content_type: str
    retry_after_s: float | None  # from Retry-After (seconds or HTTP date), when the upstream sent one

    async def read(self) -> bytes:
        """The whole body (raises ``UpstreamTimeout`` / ``UpstreamStreamBroken``)."""
        ...

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, chunk by chunk, never buffered whole (``aclose`` it to stop early)."""
        ...

    def close(self) -> None:
        """Drop the response; an unfinished body aborts the upstream connection (cancelling the work)."""
        ...

    def release_when_done(self, grace_s: float) -> None:
        """Stop reading a response that has said all it needed to (a stream after ``data: [DONE]``): its
        connection goes back to the pool when its body ends, or is dropped if that takes over ``grace_s``."""
        ...


class Upstream(Protocol):
    """A pooled client for one upstream deployment."""

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> UpstreamResponse:
        """POST a JSON ``body`` to ``path`` (relative to the base URL, e.g. ``/chat/completions``), with
        ``headers`` besides the client's own (trace context, the caller's identity).

        Returns once the response head has arrived, whatever its status.
        """
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


# -- provider Batch APIs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its ``custom_id`` (our job id), endpoint and JSON body."""

    custom_id: str
    url: str  # /v1/chat/completions | /v1/completions | /v1/embeddings
    body: bytes


@dataclass(frozen=True, slots=True)
class LineResult:
    """The provider's answer to one ``custom_id``: an HTTP status and body, as a real-time call gives."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class BatchState:
    """A provider batch as last seen."""

    id: str
    # validating | in_progress | finalizing | completed | failed | expired | cancelling | cancelled
    status: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int

    @property
    def terminal(self) -> bool:
        """Whether the batch will not change any more (its files, if any, are final)."""
        return self.status in openai.BATCH_TERMINAL


class BatchUpstream(Protocol):
    """A client for one provider's Batch API: requests go in as files, a batch is polled, results come out
    as files. It speaks the provider's formats (how lines are written and read back), nothing more."""

    def input_files(
        self, lines: Iterable[BatchLine], *, max_requests: int
    ) -> Iterator[tuple[bytes, list[str]]]:
        """The lines as input files within the provider's limits: (file content, its custom_ids), in order.

        Raises ``ValueError`` for a line larger than a whole file may be."""
        ...

    async def upload(self, content: bytes, filename: str = "batch.jsonl") -> str:
        """Upload a batch input file; its file id."""
        ...

    async def create(
        self,
        file_id: str,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchState:
        """Start a batch over an uploaded input file."""
        ...

    async def retrieve(self, batch_id: str) -> BatchState:
        """A batch's current state."""
        ...

    async def cancel(self, batch_id: str) -> BatchState:
        """Ask the provider to cancel a batch (it goes ``cancelling``, then ``cancelled``)."""
        ...

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""
        ...

    def results(self, output: bytes, errors: bytes = b"") -> dict[str, LineResult]:
        """Every line of a finished batch's output and error files, by ``custom_id``; a line that cannot be
        read is left out (its request has no answer, as if the provider had dropped it)."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


# -- webhooks -------------------------------------------------------------------------------------------


class Webhook(Protocol):
    """A client that POSTs a payload to a URL someone gave us (a job's callback) and says how it answered."""

    async def post(self, url: str, payload: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        """POST ``payload`` to ``url`` (redirects are not followed); the status that answered.

        Raises ``UpstreamTimeout`` when no answer came within ``timeout_s``, ``UpstreamConnectError`` when
        the URL could not be reached, ``UpstreamError`` for any other failure of the exchange."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...
