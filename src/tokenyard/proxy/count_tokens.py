"""``POST /v1/messages/count_tokens``: how many input tokens a Messages request would take.

Anthropic answers it free of charge, so it is not metered and takes no slot under a backend's caps. It
goes to the first deployment of the model that speaks Messages; a model with none (its backends speak chat
completions only) gets tokenyard's own estimate, as the translation to chat would send it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenyard.errors import InvalidRequest, TokenyardError
from tokenyard.proxy import request_body
from tokenyard.proxy.endpoints import MESSAGES
from tokenyard.proxy.legs import relayed_error, send_error
from tokenyard.wire import asgi as wire

if TYPE_CHECKING:
    from tokenyard.proxy.handler import Proxy

_PATH = "/messages/count_tokens"  # relative to an upstream's base URL


async def count_tokens(proxy: Proxy, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
    """Answer a count_tokens request (errors in Anthropic's shape)."""
    try:
        principal = proxy.authenticate(scope)
        body = await wire.read_body(scope, receive, proxy.max_body_bytes)
        obj = request_body.loads(body)
        if not isinstance(obj, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        model = obj.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: Field required", param="model")
        if not isinstance(obj.get("messages"), list):
            raise InvalidRequest("messages: Field required", param="messages")
        backends = proxy.deployments(principal, model)
        native = next((b for b in backends if "messages" in b.speaks), None)
        if native is None:
            from tokenyard.dialects import messages as messages_dialect  # loaded on first use, as in legs

            await wire.send_json(send, 200, {"input_tokens": messages_dialect.count_tokens_estimate(obj)})
            return
        upstream_model = native.config.model
        if upstream_model is not None and upstream_model != model:
            body = request_body.with_member(body, obj, "model", upstream_model)
        resp, payload = await native.ask("POST", _PATH, body, "for count_tokens")
        headers = [
            (b"content-type", resp.content_type.encode("latin-1")),
            (wire.H_BACKEND, native.name.encode()),
        ]
        await wire.send_bytes(
            send, resp.status, relayed_error(MESSAGES, False, resp.status, payload), headers
        )
    except TokenyardError as exc:
        await send_error(send, MESSAGES, exc)
    except wire.ClientGone:
        return
