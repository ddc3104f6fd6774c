"""Token accounting and generated content: pure functions of the request body and the seed.

The simulator has no tokenizer; it counts and generates like this:

* A **prompt token** is a whitespace-separated word of the message contents: string contents, and the
  ``text`` of ``{"type": "text", "text": ...}`` content parts (other parts count nothing). Every message
  counts at least 1 token. A legacy prompt or embedding input counts the same way per string (at least 1
  each); one given as a token array counts its length.
* The **completion length** is ``max_completion_tokens``, else ``max_tokens``, else the configured
  ``default_max_tokens``; every choice generates exactly that many tokens. A cap above the configured
  ``max_output_tokens`` is refused with 400, as OpenAI and vLLM refuse one above what the model can
  generate, and a request has at most ``MAX_CHOICES`` choices in all, so the work one request can ask for
  is bounded. The finish reason is ``"length"``
  when the request set the cap it stopped on, and ``"stop"`` when it ran to the default length (the simulated
  model's natural end).
* A **completion token** is one generated word, sent as ``"word "`` (trailing space), so a choice's text
  splits back into exactly its token count. ``n`` choices (times the number of legacy prompts) each count.
* Generated words come from one RNG per choice, keyed on (seed, raw request body, choice index): the same
  request to a simulator with the same seed gets the same text, streamed or not; another seed gets other
  text. They are drawn in blocks as they are needed (``ChoiceWords``), never a whole answer up front.
* Embedding vectors are unit length, rounded to float32, and keyed on (seed, input, dimensions). A request
  has at most ``MAX_EMBEDDING_INPUTS`` inputs and ``MAX_EMBEDDING_DIMENSIONS`` requested dimensions.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from tokenyard.errors import InvalidRequest

FinishReason = Literal["stop", "length"]

MAX_CHOICES = 128
"""Choices one request may ask for in all (chat: ``n``; legacy completions: prompts times ``n``)."""
MAX_EMBEDDING_INPUTS = 2048
"""Inputs one embeddings request may hold (OpenAI's limit)."""
MAX_EMBEDDING_DIMENSIONS = 3072
"""The most ``dimensions`` a request may ask for (OpenAI's largest embedding model)."""
GENERATION_BLOCK = 512
"""Words drawn at a time: small enough that one block never holds the event loop for long."""

VOCABULARY = (
    "the", "yard", "sorts", "every", "car", "by", "track", "and", "train", "moves", "on", "time", "a",
    "signal", "turns", "green", "switch", "engine", "freight", "load", "route", "to", "from", "cheap",
    "fast", "steady", "token", "stream", "of", "words", "arrives", "here", "there", "model", "answers",
    "quietly", "while", "clock", "ticks", "onward", "batch", "waits", "for", "night", "dedicated", "lane",
    "serverless", "spill", "over", "meter", "counts", "cost",
)  # fmt: skip
_WORDS = tuple(word + " " for word in VOCABULARY)  # generated tokens, suffixed once rather than per token


DEFAULT_MAX_OUTPUT_TOKENS = 16_384
"""The most completion tokens a choice may ask for unless configured (OpenAI's gpt-4o limit)."""

SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")  # what OpenAI accepts


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """What one chat or legacy completion request asks the simulated model to generate."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    choices: int
    """Chat: ``n``. Legacy completions: number of prompts times ``n``."""
    completion_tokens_per_choice: int
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        """Completion tokens over all choices, as usage reports them."""
        return self.choices * self.completion_tokens_per_choice


@dataclass(frozen=True, slots=True)
class EmbeddingPlan:
    """What one embeddings request asks for: one vector per input, in order."""

    model: str
    inputs: list[str]
    """Each input as the text its vector is keyed on (token arrays as their numbers, space-separated)."""
    prompt_tokens: int
    dimensions: int
    base64: bool


def count_words(text: str) -> int:
    """Prompt tokens of one string: its whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def count_message_tokens(message: object) -> int:
    """Prompt tokens of one chat message: the words of its text contents, at least 1."""
    if not isinstance(message, Mapping):
        raise InvalidRequest("Each message must be an object.", param="messages")
    content = message.get("content")
    if isinstance(content, str):
        return count_words(content)
    words = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                words += len(part["text"].split())
    return max(1, words)


def plan_chat(
    body: Mapping[str, Any], default_max_tokens: int, max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
) -> GenerationPlan:
    """Validate a ``/v1/chat/completions`` body and decide what to generate."""
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    cap = _output_cap(body, "max_completion_tokens", max_output_tokens)
    if cap is None:
        cap = _output_cap(body, "max_tokens", max_output_tokens)
    prompt_tokens = sum(count_message_tokens(message) for message in messages)
    return _generation_plan(body, model, cap, default_max_tokens, prompt_tokens, _choice_count(body))


def plan_dialect(
    body: Mapping[str, Any],
    prompt_tokens: int,
    cap_name: str,
    default_max_tokens: int,
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
) -> GenerationPlan:
    """What a Responses or Messages request asks to generate: one choice, capped by ``cap_name``
    (``max_output_tokens``, ``max_tokens``); streamed, it always ends with its usage (those APIs' last
    events carry it)."""
    model = require_model(body)
    cap = _output_cap(body, cap_name, max_output_tokens)
    plan = _generation_plan(body, model, cap, default_max_tokens, prompt_tokens, 1)
    return replace(plan, include_usage=plan.stream)


def plan_completion(
    body: Mapping[str, Any], default_max_tokens: int, max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
) -> GenerationPlan:
    """Validate a legacy ``/v1/completions`` body and decide what to generate."""
    model = require_model(body)
    prompts = _text_inputs(body.get("prompt"), "prompt")
    cap = _output_cap(body, "max_tokens", max_output_tokens)
    prompt_tokens = sum(tokens for _, tokens in prompts)
    choices = len(prompts) * _choice_count(body)
    if choices > MAX_CHOICES:  # each prompt gets n choices: bound the product, not only n
        raise InvalidRequest(
            f"The number of prompts times 'n' must be at most {MAX_CHOICES}; this request asks for "
            f"{choices} choices.",
            param="n",
        )
    return _generation_plan(body, model, cap, default_max_tokens, prompt_tokens, choices)


def _generation_plan(
    body: Mapping[str, Any],
    model: str,
    cap: int | None,
    default_max_tokens: int,
    prompt_tokens: int,
    choices: int,
) -> GenerationPlan:
    """What to generate, given the endpoint-specific parts; with no cap the model "stops" by itself."""
    tier = body.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:  # as OpenAI: "batch" is a Batch API, not a tier
        listed = ", ".join(f"'{option}'" for option in SERVICE_TIERS)
        raise InvalidRequest(
            f"Invalid value: '{tier}'. Supported values are: {listed}.", param="service_tier"
        )
    stream = _stream_flag(body)
    return GenerationPlan(
        model=model,
        stream=stream,
        include_usage=stream and _include_usage(body),
        prompt_tokens=prompt_tokens,
        choices=choices,
        completion_tokens_per_choice=default_max_tokens if cap is None else cap,
        finish_reason="stop" if cap is None else "length",
    )


def plan_embeddings(body: Mapping[str, Any], default_dimensions: int) -> EmbeddingPlan:
    """Validate a ``/v1/embeddings`` body and decide which vectors to return."""
    model = require_model(body)
    inputs = _text_inputs(body.get("input"), "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(
            f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items; this request has {len(inputs)}.",
            param="input",
        )
    dimensions = _optional_positive_int(body, "dimensions")
    if dimensions is not None and dimensions > MAX_EMBEDDING_DIMENSIONS:
        raise InvalidRequest(
            f"'dimensions' is too large: {dimensions}. This model supports at most "
            f"{MAX_EMBEDDING_DIMENSIONS} dimensions.",
            param="dimensions",
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    return EmbeddingPlan(
        model=model,
        inputs=[text for text, _ in inputs],
        prompt_tokens=sum(tokens for _, tokens in inputs),
        dimensions=default_dimensions if dimensions is None else dimensions,
        base64=encoding == "base64",
    )


def require_model(body: Mapping[str, Any]) -> str:
    """The requested model id; a missing or empty one is the client's error."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    return model


def generation_key(seed: int, body: bytes) -> bytes:
    """What a request's generated words are keyed on: (seed, raw body), hashed once per request."""
    return hashlib.sha512(str(seed).encode() + b"\x00" + body).digest()


class ChoiceWords:
    """One choice's generated tokens (each ``"word "``), drawn a block at a time as they are taken.

    ``random.choices`` draws one number per word, so the words do not depend on how they are taken:
    a stream taking one at a time and a whole answer taking blocks get the same text.
    """

    __slots__ = ("_block", "_left", "_next", "_rng")

    def __init__(self, key: bytes, index: int, length: int) -> None:
        # random.Random hashes bytes seeds with SHA-512, so this is stable across processes and runs.
        self._rng = random.Random(key + index.to_bytes(4, "big"))
        self._left = length
        self._block: list[str] = []
        self._next = 0

    def take(self, count: int) -> list[str]:
        """The next ``count`` tokens (fewer at the end); use either ``take`` or ``next`` on one choice."""
        count = min(count, self._left)
        self._left -= count
        return self._rng.choices(_WORDS, k=count)

    def next(self) -> str:
        """The next token; the choice must have one left."""
        if self._next == len(self._block):
            self._block, self._next = self.take(GENERATION_BLOCK), 0
        word = self._block[self._next]
        self._next += 1
        return word


def choice_words(seed: int, body: bytes, choices: int, length: int) -> list[ChoiceWords]:
    """The generated tokens of each of ``choices`` choices of ``length`` tokens, to be drawn on demand."""
    key = generation_key(seed, body)
    return [ChoiceWords(key, index, length) for index in range(choices)]


def generate_texts(seed: int, body: bytes, choices: int, length: int) -> list[str]:
    """Each choice's whole generated text at once (for batch lines; the real-time path draws in blocks)."""
    return ["".join(words.take(length)) for words in choice_words(seed, body, choices, length)]


def embedding_vector(seed: int, text: str, dimensions: int) -> list[float]:
    """A unit-length vector for ``text``, rounded to float32 so both encodings give the same numbers."""
    rng = random.Random(f"{seed}\x00{dimensions}\x00{text}")
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(x / norm for x in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def encode_base64_float32(vector: list[float]) -> str:
    """A vector as OpenAI's ``encoding_format: "base64"`` sends it: little-endian float32 bytes, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _text_inputs(value: object, param: str) -> list[tuple[str, int]]:
    """Legacy prompts or embedding inputs as (text key, token count) pairs, whichever form they came in."""
    if isinstance(value, str):
        return [(value, count_words(value))]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return [(item, count_words(item)) for item in value]
        if _is_token_array(value):
            return [(_token_key(value), len(value))]
        if all(isinstance(item, list) and item and _is_token_array(item) for item in value):
            return [(_token_key(item), len(item)) for item in value]
    raise InvalidRequest(
        f"'{param}' must be a string, an array of strings, or an array of token arrays.", param=param
    )


def _is_token_array(value: list[Any]) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def _token_key(tokens: list[int]) -> str:
    return " ".join(map(str, tokens))


def _output_cap(body: Mapping[str, Any], name: str, max_output_tokens: int) -> int | None:
    """``max_tokens`` or ``max_completion_tokens``, refused as OpenAI refuses one the model cannot reach."""
    cap = _optional_positive_int(body, name)
    if cap is not None and cap > max_output_tokens:
        raise InvalidRequest(
            f"{name} is too large: {cap}. This model supports at most {max_output_tokens} completion "
            f"tokens, whereas you provided {cap}.",
            param=name,
        )
    return cap


def _optional_positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int subclass; JSON true is not a token count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    return value


def _choice_count(body: Mapping[str, Any]) -> int:
    n = _optional_positive_int(body, "n")
    if n is None:
        return 1
    if n > MAX_CHOICES:
        raise InvalidRequest(f"'n' must be at most {MAX_CHOICES}.", param="n")
    return n


def _stream_flag(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return stream


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, Mapping):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    return options.get("include_usage") is True
