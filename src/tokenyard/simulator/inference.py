"""The inference endpoints: chat completions, legacy completions and embeddings.

Every request goes the same way: plan it (pure, from the body), then — while watching for the client to
leave — wait ``first_byte_delay_ms``, answer an injected fault if one is due, answer a client error if the
plan failed, take a generation slot, wait the time to first token, and produce the answer at the decode rate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tokenyard.errors import ModelNotFound, TokenyardError
from tokenyard.simulator import shapes
from tokenyard.simulator.answers import (
    Kind,
    completion_answer,
    completion_head,
    embedding_answer,
    plan_generation,
)
from tokenyard.simulator.capacity import TokenPacer, sample_ttft_s, stream_rate_per_s
from tokenyard.simulator.dialects import reasoning_tokens
from tokenyard.simulator.habits import with_habits
from tokenyard.simulator.request import Request
from tokenyard.simulator.state import SimulatorState
from tokenyard.simulator.tokens import (
    ChoiceWords,
    EmbeddingPlan,
    GenerationPlan,
    choice_words,
    embedding_vector,
    plan_embeddings,
)
from tokenyard.simulator.tool_calls import ToolCall, required_tool
from tokenyard.wire import anthropic
from tokenyard.wire.asgi import (
    JSON_HEADERS,
    Send,
    send_bytes,
    send_chunk,
    send_error,
    send_json,
    until_client_leaves,
)

WORDS_PER_YIELD = 4096
"""Words a non-streamed answer draws between two yields to the event loop (about a millisecond): the
simulator runs inside the proxy's loop in the quick start, and must never hold it for long."""


class StreamCut(Exception):
    """Raised out of the ASGI app on purpose, so the server drops the stream (``cut_stream_after_chunks``)."""


async def chat_completions(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/chat/completions``."""
    await _generate(state, request, send, "chat")


async def completions(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/completions`` (legacy)."""
    await _generate(state, request, send, "completion")


async def embeddings(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /v1/embeddings``."""
    try:
        plan: EmbeddingPlan | TokenyardError = plan_embeddings(
            request.json_object(), state.config.embedding_dimensions
        )
    except TokenyardError as exc:
        plan = exc

    async def answer() -> None:
        if isinstance(plan, EmbeddingPlan):
            await _embed(state, plan, send)

    await respond(state, request, send, plan, answer, streaming=False)


async def _generate(state: SimulatorState, request: Request, send: Send, kind: Kind) -> None:
    try:
        plan: GenerationPlan | TokenyardError = plan_generation(kind, request.json_object(), state.config)
    except TokenyardError as exc:
        plan = exc

    body = request.json if isinstance(request.json, dict) else {}

    def form_for(id_bits: int, created: int) -> AnswerForm:
        assert isinstance(plan, GenerationPlan)
        head = completion_head(kind, id_bits, created, plan.model, state.config)
        tool = required_tool(body.get("tools"), body.get("tool_choice"), f"call_{id_bits:024x}", api="chat")
        return OpenAIForm(kind, head, plan, tool if kind == "chat" else None)

    async def answer() -> None:
        if isinstance(plan, GenerationPlan):
            habits = with_habits(send, state.faults, state.clock)
            await complete(state, plan, request.raw_body, habits, form_for)

    streaming = isinstance(plan, GenerationPlan) and plan.stream and not state.faults.ignore_stream
    await respond(state, request, send, plan, answer, streaming=streaming)


class AnswerForm(Protocol):
    """How one API dresses the generated words: streamed frames, or the whole answer."""

    def chunks(self) -> shapes.StreamChunks:
        """The frames of a streamed answer."""
        ...

    def whole(self, texts: list[str]) -> dict[str, Any]:
        """The whole answer of each choice's text."""
        ...


class OpenAIForm:
    """Chat and legacy completions (a chat answer that must call a tool: one function call)."""

    __slots__ = ("head", "kind", "plan", "tool")

    def __init__(self, kind: Kind, head: dict[str, Any], plan: GenerationPlan, tool: ToolCall | None) -> None:
        self.kind, self.head, self.plan, self.tool = kind, head, plan, tool

    def chunks(self) -> shapes.StreamChunks:
        plan, tool = self.plan, self.tool
        if tool is not None:
            call = {"id": tool.call_id, "type": "function", "function": {"name": tool.name}}
            return shapes.ChatToolCallChunks(self.head, plan.include_usage, call, tool)
        if self.kind == "chat":
            return shapes.ChatChunks(self.head, plan.include_usage)
        return shapes.CompletionChunks(self.head, plan.include_usage)

    def whole(self, texts: list[str]) -> dict[str, Any]:
        answer = completion_answer(self.kind, self.head, self.plan, texts)
        if self.tool is not None:
            for choice, text in zip(answer["choices"], texts, strict=True):
                function = {"name": self.tool.name, "arguments": self.tool.arguments(text)}
                call = {"id": self.tool.call_id, "type": "function", "function": function}
                choice["message"].update(content=None, tool_calls=[call])
                choice["finish_reason"] = "tool_calls"  # whole arguments, however many words filled them
        return answer


async def respond(
    state: SimulatorState,
    request: Request,
    send: Send,
    plan: GenerationPlan | EmbeddingPlan | TokenyardError,
    answer: Callable[[], Awaitable[None]],
    *,
    streaming: bool,
    errors: str = "openai",
) -> None:
    """Delay, fault, client error or answer — abandoning all of it if the client leaves. ``errors`` is the
    shape errors take: ``openai``, or ``anthropic`` on the Messages API."""

    async def work() -> None:
        faults = state.faults
        if faults.first_byte_delay_ms > 0:
            await state.clock.sleep(faults.first_byte_delay_ms / 1000.0)
        status = state.take_fault()
        if status is not None:
            headers = shapes.HTML_HEADERS if faults.error_html else JSON_HEADERS
            if status == 429:
                headers = [*headers, (b"retry-after", shapes.retry_after_value(state.faults.retry_after_s))]
            body = shapes.injected_error_html(status) if faults.error_html else _injected(status, errors)
            await send_bytes(send, status, body, headers)
        elif isinstance(plan, TokenyardError):
            await _send_error(send, plan, errors)
        elif not state.serves(plan.model):
            message = f"The model `{plan.model}` does not exist or you do not have access to it."
            await _send_error(send, ModelNotFound(message), errors)
        else:
            await answer()

    try:
        left = await until_client_leaves(request.receive, work())
    except OSError:  # servers may raise it on a write to a closed connection: the client left too
        left = True
    if left:
        if streaming:
            state.counters.streams_cancelled += 1
        else:
            state.counters.requests_cancelled += 1


async def complete(
    state: SimulatorState,
    plan: GenerationPlan,
    raw_body: bytes,
    send: Send,
    form_for: Callable[[int, int], AnswerForm],
) -> None:
    """Generate an answer inside a slot, streamed or whole, dressed by the form ``form_for(id bits, created)``
    makes."""
    config, engine = state.config, state.engine
    async with (
        state.slots,
        engine.holding(plan.prompt_tokens + plan.completion_tokens, state.clock.monotonic),
    ):
        ttft_s = sample_ttft_s(config, state.rng)
        form = form_for(state.rng.getrandbits(96), int(state.clock.time()))
        # Drawn as they are sent (or, whole, a block at a time): never a whole answer held up front.
        words = choice_words(config.seed, raw_body, plan.choices, plan.completion_tokens_per_choice)
        pacer_rate = _rate_source(state)
        if plan.stream and not state.faults.ignore_stream:
            await send({"type": "http.response.start", "status": 200, "headers": shapes.SSE_HEADERS})
            await state.clock.sleep(ttft_s)
            engine.prompt_tokens += plan.prompt_tokens  # prefill done
            pacer = TokenPacer(state.clock, pacer_rate, fixed_rate=config.mode == "serverless")
            reasoning = reasoning_tokens(plan.model, plan.completion_tokens)
            usage = shapes.usage(plan.prompt_tokens, plan.completion_tokens, reasoning)
            await _stream(state, plan, words, form.chunks(), pacer, usage, send)
            state.counters.streams_completed += 1
            return
        await state.clock.sleep(ttft_s)
        engine.prompt_tokens += plan.prompt_tokens
        pacer = TokenPacer(state.clock, pacer_rate, fixed_rate=config.mode == "serverless")
        texts = await _decode_whole(words, plan.completion_tokens_per_choice, pacer)
        engine.generation_tokens += plan.completion_tokens
        await send_json(send, 200, form.whole(texts))
        state.counters.requests_completed += 1


async def _decode_whole(words: list[ChoiceWords], length: int, pacer: TokenPacer) -> list[str]:
    """Each choice's whole text, drawn block by block while its decode time passes, yielding in between."""
    block = max(1, WORDS_PER_YIELD // len(words))
    parts: list[list[str]] = [[] for _ in words]
    done = 0
    while done < length:
        step = min(block, length - done)
        for choice, source in zip(parts, words, strict=True):
            choice.append("".join(source.take(step)))
        # The first token came with the time to first token; the others at the decode rate.
        await pacer.advance(step - 1 if done == 0 else step)
        done += step
    return ["".join(choice) for choice in parts]


async def _stream(
    state: SimulatorState,
    plan: GenerationPlan,
    words: list[ChoiceWords],
    chunks: shapes.StreamChunks,
    pacer: TokenPacer,
    usage: dict[str, object],
    send: Send,
) -> None:
    """Send a stream's frames, one ASGI send per frame so relays can be checked chunk by chunk."""
    cut_after = state.faults.cut_stream_after_chunks
    stall_after = state.faults.stall_stream_after_chunks
    sent = 0
    for index in range(plan.choices):
        opening = chunks.start(index)
        if opening is not None:
            await send_chunk(send, opening)
    for step in range(plan.completion_tokens_per_choice):
        if step:
            await pacer.next_token()
        for index, choice in enumerate(words):
            if cut_after is not None and sent >= cut_after:
                _cut(state)
            if sent == stall_after:
                await state.clock.sleep(state.faults.stall_s)
            await send_chunk(send, chunks.content(index, choice.next()))
            sent += 1
        state.engine.generation_tokens += plan.choices
    if cut_after is not None and sent >= cut_after:
        _cut(state)
    for index in range(plan.choices):
        await send_chunk(send, chunks.finish(index, plan.finish_reason))
    if plan.include_usage:
        await send_chunk(send, chunks.usage(usage))
    await send({"type": "http.response.body", "body": chunks.end(), "more_body": False})


def _cut(state: SimulatorState) -> None:
    state.counters.streams_cut += 1
    raise StreamCut("stream cut on purpose by the cut_stream_after_chunks fault")


def _rate_source(state: SimulatorState) -> Callable[[], float]:
    """The current per-stream decode rate, read afresh at every token."""
    config, slots = state.config, state.slots
    # state.faults is read at every token: a new capacity_scale reaches the streams already running.
    return lambda: stream_rate_per_s(config, slots.in_flight, state.faults.capacity_scale)


async def _embed(state: SimulatorState, plan: EmbeddingPlan, send: Send) -> None:
    """Answer an embeddings request inside a slot after the time to first token."""
    async with state.slots, state.engine.holding(0, state.clock.monotonic):
        await state.clock.sleep(sample_ttft_s(state.config, state.rng))
        vectors = []
        for text in plan.inputs:  # up to a few milliseconds each: yield to the loop between them
            vectors.append(embedding_vector(state.config.seed, text, plan.dimensions))
            await state.clock.sleep(0.0)
        await send_json(send, 200, embedding_answer(plan, vectors))
        state.counters.requests_completed += 1


def _injected(status: int, errors: str) -> bytes:
    """An injected fault's JSON body, in the API's error shape."""
    if errors == "anthropic":
        return anthropic.error_body(f"Injected error with status {status}.", anthropic.error_type_for(status))
    return shapes.injected_error(status)


async def _send_error(send: Send, exc: TokenyardError, errors: str) -> None:
    if errors == "anthropic":
        await send_bytes(send, anthropic.status_for(exc), anthropic.error_body_for(exc))
    else:
        await send_error(send, exc)
