"""Server-sent events as OpenAI streams frame them, defined once for the service and the simulator (pure).

An OpenAI chat stream is ``data: <JSON>`` events separated by a blank line, ending with ``data: [DONE]``.
The Responses and Anthropic Messages APIs name each event (``event: <type>`` before its ``data:`` line) and
end with a last typed event instead (``response.completed``, ``message_stop``).
"""

from __future__ import annotations

from typing import Any

import orjson

SSE_DONE = b"data: [DONE]\n\n"  # the last event of an OpenAI stream
EVENT_END = b"\n\n"


def sse_data(data: bytes) -> bytes:
    """One event carrying ``data`` (a serialised JSON payload)."""
    return b"data: " + data + EVENT_END


def sse_event(payload: dict[str, Any]) -> bytes:
    """One event carrying a JSON payload."""
    return sse_data(orjson.dumps(payload))


def sse_named(event: str, payload: dict[str, Any]) -> bytes:
    """One named event, as the Responses and Messages APIs stream them: ``event: <type>`` then ``data:``."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + EVENT_END
