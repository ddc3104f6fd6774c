"""The request as the simulator's handlers see it: method, path, headers and the body, read and parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tokenyard.errors import InvalidRequest
from tokenyard.wire.asgi import Receive, Scope


@dataclass(slots=True)
class Request:
    """An HTTP request with its body read, as handlers see it."""

    method: str
    path: str
    path_param: str
    """The variable tail of a prefix route (the model id of ``/v1/models/{id}``), else empty."""
    query: bytes
    headers: dict[str, str]
    raw_body: bytes
    json: Any
    """The parsed body, or None when it is empty or not JSON (see ``json_ok``)."""
    json_ok: bool
    receive: Receive

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; anything else is the client's error."""
        if not self.json_ok:
            raise InvalidRequest(
                "We could not parse the JSON body of your request. The body must be valid JSON."
            )
        if not isinstance(self.json, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        return self.json


def parse_json(raw: bytes) -> tuple[Any, bool]:
    """The body parsed as JSON, and whether that worked."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return None, False


def header_dict(scope: Scope) -> dict[str, str]:
    """Request headers by lowercase name; repeated headers are joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
