"""How one attempt speaks to its backend: in the client's own API, or translated to chat completions.

Routing picks a deployment; the *leg* says what goes over the wire to it and how the answer comes back:

- **native** (the backend speaks the client's API): the client's bytes, the model renamed where the backend
  names it otherwise; the answer relayed as it comes and metered in that API's usage fields.
- **translated** (a Responses or Messages client, a backend that speaks only chat completions): the request
  translated to chat completions (``dialects/``), the answer translated back, whole or event by event, and
  metered from the chat answer the backend really sent.

The translation of the request is made once, when the first translated attempt needs it, so a request a
native deployment serves never pays for it (nor is refused for what only translation cannot carry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from tokenyard.errors import TokenyardError
from tokenyard.meter.usage import StreamTap, Tap, tap_class
from tokenyard.proxy.endpoints import CHAT, Endpoint
from tokenyard.wire import anthropic, openai
from tokenyard.wire import asgi as wire
from tokenyard.wire.ids import new_object_id
from tokenyard.wire.sse import sse_named


class Converter(Protocol):
    """Turns a chat stream's whole events into the client's API's events (``dialects/``)."""

    done: bool

    def feed(self, events: bytes) -> bytes:
        """The client's events for these whole chat events (``data: [DONE]`` ends the stream)."""
        ...


class Translation:
    """A Responses or Messages request as chat completions: the body once, and the way back.

    The translations (``dialects/``) are imported by the first request that needs one, not at start-up: a
    proxy serving chat completions alone never loads them (its resident memory is mostly loaded code)."""

    __slots__ = ("_chat", "_created_at", "_object_id", "endpoint", "request")

    def __init__(self, endpoint: Endpoint, request: dict[str, Any], created_at: int) -> None:
        self.endpoint = endpoint
        self.request = request
        self._created_at = created_at
        self._object_id = new_object_id("msg_" if endpoint.name == "messages" else "resp_")
        self._chat: dict[str, Any] | None = None

    def chat_request(self) -> dict[str, Any]:
        """The chat completions request (made once; ``InvalidRequest`` naming what cannot be carried)."""
        if self._chat is None:
            from tokenyard.dialects import messages as messages_dialect
            from tokenyard.dialects import responses as responses_dialect

            dialect = messages_dialect if self.endpoint.name == "messages" else responses_dialect
            self._chat = dialect.to_chat(self.request)
        return self._chat

    def body(self, model: str) -> bytes:
        """The chat body for a backend that calls the model ``model``."""
        return orjson.dumps({**self.chat_request(), "model": model})

    def whole(self, chat_answer: bytes) -> bytes | None:
        """A whole chat answer in the client's API; None if it is not a chat completion."""
        try:
            answer = orjson.loads(chat_answer)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            return None
        from tokenyard.dialects import messages as messages_dialect
        from tokenyard.dialects import responses as responses_dialect

        if self.endpoint.name == "messages":
            converted = messages_dialect.from_chat(answer, self.request, message_id=self._object_id)
        else:
            converted = responses_dialect.from_chat(
                answer, self.request, response_id=self._object_id, created_at=self._created_at
            )
        return orjson.dumps(converted)

    def converter(self) -> Converter:
        """A fresh converter of a chat stream into the client's API's events."""
        from tokenyard.dialects import messages as messages_dialect
        from tokenyard.dialects import responses as responses_dialect

        if self.endpoint.name == "messages":
            return messages_dialect.MessagesStream(self.request, message_id=self._object_id)
        return responses_dialect.ResponsesStream(
            self.request, response_id=self._object_id, created_at=self._created_at
        )


class Leg:
    """One attempt's way of speaking to its backend (see the module's docstring)."""

    __slots__ = ("converter", "new_tap", "path", "translation", "usage_api")

    def __init__(self, endpoint: Endpoint, translation: Translation | None) -> None:
        self.translation = translation
        self.path = CHAT.upstream_path if translation is not None else endpoint.upstream_path
        self.usage_api = (
            "chat" if translation is not None else endpoint.name
        )  # the API the backend answers in
        # ``new_tap(strip_usage=…)``: the usage tap for the backend's stream. Native, the tap's class itself
        # (a call less on chat's hot path); translated, one that also makes the converter after it.
        self.new_tap: Callable[..., Tap] = (
            tap_class(self.usage_api) if translation is None else self._translated
        )
        self.converter: Converter | None = None

    def _translated(self, *, strip_usage: bool) -> Tap:
        assert self.translation is not None
        self.converter = self.translation.converter()
        return StreamTap(strip_usage=False)  # the converter reads the usage chunk itself


async def send_error(
    send: wire.Send,
    endpoint: Endpoint,
    exc: TokenyardError,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer a tokenyard error in the endpoint's API's shape (Anthropic's on ``/v1/messages``)."""
    if endpoint.errors == "openai":
        await wire.send_error(send, exc, extra_headers)
        return
    _, headers, _ = wire.error_response_parts(exc)
    status, body = anthropic.status_for(exc), anthropic.error_body_for(exc)
    await wire.send_bytes(send, status, body, [*headers, *extra_headers])


def stream_error_event(endpoint: Endpoint, exc: TokenyardError) -> bytes:
    """An error inside a stream already under way, as the endpoint's API's clients read one."""
    if endpoint.errors == "anthropic":
        return anthropic.sse_error_event(exc)
    if endpoint.name == "responses":
        # The Responses API's ``error`` event; the ``error`` object beside its fields is what makes the openai
        # SDK raise (it raises on an event whose data carries one) instead of ending the stream quietly.
        payload = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                   "sequence_number": 0, "error": {"type": exc.error_type, "code": exc.code,
                                                   "message": exc.message}}  # fmt: skip
        return sse_named("error", payload)
    return b"data: " + openai.error_body(exc.message, exc.error_type, code=exc.code) + b"\n\n"


def relayed_error(endpoint: Endpoint, translated: bool, status: int, body: bytes) -> bytes:
    """An upstream's error answer as the client gets it: as it is, unless a chat backend answered a Messages
    client (its OpenAI error body becomes Anthropic's, with the upstream's message)."""
    if not translated or endpoint.errors != "anthropic":
        return body
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = body.decode("utf-8", "replace")[:500] or f"the upstream answered {status}"
    return anthropic.error_body(message, anthropic.error_type_for(status))
