"""What the request path sees of tracing: a ``Trace`` per request (or job run) and an ``Attempt`` per
upstream call. Nothing here imports OpenTelemetry: without ``telemetry.otlp`` (or the ``otel`` extra) the
proxy holds no tracer, and an unsampled request costs one header scan and one random draw.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from tokenyard.meter.model import UsageRecord

TRACEPARENT: Final = b"traceparent"
# W3C trace context, version 00: 32 hex trace id, 16 hex parent id, 2 hex flags; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a W3C ``traceparent`` this version of the spec can continue."""
    return _TRACEPARENT.match(value) is not None


def sampled(traceparent: str) -> bool:
    """Whether a valid ``traceparent``'s caller records its trace (the sampled flag)."""
    return int(traceparent[-2:], 16) & 1 == 1


class Attempt(Protocol):
    """One call to one upstream, as a span."""

    traceparent: str  # sent upstream, so an engine with tracing on joins the trace under this call

    def end(self, status: int, error: str | None = None) -> None:
        """The call is over: the upstream's status (0: none came) and, if it failed, why."""
        ...


class Trace(Protocol):
    """One request's (or one async job run's) trace, from the first byte read to the last byte sent."""

    traceparent: str  # the context a job keeps, so its wait and its run join this trace later

    def attempt(
        self, backend: str, kind: str, upstream_model: str, number: int, provider: str = "openai"
    ) -> Attempt:
        """A call to ``backend`` (``number``: 1 for the first, more after failover; ``provider``: whose API
        it speaks) starts now."""
        ...

    def queued(self, job_id: str, reason: str, status: int) -> None:
        """The request became an async job (answered ``status``: 202, or the held answer's)."""
        ...

    def finish(
        self,
        record: UsageRecord,
        *,
        key_id: str,
        attempts: int,
        response_model: str = "",
        provider: str = "openai",
    ) -> None:
        """The request is over; ``record`` is what the meter got, ``response_model`` the upstream's name of
        the model that answered, ``provider`` whose API its backend speaks."""
        ...

    def refused(self, status: int, error: str) -> None:
        """The request was answered with an error before any backend was tried."""
        ...


class PassThrough:
    """A request tokenyard does not trace but its caller does: the caller's context goes upstream as is."""

    __slots__ = ("traceparent",)

    def __init__(self, traceparent: str) -> None:
        self.traceparent = traceparent

    def attempt(
        self, backend: str, kind: str, upstream_model: str, number: int, provider: str = "openai"
    ) -> PassThrough:
        return self

    def end(self, status: int, error: str | None = None) -> None:
        pass

    def queued(self, job_id: str, reason: str, status: int) -> None:
        pass

    def finish(
        self,
        record: UsageRecord,
        *,
        key_id: str,
        attempts: int,
        response_model: str = "",
        provider: str = "openai",
    ) -> None:
        pass

    def refused(self, status: int, error: str) -> None:
        pass


class Tracer(Protocol):
    """Starts traces; ``tracing.spans.Tracing`` is the one implementation."""

    def begin(self, traceparent: bytes | None, operation: str, started_at: float) -> Trace | None:
        """A request's trace, continuing the client's ``traceparent`` if it sent a valid one; None when
        neither tokenyard nor the client records this request (nothing to propagate either)."""
        ...

    def resume(self, traceparent: str, path: str, started_at: float, operation: str = "chat") -> Trace | None:
        """An async job's run on ``path``, in the trace of the request that queued it (``operation``: its
        endpoint's name)."""
        ...
