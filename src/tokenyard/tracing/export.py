"""How spans leave the process: a bounded buffer the request path appends to, emptied in batches by a
background task that hands them to the official OTLP exporter (HTTP/protobuf or gRPC) in a worker thread.

Requests never wait on a collector: when it is slow or down, the buffer fills and new spans are dropped,
each counted (``tokenyard_otel_spans_total{outcome="dropped"}``), as are the spans of a failed export.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from tokenyard import __version__
from tokenyard.tracing.settings import OtlpConfig
from tokenyard.tracing.spans import Tracing

log = logging.getLogger("tokenyard.tracing")

OUTCOMES: Final = ("exported", "dropped", "failed")
# The exporters log every failed export at ERROR: with the collector down that is a line per batch. The
# first failure's lines are kept (they say why), the rest until an export succeeds again are not.
_EXPORTER_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)


class _WhileFailing(logging.Filter):
    """Lets the exporters' records through until the shipper says exports are failing."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.failing


class SpanBuffer(SpanProcessor):
    """Keeps ended spans until the shipper takes them; at ``max_queue`` it drops new ones and counts them."""

    def __init__(self, max_queue: int, batch_size: int) -> None:
        self.spans: collections.deque[ReadableSpan] = collections.deque()
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.full = asyncio.Event()  # a batch is ready: ship it before the schedule says

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        # Spans end on the event loop's thread only: no lock.
        if len(self.spans) >= self.max_queue:
            self.counts["dropped"] += 1
            return
        self.spans.append(span)
        if len(self.spans) >= self.batch_size:
            self.full.set()

    def take(self) -> list[ReadableSpan]:
        """The next batch, oldest first."""
        spans = self.spans
        return [spans.popleft() for _ in range(min(self.batch_size, len(spans)))]

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class SpanShipper:
    """Ships the buffer's spans every ``schedule_s`` (or as soon as a batch is full), one export at a time."""

    def __init__(
        self, buffer: SpanBuffer, exporter: SpanExporter, *, schedule_s: float, timeout_s: float
    ) -> None:
        self.buffer = buffer
        self.exporter = exporter
        self.schedule_s = schedule_s
        self.timeout_s = timeout_s
        self._quiet = _WhileFailing()
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(self._quiet)

    async def run(self) -> None:
        """Ship until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.schedule_s):
                    await self.buffer.full.wait()
            self.buffer.full.clear()
            await self.ship()

    async def ship(self) -> None:
        """Export everything buffered now, batch by batch."""
        while batch := self.buffer.take():
            await self._export(batch)

    async def _export(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            # The exporters block (requests, grpc): a worker thread keeps the event loop free. Their own
            # timeout bounds one export, retries included.
            result = await asyncio.to_thread(self.exporter.export, batch)
        except Exception:  # an exporter's bug must not stop tracing, nor reach a request
            log.exception("tracing: exporting %d span(s) failed", len(batch))
            result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        self.buffer.counts["exported" if ok else "failed"] += len(batch)
        if ok == self._quiet.failing:  # a change: said once, not once a batch
            self._quiet.failing = not ok
            if ok:
                log.info("tracing: the collector takes spans again")
            else:
                log.warning(
                    "tracing: the collector did not take %d span(s); spans are dropped and counted "
                    "(tokenyard_otel_spans_total) until it does",
                    len(batch),
                )

    async def aclose(self) -> None:
        """Ship what is left (within the export timeout), then shut the exporter down."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.ship()
        except TimeoutError:
            log.warning("tracing: %d span(s) not exported at shutdown", len(self.buffer.spans))
        self.buffer.counts["dropped"] += len(self.buffer.spans)
        self.buffer.spans.clear()
        await asyncio.to_thread(self.exporter.shutdown)
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).removeFilter(self._quiet)


def otlp_exporter(settings: OtlpConfig) -> SpanExporter:
    """The official OTLP exporter for ``settings.protocol``."""
    headers = {name.lower(): value.get_secret_value() for name, value in settings.headers.items()}
    url = settings.traces_url()
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(
            endpoint=url, insecure=url.startswith("http://"), headers=headers, timeout=settings.timeout_s
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=url, headers=headers, timeout=settings.timeout_s)


def open_tracing(
    settings: OtlpConfig, *, wall: Callable[[], float], exporter: SpanExporter | None = None
) -> tuple[Tracing, SpanShipper]:
    """The tracer the request path uses and the shipper to run beside it (``run`` it, ``aclose`` it)."""
    buffer = SpanBuffer(settings.max_queue, settings.batch_size)
    resource = Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: __version__})
    # Sampling is decided before a span exists (tracing.spans.Tracing.begin): the SDK records what it gets.
    provider = TracerProvider(sampler=ALWAYS_ON, resource=resource)
    provider.add_span_processor(buffer)
    shipper = SpanShipper(
        buffer,
        exporter or otlp_exporter(settings),
        schedule_s=settings.schedule_s,
        timeout_s=settings.timeout_s,
    )
    return Tracing(provider, sample_ratio=settings.sample_ratio, wall=wall), shipper
