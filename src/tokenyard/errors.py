"""The one exception tree of tokenyard.

Every failure tokenyard raises on purpose is a ``TokenyardError``. Each leaf carries the HTTP status and
OpenAI error ``type``/``code`` it maps to, so the edge renders it in one place
(``wire.asgi.error_response_parts``).
Foreign exceptions (aiohttp, pydantic, yaml) are mapped where they occur, ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar


class TokenyardError(Exception):
    """Base of every error tokenyard raises on purpose."""

    # What a kind of error answers: constants of its class. Declared ClassVar, so a subclass's own value
    # stays a class attribute also where mypyc compiles the subclass (it would drop an undeclared one).
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# -- configuration ------------------------------------------------------------------------------------


class ConfigError(TokenyardError):
    """The configuration file is unreadable or invalid; ``problems`` names each one by its path."""

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in problems]
        super().__init__(f"{source}: {len(problems)} error(s)\n  " + "\n  ".join(lines))


# -- the client's fault (4xx) -------------------------------------------------------------------------


class ClientError(TokenyardError):
    """The request itself is wrong; retrying it unchanged will not help."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    """The body is not JSON, or a field routing needs has the wrong type."""


class AuthenticationFailed(ClientError):
    """No API key, or one tokenyard does not know."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ClientError):
    """The model does not exist, or the key may not use it (indistinguishable on purpose)."""

    status_code = 404
    code = "model_not_found"


class RouteNotFound(ClientError):
    """No endpoint at this path."""

    status_code = 404
    code = "unknown_url"


class ObjectNotFound(ClientError):
    """No job, file or batch with this id for this key (another tenant's is "not found" too); OpenAI
    answers it 404 with no error code, and so do tokenyard and the simulator."""

    status_code = 404


class Conflict(ClientError):
    """The change cannot be made to the object as it is (a key from the config file, a write that raced
    another one)."""

    status_code = 409
    code = "conflict"


class MethodNotAllowed(ClientError):
    """The path exists but not for this HTTP method."""

    status_code = 405
    code = "method_not_allowed"


class BodyTooLarge(ClientError):
    """The request body is larger than ``server.max_body_bytes``."""

    status_code = 413
    code = "request_too_large"


class RequestHeadTooLarge(ClientError):
    """The request line and headers exceed ``server.max_head_bytes`` or ``server.max_headers``."""

    status_code = 431
    code = "request_header_fields_too_large"


class RequestTimeout(ClientError):
    """The client stopped sending: its head or body did not arrive within ``server.head_timeout_s`` /
    ``server.body_timeout_s``."""

    status_code = 408
    code = "request_timeout"


class MalformedHttp(ClientError):
    """The bytes on the connection are not valid HTTP/1.1 (bad chunking, conflicting Content-Length, …)."""

    code = "invalid_http_request"


class CapacityExhausted(ClientError):
    """Every deployment of the model is at its concurrency cap or rate limit; retry after a moment."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "capacity_exhausted"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BudgetExhausted(ClientError):
    """A hard budget of the key, its tenant or its team is spent (OpenAI's answer when a quota is)."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


# -- the upstream's fault (5xx) -----------------------------------------------------------------------


class UpstreamError(TokenyardError):
    """An upstream backend failed; the proxy itself is fine."""

    status_code = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamConnectError(UpstreamError):
    """The backend could not be reached (refused, reset, DNS)."""


class UpstreamTimeout(UpstreamError):
    """The backend did not answer within its timeout."""

    status_code = 504
    code = "upstream_timeout"


class UpstreamStatusError(UpstreamError):
    """The backend answered with a status that counts as its failure (5xx, 429, auth)."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class UpstreamStreamBroken(UpstreamError):
    """The backend's stream ended before it was complete."""


class EngineMetricsInvalid(UpstreamError):
    """An engine's ``/metrics`` answered, but not with Prometheus text carrying the engine's metrics."""


class NoBackendAvailable(UpstreamError):
    """Every deployment of the model is cooling down after failures."""

    status_code = 503
    code = "no_backend_available"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# -- tokenyard's own limits (5xx) --------------------------------------------------------------------


class ProxyOverloaded(TokenyardError):
    """tokenyard itself ran out of something local (file descriptors, sockets, memory, its connection cap).
    No backend is to blame, so no circuit breaker counts it; retrying shortly may work."""

    status_code = 503
    error_type = "server_error"
    code = "proxy_overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OptionalDependencyMissing(TokenyardError):
    """What was asked for needs an optional extra that is not installed (Parquet: ``tokenyard[parquet]``)."""

    status_code = 501
    error_type = "server_error"
    code = "not_implemented"


# -- the store's fault --------------------------------------------------------------------------------


class StoreError(TokenyardError):
    """The meter store failed; the proxy keeps serving and the meter holds its data until it is back."""

    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection refused, reset, timed out)."""


class Forbidden(ClientError):
    """The key is valid but may not use this endpoint (admin APIs need the admin key)."""

    status_code = 403
    error_type = "permission_error"
    code = "forbidden"
