"""The inference endpoints tokenyard serves, and what each asks of a request body before it is routed.

Five APIs share one request path: OpenAI's chat completions, completions, embeddings and Responses, and
Anthropic's Messages. An endpoint names its API (what a backend must speak to take it natively, and what
classification rules match on), the field its body must carry, whether it streams, and the shape its errors
take (OpenAI's, or Anthropic's on ``/v1/messages``). The checks here are the few a request must pass before
any upstream sees it; everything else is the upstream's to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tokenyard.errors import InvalidRequest
from tokenyard.proxy import request_body
from tokenyard.wire import anthropic, openai

ErrorShape = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An inference endpoint: its path, its API, the field a body must carry besides ``model``."""

    api_path: str  # on the client's API (and on tokenyard): /v1/chat/completions
    required_field: str | None
    streams: bool
    name: str  # the API: chat | completions | embeddings | responses | messages (rules match on it)
    errors: ErrorShape = "openai"
    # Its streams report usage only when asked (stream_options.include_usage): tokenyard asks on every one.
    asks_usage: bool = False
    upstream_path: str = field(init=False)  # relative to an upstream's base URL (…/v1): /chat/completions

    def __post_init__(self) -> None:
        object.__setattr__(self, "upstream_path", self.api_path.removeprefix(openai.API_PREFIX))


CHAT = Endpoint(openai.CHAT_PATH, "messages", streams=True, name="chat", asks_usage=True)
COMPLETIONS = Endpoint(openai.COMPLETIONS_PATH, "prompt", streams=True, name="completions", asks_usage=True)
EMBEDDINGS = Endpoint(openai.EMBEDDINGS_PATH, "input", streams=False, name="embeddings")
# A Responses body may name its input by previous_response_id or a prompt template instead: only the model
# is required here.
RESPONSES = Endpoint(openai.RESPONSES_PATH, None, streams=True, name="responses")
MESSAGES = Endpoint(anthropic.MESSAGES_PATH, "messages", streams=True, name="messages", errors="anthropic")
ENDPOINTS = {e.api_path: e for e in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES)}
# The APIs a chat-only backend can take through translation (dialects/): the client's API → chat.
TRANSLATED = frozenset({"responses", "messages"})


def parse_request(body: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], str, bool]:
    """The parsed body, its model and whether it streams; ``InvalidRequest`` for what no upstream accepts."""
    obj = request_body.loads(body)
    if not isinstance(obj, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    request_body.refuse_ambiguous(body, obj)
    model = obj.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Invalid type for 'model': expected a non-empty string.", param="model")
    required = endpoint.required_field
    if required is not None and required not in obj:
        raise InvalidRequest(f"Missing required parameter: '{required}'.", param=required)
    if required == "messages" and not isinstance(obj["messages"], list):
        raise InvalidRequest("Invalid type for 'messages': expected an array.", param="messages")
    if endpoint.errors == "anthropic":
        _check_messages(obj)
    stream = obj.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("Invalid type for 'stream': expected a boolean.", param="stream")
    return obj, model, bool(stream) and endpoint.streams


def _check_messages(obj: dict[str, Any]) -> None:
    """What Anthropic's Messages API refuses before it runs: ``max_tokens`` is required there."""
    max_tokens = obj.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be a positive integer", param="max_tokens")


def estimate_tokens(body: bytes, obj: dict[str, Any]) -> int:
    """A rough token count for tpm limits before the request runs: ~4 bytes a token, plus the output cap."""
    cap = obj.get("max_completion_tokens") or obj.get("max_tokens") or obj.get("max_output_tokens") or 0
    return len(body) // 4 + (cap if isinstance(cap, int) else 0)
