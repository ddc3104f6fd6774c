"""The Responses and Messages endpoints: ``/v1/responses`` (and its stored responses) and ``/v1/messages``
(and ``count_tokens``), on the same planning, faults, slots and pacing as chat (``inference``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenyard.errors import InvalidRequest, ModelNotFound, ObjectNotFound, TokenyardError
from tokenyard.simulator import shapes
from tokenyard.simulator.dialects import (
    MessageParts,
    MessagesChunks,
    ResponseParts,
    ResponsesChunks,
    input_items,
    messages_prompt,
    responses_prompt_tokens,
)
from tokenyard.simulator.habits import with_habits
from tokenyard.simulator.inference import AnswerForm, complete, respond
from tokenyard.simulator.request import Request
from tokenyard.simulator.state import SimulatorState, StoredResponse
from tokenyard.simulator.tokens import GenerationPlan, generate_texts, plan_dialect
from tokenyard.simulator.tool_calls import required_tool
from tokenyard.wire import anthropic
from tokenyard.wire.asgi import Send, send_bytes, send_error, send_json
from tokenyard.wire.openai import list_page


class ResponsesForm:
    """A Response, whole or streamed; kept (unless ``store: false``) for ``GET /v1/responses/{id}``."""

    __slots__ = ("_parts", "_state")

    def __init__(self, parts: ResponseParts, state: SimulatorState) -> None:
        self._parts, self._state = parts, state

    def _keep(self, response: dict[str, Any]) -> dict[str, Any]:
        if response["store"] and self._parts.request.get("background") is not True:
            items = input_items(self._parts.request, response["id"])
            self._state.stored_responses[response["id"]] = StoredResponse(response, items)
        return response

    def chunks(self) -> shapes.StreamChunks:
        return ResponsesChunks(self._parts, keep=self._keep)

    def whole(self, texts: list[str]) -> dict[str, Any]:
        return self._keep(self._parts.whole(texts[0]))


class MessagesForm:
    """An Anthropic Message, whole or streamed."""

    __slots__ = ("_parts",)

    def __init__(self, parts: MessageParts) -> None:
        self._parts = parts

    def chunks(self) -> shapes.StreamChunks:
        return MessagesChunks(self._parts)

    def whole(self, texts: list[str]) -> dict[str, Any]:
        return self._parts.whole(texts[0])


async def responses(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/responses``."""
    body: Mapping[str, Any] = {}
    try:
        body = request.json_object()
        config = state.config
        prompt = responses_prompt_tokens(body)
        plan: GenerationPlan | TokenyardError = plan_dialect(
            body, prompt, "max_output_tokens", config.default_max_tokens, config.max_output_tokens
        )
    except TokenyardError as exc:
        plan = exc

    def form_for(id_bits: int, created: int) -> AnswerForm:
        assert isinstance(plan, GenerationPlan)
        tool = required_tool(
            body.get("tools"), body.get("tool_choice"), f"call_{id_bits:024x}", api="responses"
        )
        parts = ResponseParts(
            body,
            f"resp_{id_bits:048x}",
            created,
            plan.model,
            plan.prompt_tokens,
            plan.completion_tokens,
            plan.finish_reason,
            tool,
        )
        return ResponsesForm(parts, state)

    if body.get("background") is True and isinstance(plan, GenerationPlan):
        await _background(state, request, send, plan, form_for)
        return
    await _serve(state, request, send, plan, form_for, "openai")


async def _background(
    state: SimulatorState, request: Request, send: Send, plan: GenerationPlan, form_for: Any
) -> None:
    """``background: true``: the queued response at once; on the simulator's clock it is in progress until
    its time to first token and decode time have passed, then done (``GET``), unless cancelled first."""
    body = request.json_object()
    if body.get("store") is False or plan.stream:
        message = "background responses need store: true and are not streamed by the simulator"
        await send_error(send, InvalidRequest(message, param="background"))
        return
    if not state.serves(plan.model):
        await send_error(send, ModelNotFound(f"The model `{plan.model}` does not exist."))
        return
    now = state.clock.time()
    form: ResponsesForm = form_for(state.rng.getrandbits(96), int(now))
    [text] = generate_texts(state.config.seed, request.raw_body, 1, plan.completion_tokens_per_choice)
    done = form.whole([text])
    started_at = now + state.config.ttft_ms / 1000.0
    done_at = started_at + plan.completion_tokens / state.config.tokens_per_s
    state.stored_responses[done["id"]] = StoredResponse(
        {**done, "background": True}, input_items(body, done["id"]), done_at, started_at
    )
    await send_json(send, 200, state.stored_responses[done["id"]].seen(now))


async def messages(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/messages`` (errors in Anthropic's shape)."""
    body: Mapping[str, Any] = {}
    cache_read = cache_write = 0
    try:
        body = request.json_object()
        if body.get("max_tokens") is None:
            raise InvalidRequest("max_tokens: Field required", param="max_tokens")
        config = state.config
        total, prefix, key = messages_prompt(body)
        plan: GenerationPlan | TokenyardError = plan_dialect(
            body, total, "max_tokens", config.default_max_tokens, config.max_output_tokens
        )
        if prefix:  # the cacheable prefix: written the first time, read after
            cached = state.prompt_cache
            cache_read, cache_write = (prefix, 0) if key in cached else (0, prefix)
            cached.add(key)
    except TokenyardError as exc:
        plan = exc

    def form_for(id_bits: int, created: int) -> AnswerForm:
        assert isinstance(plan, GenerationPlan)
        tool = required_tool(
            body.get("tools"), body.get("tool_choice"), f"toolu_{id_bits:024x}", api="messages"
        )
        uncached = plan.prompt_tokens - cache_read - cache_write
        parts = MessageParts(
            f"msg_{id_bits:024x}",
            plan.model,
            uncached,
            cache_read,
            cache_write,
            plan.completion_tokens,
            plan.finish_reason,
            tool,
        )
        return MessagesForm(parts)

    await _serve(state, request, send, plan, form_for, "anthropic")


async def _serve(
    state: SimulatorState,
    request: Request,
    send: Send,
    plan: GenerationPlan | TokenyardError,
    form_for: Any,
    errors: str,
) -> None:
    async def answer() -> None:
        if isinstance(plan, GenerationPlan):
            await complete(
                state, plan, request.raw_body, with_habits(send, state.faults, state.clock), form_for
            )

    streaming = isinstance(plan, GenerationPlan) and plan.stream and not state.faults.ignore_stream
    await respond(state, request, send, plan, answer, streaming=streaming, errors=errors)


async def count_tokens(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/messages/count_tokens``: the input tokens ``/v1/messages`` would count (free, no slot)."""
    try:
        body = request.json_object()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: Field required", param="model")
        if not state.serves(model):
            raise ModelNotFound(f"model: {model}")
        total, _, _ = messages_prompt(body)
    except TokenyardError as exc:
        await send_bytes(send, exc.status_code, anthropic.error_body_for(exc))
        return
    await send_json(send, 200, {"input_tokens": total})


# -- stored responses --------------------------------------------------------------------------------------


def _stored(state: SimulatorState, response_id: str) -> StoredResponse:
    found = state.stored_responses.get(response_id)
    if found is None:
        raise ObjectNotFound(f"No response found with id '{response_id}'.", param="response_id")
    return found


async def retrieve_response(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/responses/{id}``."""
    await send_json(send, 200, _stored(state, request.path_param).seen(state.clock.time()))


async def delete_response(state: SimulatorState, request: Request, send: Send) -> None:
    """``DELETE /v1/responses/{id}``."""
    _stored(state, request.path_param)
    del state.stored_responses[request.path_param]
    await send_json(send, 200, {"id": request.path_param, "object": "response.deleted", "deleted": True})


async def response_input_items(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/responses/{id}/input_items`` (one page: the simulator's inputs are short)."""
    await send_json(send, 200, list_page(_stored(state, request.path_param).items, has_more=False))


async def cancel_response(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/responses/{id}/cancel``: a background response not done yet is cancelled (again: the same
    answer); any other is refused."""
    stored, now = _stored(state, request.path_param), state.clock.time()
    if stored.done_at is None or (stored.cancelled_at is None and now >= stored.done_at):
        await send_error(
            send, InvalidRequest("Only a background response still in progress can be cancelled.")
        )
        return
    if stored.cancelled_at is None:
        stored.cancelled_at = now
    await send_json(send, 200, stored.seen(now))
