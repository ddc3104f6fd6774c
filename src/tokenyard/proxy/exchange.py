"""One request's journey, as the meter sees it: who asked, who answered, what it used, how long it took."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenyard.errors import UpstreamError
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.usage import (
    Tap,
    Usage,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    usage_of_body,
)
from tokenyard.proxy.backends import Backend
from tokenyard.proxy.legs import Translation
from tokenyard.tracing.trace import Trace

CLIENT_CLOSED = 499  # nginx's status for "the client closed the request": no error of ours or the upstream's


@dataclass(slots=True)
class Exchange:
    """Per-request state, filled in along the request path and turned into one ``UsageRecord`` at the end."""

    request_id: str
    tenant: str
    model: str
    request: dict[str, Any]
    started_s: float  # monotonic
    mode: str = "realtime"
    reason: str = "default"  # the classification's reason
    backend: Backend | None = None
    route: str = ""
    status: int = 0
    ttfb_s: float | None = None
    answer: bytes = b""  # a whole (non-streaming) answer, for usage
    tap: Tap | None = None
    usage_api: str = "chat"  # the API the answering backend spoke (its usage fields are that API's)
    translation: Translation | None = None  # a Responses/Messages request as chat, once an attempt needed it
    attempts: int = 0
    tried: set[str] = field(default_factory=set)
    last_error: UpstreamError | None = None
    key_id: str = ""  # the caller's key name (never its secret): spans, and upstreams that take identity
    team: str = ""  # the key's team ("" when it has none): usage is grouped by it
    trace: Trace | None = None  # None: not traced
    # The usage once worked out: the latency sample and the meter's record share it (a whole answer's body
    # is parsed once, however large).
    _usage: Usage | None = field(default=None, init=False, repr=False)

    def usage(self) -> Usage:
        """The tokens used: the upstream's own count, or a local estimate when it sent none. Call it once the
        answer is over: the first call's figure is kept.

        Only what reached tokenyard counts: a stream cut short (by the client or the upstream) is metered
        for the chunks it delivered; a non-streaming request that got no answer used nothing we can see.
        """
        if self._usage is None:
            self._usage = self._count_usage()
        return self._usage

    def _count_usage(self) -> Usage:
        if self.backend is None:
            return Usage()
        if self.tap is not None:
            if self.tap.usage is not None:
                return self.tap.usage
            return Usage(estimate_prompt_tokens(self.request), 0, self.tap.content_chunks, estimated=True)
        if not self.answer:
            return Usage()
        reported = usage_of_body(self.answer, self.usage_api)
        if reported is not None:
            return reported
        completion = estimate_completion_tokens(self.answer, self.usage_api)
        return Usage(estimate_prompt_tokens(self.request), 0, completion, estimated=True)

    def to_record(self, now_s: float, wall_s: float) -> UsageRecord:
        """The meter's record of this request, finished at ``now_s`` (monotonic) / ``wall_s`` (unix)."""
        usage = self.usage()
        backend = self.backend
        cost = (
            backend.prices.cost_pusd(
                usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.cache_write_tokens
            )
            if backend is not None
            else 0
        )
        return UsageRecord(
            ts=wall_s,
            request_id=self.request_id,
            tenant=self.tenant,
            model=self.model,
            backend=backend.name if backend is not None else "",
            backend_kind=backend.config.kind if backend is not None else "",
            mode=self.mode,
            route=self.route,
            status=self.status,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=usage.estimated,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            ttfb_ms=round((self.ttfb_s if self.ttfb_s is not None else now_s - self.started_s) * 1000),
            latency_ms=round((now_s - self.started_s) * 1000),
            cost_pusd=cost,
            reason=self.reason,
            key_id=self.key_id,
            team=self.team,
        )
