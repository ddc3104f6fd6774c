"""The small interface between the router and an upstream: send one request, get a response back.

The router codes against these two protocols only, so the HTTP client underneath (aiohttp today, see
``openai_http.py``) can change without touching routing. Implementations raise only the
``tokenyard.errors.Upstream*`` errors, mapping their client library's exceptions where they occur, and
``ProxyOverloaded`` when this machine, not the upstream, ran out of something (file descriptors, ports).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol


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

    async def post(self, path: str, body: bytes) -> UpstreamResponse:
        """POST a JSON ``body`` to ``path`` (relative to the base URL, e.g. ``/chat/completions``).

        Returns once the response head has arrived, whatever its status.
        """
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...
