"""Server-sent events as OpenAI streams frame them, defined once for the service and the simulator (pure).

An OpenAI stream is ``data: <JSON>`` events separated by a blank line, ending with ``data: [DONE]``.
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
