"""The small interfaces between tokenyard and what it calls over the network: an upstream (send one
request, get a response back), a provider's Batch API (OpenAI's files and batches, Anthropic's Message
Batches) and a webhook (a job's callback).

The rest of tokenyard codes against these protocols only, so the HTTP client underneath (``http1.py`` on
the inference path, aiohttp off it) can change without touching routing or the queue. Implementations
raise only the ``tokenyard.errors.Upstream*`` errors, mapping their client library's exceptions where they
occur, and ``ProxyOverloaded`` when this machine, not the upstream, ran out of something (file
descriptors, ports).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
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

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrives (never the body buffered whole); ``b""`` at its end.
        Raises ``UpstreamTimeout`` / ``UpstreamStreamBroken``."""
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

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> UpstreamResponse:
        """Send ``method`` to ``path`` (a stored object's ``GET /responses/{id}``, ``DELETE …``, ``POST
        …/cancel``), with the same URL shape, auth, timeouts and errors as ``post``.

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
    url: str  # /v1/chat/completions | /v1/completions | /v1/embeddings | /v1/messages
    body: bytes


@dataclass(frozen=True, slots=True)
class LineResult:
    """The provider's answer to one ``custom_id``: an HTTP status and body, as a real-time call gives."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class BatchState:
    """A provider batch as last seen, in OpenAI's words (an adapter for another provider maps its own)."""

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
        """Whether the batch will not change any more (its results, if any, are final)."""
        return self.status in openai.BATCH_TERMINAL


class BatchUpstream(Protocol):
    """A client for one provider's Batch API: requests go in as one submission per batch, a batch is
    polled, and its results come out by ``custom_id``. It speaks the provider's formats (how requests are
    written and results read back, OpenAI's files or Anthropic's request lists), nothing more."""

    @property
    def endpoints(self) -> frozenset[str]:
        """The job endpoints its batches take (``/v1/chat/completions`` …, or ``/v1/messages``)."""
        ...

    def input_files(
        self, lines: Iterable[BatchLine], *, max_requests: int
    ) -> Iterator[tuple[bytes, list[str]]]:
        """The lines as batch submissions within the provider's limits: (content, its custom_ids), in order
        (OpenAI: a JSONL input file; Anthropic: a create request's body).

        Raises ``ValueError`` for a line larger than a whole submission may be."""
        ...

    async def submit(
        self,
        content: bytes,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchState:
        """Start a batch of one of ``input_files``' contents (OpenAI: upload the file, create over it)."""
        ...

    async def retrieve(self, batch_id: str) -> BatchState:
        """A batch's current state."""
        ...

    async def cancel(self, batch_id: str) -> BatchState:
        """Ask the provider to cancel a batch (it goes ``cancelling``, then ``cancelled``)."""
        ...

    async def outcomes(self, state: BatchState) -> dict[str, LineResult]:
        """The answers of a finished (``terminal``) batch by ``custom_id``. A request the provider did not
        answer (it expired, was cancelled or dropped) or whose line cannot be read is left out."""
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
