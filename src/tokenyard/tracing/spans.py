"""What goes in a span: the GenAI semantic conventions (``gen_ai.*``) plus tokenyard's own attributes
(``tokenyard.*``: tenant, key id — never the secret —, backend, mode and its reason, route, attempts, cost),
built on the official OpenTelemetry SDK.

Spans of one request: the request itself (kind SERVER, ``chat gpt-4o``), one child per upstream attempt
(kind CLIENT: failover shows as two), and for an async job, in the trace of the request that queued it,
its wait in the queue and its run on the path it took (with that run's attempts under it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from tokenyard.meter.model import PUSD_PER_USD, UsageRecord
from tokenyard.queue.model import Job, JobResult
from tokenyard.tracing.trace import PassThrough, Trace, sampled, valid_traceparent

# GenAI semantic conventions' operation names, by tokenyard endpoint name.
# Responses and Anthropic's Messages are chat, as the conventions' OpenAI and Anthropic instrumentations say.
OPERATIONS: Final = {
    "chat": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "messages": "chat",
}
# The conventions' provider names, by a backend's ``provider``.
PROVIDERS: Final = {"openai": "openai", "anthropic": "anthropic", "azure": "azure.ai.openai"}
# Paths whose run goes through the proxy (its own span, with attempts); the others get a span here.
_RUN_PATHS: Final = frozenset({"realtime", "idle_dedicated"})

Attributes = dict[str, AttributeValue]


def _ns(unix_s: float) -> int:
    return int(unix_s * 1e9)


def _traceparent(span: Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _remote(traceparent: str) -> Context:
    """The context of a caller's span, from its (valid) ``traceparent``."""
    _, trace_id, span_id, flags = traceparent.split("-")
    parent = SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16))
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def usage_attributes(record: UsageRecord) -> Attributes:
    """What a finished request used and cost, as span attributes."""
    return {
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": record.cached_tokens,
        "gen_ai.usage.cache_creation.input_tokens": record.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
        "tokenyard.usage.estimated": record.estimated,
        "tokenyard.cost_usd": record.cost_pusd / PUSD_PER_USD,
        "tokenyard.cost_pusd": record.cost_pusd,
        "tokenyard.backend": record.backend,
        "tokenyard.backend.kind": record.backend_kind,
        "tokenyard.mode": record.mode,
        "tokenyard.mode.reason": record.reason,
        "tokenyard.route": record.route,
        "tokenyard.request_id": record.request_id,
        "http.response.status_code": record.status,
    }


def _end_with_status(span: Span, status: int, end_s: float, error: str | None = None) -> None:
    if error is not None or status >= 500 or status == 0:
        span.set_status(Status(StatusCode.ERROR, error))
        span.set_attribute("error.type", str(status) if status else "no_answer")
    span.end(_ns(end_s))


class AttemptSpan:
    """One upstream call's span."""

    __slots__ = ("_span", "_wall", "traceparent")

    def __init__(self, span: Span, wall: Callable[[], float]) -> None:
        self._span = span
        self._wall = wall
        self.traceparent = _traceparent(span)

    def end(self, status: int, error: str | None = None) -> None:
        if status:
            self._span.set_attribute("http.response.status_code", status)
        if error is not None:
            self._span.set_attribute("tokenyard.error", error)
        _end_with_status(self._span, status, self._wall(), error)


class RequestTrace:
    """A traced request (or an async job's run): its span, and its attempts' under it."""

    __slots__ = ("_context", "_operation", "_span", "_tracer", "_wall", "traceparent")

    def __init__(self, tracer: trace.Tracer, span: Span, operation: str, wall: Callable[[], float]) -> None:
        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span)
        self._operation = operation
        self._wall = wall
        self.traceparent = _traceparent(span)

    def attempt(
        self, backend: str, kind: str, upstream_model: str, number: int, provider: str = "openai"
    ) -> AttemptSpan:
        span = self._tracer.start_span(
            f"{self._operation} {upstream_model}",
            self._context,
            SpanKind.CLIENT,
            {
                "gen_ai.operation.name": self._operation,
                "gen_ai.provider.name": PROVIDERS.get(provider, provider),
                "gen_ai.request.model": upstream_model,
                "tokenyard.backend": backend,
                "tokenyard.backend.kind": kind,
                "tokenyard.attempt": number,
            },
            start_time=_ns(self._wall()),
        )
        assert isinstance(span, Span)
        return AttemptSpan(span, self._wall)

    def queued(self, job_id: str, reason: str, status: int) -> None:
        span = self._span
        span.set_attributes(
            {"tokenyard.mode": "async", "tokenyard.mode.reason": reason, "tokenyard.job_id": job_id}
        )
        if status:
            span.set_attribute("http.response.status_code", status)
        span.end(_ns(self._wall()))

    def finish(
        self,
        record: UsageRecord,
        *,
        key_id: str,
        attempts: int,
        response_model: str = "",
        provider: str = "openai",
    ) -> None:
        span = self._span
        if span.kind is SpanKind.SERVER:  # a request, named as the conventions say (a job run keeps its name)
            span.update_name(f"{self._operation} {record.model}")
        span.set_attributes(usage_attributes(record))
        span.set_attributes(
            {
                "gen_ai.request.model": record.model,
                "gen_ai.provider.name": PROVIDERS.get(provider, provider),
                "tokenyard.tenant": record.tenant,
                "tokenyard.key_id": key_id,
                "tokenyard.attempts": attempts,
            }
        )
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        _end_with_status(span, record.status, self._wall())

    def refused(self, status: int, error: str) -> None:
        self._span.set_attribute("http.response.status_code", status)
        self._span.set_attribute("tokenyard.error", error)
        _end_with_status(self._span, status, self._wall(), error if status >= 500 else None)


class Tracing:
    """Decides which requests are traced and starts their traces (``tracing.trace.Tracer``); writes the
    spans of an async job's wait and of the paths the proxy does not run."""

    def __init__(
        self,
        provider: TracerProvider,
        *,
        sample_ratio: float,
        wall: Callable[[], float],
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._tracer = provider.get_tracer("tokenyard")
        self._ratio = sample_ratio
        self._wall = wall
        self._draw = draw

    def begin(self, traceparent: bytes | None, operation: str, started_at: float) -> Trace | None:
        context = None
        if traceparent is not None:
            value = traceparent.decode("latin-1").strip()
            if valid_traceparent(value):
                if not sampled(value):
                    return PassThrough(value)  # the caller does not record it: neither do we
                context = _remote(value)
        # The caller's sampled trace is continued whatever the ratio (as OpenTelemetry's ParentBased does).
        if context is None and (self._ratio <= 0 or self._draw() >= self._ratio):
            return None
        name = OPERATIONS.get(operation, operation)
        span = self._tracer.start_span(
            name, context, SpanKind.SERVER, {"gen_ai.operation.name": name}, start_time=_ns(started_at)
        )
        assert isinstance(span, Span)
        return RequestTrace(self._tracer, span, name, self._wall)

    def resume(self, traceparent: str, path: str, started_at: float, operation: str = "chat") -> Trace | None:
        if not valid_traceparent(traceparent):
            return None
        if not sampled(traceparent):
            return PassThrough(traceparent)
        name = OPERATIONS.get(operation, operation)
        span = self._tracer.start_span(
            f"tokenyard.job {path}",
            _remote(traceparent),
            SpanKind.INTERNAL,
            {"gen_ai.operation.name": name, "tokenyard.job.path": path},
            start_time=_ns(started_at),
        )
        assert isinstance(span, Span)
        return RequestTrace(self._tracer, span, name, self._wall)

    def job_answered(
        self, job: Job, result: JobResult, usage: UsageRecord, dispatched_at: float | None
    ) -> None:
        """Write the spans of a job's wait in the queue and, unless the proxy ran it, of its path."""
        if not valid_traceparent(job.traceparent) or not sampled(job.traceparent):
            return
        parent = _remote(job.traceparent)
        waited_until = dispatched_at if dispatched_at is not None else result.finished_at
        common: Attributes = {
            "tokenyard.job_id": job.id,
            "tokenyard.tenant": job.tenant,
            "tokenyard.job.path": result.path,
        }
        wait = self._tracer.start_span(
            "tokenyard.job wait", parent, SpanKind.INTERNAL, common, start_time=_ns(job.created_at)
        )
        wait.end(_ns(max(job.created_at, waited_until)))
        if result.path in _RUN_PATHS:
            return
        started = dispatched_at if dispatched_at is not None else job.created_at
        run = self._tracer.start_span(
            f"tokenyard.job {result.path}",
            parent,
            SpanKind.INTERNAL,
            {**common, **usage_attributes(usage), "tokenyard.key_id": job.key_id},
            start_time=_ns(max(job.created_at, started)),
        )
        assert isinstance(run, Span)
        _end_with_status(run, result.status, max(result.finished_at, job.created_at))
