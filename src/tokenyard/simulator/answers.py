"""Inference answers as plain data: the whole JSON answer a completion or embeddings body gets.

Pure functions of the body, the config, and the id bits and time they are handed. The real-time endpoints
(``inference``) wrap them in the latency model and the slots; batch lines (``batch_job``) use them as they
are, so a request gets the same body and usage either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from tokenyard.errors import ModelNotFound, TokenyardError
from tokenyard.simulator import shapes
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.dialects import reasoning_tokens
from tokenyard.simulator.tokens import (
    EmbeddingPlan,
    GenerationPlan,
    embedding_vector,
    encode_base64_float32,
    generate_texts,
    plan_chat,
    plan_completion,
    plan_embeddings,
)
from tokenyard.wire.openai import CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH

Kind = Literal["chat", "completion"]

ID_PREFIXES: dict[Kind, str] = {"chat": "chatcmpl-", "completion": "cmpl-"}
ENDPOINT_KINDS: dict[str, Kind | Literal["embeddings"]] = {
    CHAT_PATH: "chat",
    COMPLETIONS_PATH: "completion",
    EMBEDDINGS_PATH: "embeddings",
}


def plan_generation(kind: Kind, body: Mapping[str, Any], config: SimulatorConfig) -> GenerationPlan:
    """Validate a chat or legacy completion body and decide what to generate."""
    if kind == "chat":
        return plan_chat(body, config.default_max_tokens, config.max_output_tokens)
    return plan_completion(body, config.default_max_tokens, config.max_output_tokens)


def completion_head(
    kind: Kind, id_bits: int, created: int, model: str, config: SimulatorConfig
) -> dict[str, Any]:
    """The id, created, model and fingerprint every object and chunk of one completion share."""
    return shapes.response_head(f"{ID_PREFIXES[kind]}{id_bits:024x}", created, model, f"fp_{config.name}")


def completion_answer(
    kind: Kind, head: dict[str, Any], plan: GenerationPlan, texts: list[str]
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` or ``text_completion`` of each choice's generated text."""
    build = shapes.chat_completion if kind == "chat" else shapes.text_completion
    reasoning = reasoning_tokens(plan.model, plan.completion_tokens)
    return build(
        head, texts, plan.finish_reason, shapes.usage(plan.prompt_tokens, plan.completion_tokens, reasoning)
    )


def embedding_answer(plan: EmbeddingPlan, vectors: list[list[float]]) -> dict[str, Any]:
    """An embeddings ``list`` of the vectors of ``plan``'s inputs, as floats or base64."""
    data: list[list[float] | str] = (
        [encode_base64_float32(vector) for vector in vectors] if plan.base64 else list(vectors)
    )
    return shapes.embeddings_list(plan.model, data, plan.prompt_tokens)


def answer(
    endpoint: str,
    body: Mapping[str, Any],
    raw_body: bytes,
    config: SimulatorConfig,
    serves: Callable[[str], bool],
    *,
    id_bits: int,
    created: int,
) -> dict[str, Any]:
    """The whole answer ``endpoint`` gives ``body`` (streaming is ignored: the answer is one object).

    Raises the ``TokenyardError`` the real-time endpoint would answer with: a body it rejects, or a model
    the simulator does not serve. ``raw_body`` keys the generated text, as the request's bytes do there.
    """
    kind = ENDPOINT_KINDS[endpoint]
    if kind == "embeddings":
        embedding_plan = plan_embeddings(body, config.embedding_dimensions)
        _require_served(embedding_plan.model, serves)
        vectors = [
            embedding_vector(config.seed, text, embedding_plan.dimensions) for text in embedding_plan.inputs
        ]
        return embedding_answer(embedding_plan, vectors)
    plan = plan_generation(kind, body, config)
    _require_served(plan.model, serves)
    head = completion_head(kind, id_bits, created, plan.model, config)
    texts = generate_texts(config.seed, raw_body, plan.choices, plan.completion_tokens_per_choice)
    return completion_answer(kind, head, plan, texts)


def output_work(endpoint: str, body: Mapping[str, Any], config: SimulatorConfig) -> int:
    """How much ``body`` asks ``endpoint`` to generate: completion tokens over all choices, or embedding
    numbers (inputs times dimensions); 0 for a body that would be refused (it generates nothing)."""
    kind = ENDPOINT_KINDS[endpoint]
    try:
        if kind == "embeddings":
            embedding_plan = plan_embeddings(body, config.embedding_dimensions)
            return len(embedding_plan.inputs) * embedding_plan.dimensions
        return plan_generation(kind, body, config).completion_tokens
    except TokenyardError:
        return 0


def _require_served(model: str, serves: Callable[[str], bool]) -> None:
    if not serves(model):
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.")
