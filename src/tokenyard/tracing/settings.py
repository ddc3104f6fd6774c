"""The ``telemetry:`` section: OpenTelemetry traces (``otlp:``) and the identity headers sent upstream."""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Headers tokenyard sets or owns upstream: an identity header may not take their place.
_RESERVED = frozenset(
    {"authorization", "content-type", "content-length", "host", "user-agent", "traceparent", "tracestate"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OtlpConfig(_Strict):
    """Where spans go: an OTLP collector (Jaeger, Tempo, Honeycomb, the OpenTelemetry Collector …)."""

    # OTLP/HTTP: the traces URL (http://collector:4318/v1/traces; a bare host:port gets /v1/traces);
    # gRPC: the collector's address (http://collector:4317).
    endpoint: str
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    headers: dict[str, SecretStr] = {}  # e.g. an API key of a hosted backend: never printed
    # Root requests sampled (a client's traceparent decides for its own trace: sampled there, here too).
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0
    service_name: str = "tokenyard"
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0  # one export, retries included
    # Spans waiting to be exported; past it new ones are dropped (and counted): requests never wait.
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 8192
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 512
    schedule_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # at most this long between exports

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    def traces_url(self) -> str:
        """The URL the exporter sends to (OTLP/HTTP's signal path added to a bare collector address)."""
        if self.protocol == "http/protobuf" and re.match(r"^https?://[^/]+$", self.endpoint):
            return self.endpoint + "/v1/traces"
        return self.endpoint


class IdentityHeaders(_Strict):
    """The names of the headers that carry the caller's identity to backends with ``forward_identity``."""

    tenant: str = "x-tokenyard-tenant"
    key_id: str = "x-tokenyard-key-id"

    @field_validator("tenant", "key_id")
    @classmethod
    def _header_name(cls, value: str) -> str:
        value = value.lower()
        if not _HEADER_NAME.match(value):
            raise ValueError("must be an HTTP header name (letters, digits and dashes)")
        if value in _RESERVED:
            raise ValueError(f"{value} is set by tokenyard itself")
        return value

    @model_validator(mode="after")
    def _apart(self) -> IdentityHeaders:
        if self.tenant == self.key_id:
            raise ValueError("tenant and key_id need two different header names")
        return self


class TelemetryConfig(_Strict):
    """Telemetry that leaves tokenyard for other tools (Prometheus and the usage API need no settings)."""

    otlp: OtlpConfig | None = None  # None: no traces (nothing on the request path pays for them)
    identity_headers: IdentityHeaders = IdentityHeaders()


def missing_packages(telemetry: TelemetryConfig) -> list[tuple[str, str]]:
    """Config problems for traces configured without the ``otel`` extra installed (found, not imported)."""
    otlp = telemetry.otlp
    if otlp is None:
        return []
    exporter = "grpc" if otlp.protocol == "grpc" else "http"
    wanted = ("opentelemetry.sdk", f"opentelemetry.exporter.otlp.proto.{exporter}")
    missing = [name for name in wanted if _absent(name)]
    if not missing:
        return []
    return [("telemetry.otlp", f"needs {', '.join(missing)}: pip install 'tokenyard[otel]'")]


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing (or a stub in its place)
        return True
