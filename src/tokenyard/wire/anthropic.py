"""Anthropic's Messages API shapes that tokenyard serves, relays and imitates, defined once (pure).

The service (``/v1/messages``), the simulator and the adapters speak them: the paths, the error object
(``{"type": "error", "error": {"type", "message"}}``) with the status each error type has, the version
header, and named SSE events (``event: message_start`` then ``data: {…}``). Shapes follow Anthropic's API
reference and the ``anthropic`` Python SDK's types.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from tokenyard.errors import TokenyardError
from tokenyard.wire.sse import EVENT_END

# -- paths and headers -----------------------------------------------------------------------------------

MESSAGES_PATH: Final = "/v1/messages"
COUNT_TOKENS_PATH: Final = "/v1/messages/count_tokens"
MESSAGE_BATCHES_PATH: Final = "/v1/messages/batches"
VERSION_HEADER: Final = "anthropic-version"
API_KEY_HEADER: Final = "x-api-key"
DEFAULT_VERSION: Final = "2023-06-01"  # the one version Anthropic's API has

# -- errors --------------------------------------------------------------------------------------------

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """Anthropic's error type for an HTTP status (``api_error`` for any other 5xx, ``invalid_request_error``
    for any other 4xx)."""
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_payload(message: str, error_type: str) -> dict[str, Any]:
    """An Anthropic error object: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_body(message: str, error_type: str) -> bytes:
    """An Anthropic error body, serialised."""
    return orjson.dumps(error_payload(message, error_type))


def status_for(exc: TokenyardError) -> int:
    """The status a tokenyard error has on the Messages API: Anthropic says "overloaded" with 529 where
    OpenAI says 503 (no capacity anywhere), and has no 502: an upstream failure is its 500 ``api_error``."""
    if exc.status_code == 503:
        return 529
    if exc.status_code == 502:
        return 500
    return exc.status_code


def error_body_for(exc: TokenyardError) -> bytes:
    """The Anthropic error body a tokenyard error maps to (its status is ``status_for(exc)``)."""
    return error_body(exc.message, error_type_for(status_for(exc)))


# -- event streams ---------------------------------------------------------------------------------------


def sse_error_event(exc: TokenyardError) -> bytes:
    """An error inside a Messages stream that has already started (the ``anthropic`` SDK raises it)."""
    return b"event: error\ndata: " + error_body_for(exc) + EVENT_END
