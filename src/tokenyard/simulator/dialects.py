"""The Responses and Messages APIs as the simulator speaks them: what a body asks for, and the answer's
shapes, whole and streamed (pure).

The simulator generates the same words for every API (``tokens.py``): these forms only dress them.

* **Prompt tokens** are counted as for chat (words of the text, at least one a message): Responses'
  ``instructions`` and ``input`` (text, message items, function-call outputs); Messages' ``tools``,
  ``system`` and ``messages`` blocks.
* **Tool calls**: when ``tool_choice`` requires a function, the answer is one call of it (``tool_calls.py``:
  arguments built from its schema, the generated words in one string argument, streamed as its pieces).
* **Reasoning**: a model whose name holds ``reason`` reports a quarter of its output tokens as reasoning.
* **Prompt caching (Messages)**, deterministic: the blocks up to the last one marked ``cache_control`` are
  the cacheable prefix; the first request with a given prefix (per model) writes it
  (``cache_creation_input_tokens``), later ones read it (``cache_read_input_tokens``); ``input_tokens`` are
  the rest, as Anthropic counts them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tokenyard.errors import InvalidRequest
from tokenyard.simulator.tokens import count_message_tokens, count_words
from tokenyard.simulator.tool_calls import ToolCall
from tokenyard.wire.sse import sse_named


def reasoning_tokens(model: str, completion_tokens: int) -> int:
    """The simulated reasoning share of an answer's output tokens (reasoning models only)."""
    return completion_tokens // 4 if "reason" in model.lower() else 0


# -- what a body asks ---------------------------------------------------------------------------------


def responses_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a Responses request: its instructions and every input item (at least 1 each)."""
    tokens = count_words(body["instructions"]) if isinstance(body.get("instructions"), str) else 0
    given = body.get("input")
    if isinstance(given, str):
        return tokens + count_words(given)
    if not isinstance(given, list) or not given:
        raise InvalidRequest("'input' must be a string or a non-empty array of input items.", param="input")
    for item in given:
        if not isinstance(item, Mapping):
            raise InvalidRequest("Each input item must be an object.", param="input")
        if item.get("type") == "function_call_output":
            output = item.get("output")
            tokens += count_words(output) if isinstance(output, str) else 1
        elif item.get("type") == "function_call":
            tokens += count_words(str(item.get("arguments", "")))
        else:
            tokens += count_message_tokens({"content": _as_chat_parts(item.get("content"))})
    return tokens


def _as_chat_parts(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [
        {"type": "text", "text": p.get("text")} for p in content if isinstance(p, Mapping) and "text" in p
    ]


def input_items(body: Mapping[str, Any], response_id: str) -> list[dict[str, Any]]:
    """A Responses request's input as the stored items ``input_items`` lists (newest first, as OpenAI), each
    with an id and a status, in the shapes the SDK's ``ResponseItem`` has."""
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or ())
    return [_input_item(item, f"{response_id[5:]}{index:04d}") for index, item in enumerate(items)][::-1]


_ITEM_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}


def _input_item(item: Mapping[str, Any], id_tail: str) -> dict[str, Any]:
    kind = item.get("type", "message")
    entry = {
        "status": "completed",
        **item,
        "type": kind,
        "id": _ITEM_ID_PREFIXES.get(kind, "item_") + id_tail,
    }
    if kind != "message":
        return entry
    # An assistant's earlier turn is listed as the output message it was; anyone else's as input text.
    assistant = item.get("role") == "assistant"
    content = item.get("content")
    parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else list(content or ())
    if assistant:
        parts = [_output_text(str(part.get("text", ""))) for part in parts if isinstance(part, Mapping)]
    entry["content"] = parts
    return entry


def messages_prompt(body: Mapping[str, Any]) -> tuple[int, int, bytes]:
    """A Messages request's prompt tokens, the tokens of its cacheable prefix (0: none marked), and the
    prefix's key (tools, then system, then messages, in order, up to the last ``cache_control`` block)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required", param="messages")
    blocks: list[tuple[int, bool, Any]] = []  # tokens, marked, the block (for the prefix key)
    for tool in body.get("tools") or ():
        blocks.append((count_words(orjson.dumps(tool).decode()), _marked(tool), tool))
    system = body.get("system")
    if isinstance(system, str):
        blocks.append((count_words(system), False, system))
    elif isinstance(system, list):
        blocks += [(count_words(_block_text(b)), _marked(b), b) for b in system]
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(
                "messages: each message needs a role of user or assistant.", param="messages"
            )
        content = message.get("content")
        if isinstance(content, list) and content:
            blocks += [(count_words(_block_text(b)), _marked(b), b) for b in content]
        else:
            blocks.append((count_words(content if isinstance(content, str) else ""), False, content))
    total = sum(tokens for tokens, _, _ in blocks)
    last = max((i for i, (_, marked, _) in enumerate(blocks) if marked), default=-1)
    prefix = blocks[: last + 1]
    key = hashlib.sha256(orjson.dumps([body.get("model"), [b for _, _, b in prefix]])).digest()
    return total, sum(tokens for tokens, _, _ in prefix), key


def _marked(block: Any) -> bool:
    return isinstance(block, Mapping) and isinstance(block.get("cache_control"), Mapping)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    if block.get("type") == "tool_use":
        return orjson.dumps(block.get("input", {})).decode()
    content = block.get("text", block.get("content", ""))
    if isinstance(content, list):
        return " ".join(_block_text(inner) for inner in content)
    return content if isinstance(content, str) else ""


# -- the Responses API's answer ------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseParts:
    """What a Responses answer is made of, besides its words."""

    request: Mapping[str, Any]
    response_id: str
    created_at: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    tool: ToolCall | None

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {
                "reasoning_tokens": reasoning_tokens(self.model, self.completion_tokens)
            },
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def item_id(self) -> str:
        return ("fc_" if self.tool else "msg_") + self.response_id[5:]

    def item(self, text: str, status: str = "completed") -> dict[str, Any]:
        """The output item: a message with the text, or the function call with the text as its argument."""
        if self.tool is not None:
            arguments = self.tool.arguments(text) if status == "completed" else ""
            return {
                "type": "function_call",
                "id": self.item_id(),
                "call_id": self.tool.call_id,
                "name": self.tool.name,
                "arguments": arguments,
                "status": status,
            }
        content = [_output_text(text)] if status == "completed" else []
        return {
            "type": "message",
            "id": self.item_id(),
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def response(self, output: list[dict[str, Any]], status: str | None = None) -> dict[str, Any]:
        """The Response object; ``status`` None: finished (completed, or incomplete at the cap)."""
        request = self.request
        finished = status is None
        cut = finished and self.finish_reason == "length" and self.tool is None  # a call is always whole
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status or ("incomplete" if cut else "completed"),
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": request.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": request.get("store", True) is not False,
            "temperature": request.get("temperature", 1.0),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice") or "auto",
            "tools": request.get("tools") or [],
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self.usage() if finished else None,
            "user": request.get("user"),
            "metadata": request.get("metadata") or {},
        }

    def whole(self, text: str) -> dict[str, Any]:
        return self.response([self.item(text)])


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesChunks:
    """The named events of a streamed Response (``shapes.StreamChunks``): one choice, ``sequence_number``
    from 0, the whole response in ``response.completed`` (``response.incomplete`` at the cap)."""

    __slots__ = ("_keep", "_parts", "_seq", "_text")

    def __init__(self, parts: ResponseParts, keep: Callable[[dict[str, Any]], Any]) -> None:
        self._parts = parts
        self._keep = keep  # handed the finished response (to store it)
        self._seq = -1
        self._text: list[str] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return sse_named(kind, {"type": kind, "sequence_number": self._seq, **fields})

    def start(self, index: int) -> bytes | None:
        parts = self._parts
        opening = parts.response([], status="in_progress")
        events = [
            self._event("response.created", response=opening),
            self._event("response.in_progress", response=opening),
            self._event("response.output_item.added", output_index=0, item=parts.item("", "in_progress")),
        ]
        if parts.tool is None:
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=parts.item_id(),
                    output_index=0,
                    content_index=0,
                    part=_output_text(""),
                )
            )
        return b"".join(events)

    def content(self, index: int, piece: str) -> bytes:
        self._text.append(piece)
        where = {"item_id": self._parts.item_id(), "output_index": 0}
        if self._parts.tool is not None:
            tool = self._parts.tool
            prefix = tool.opening if len(self._text) == 1 else ""
            return self._event(
                "response.function_call_arguments.delta", **where, delta=prefix + tool.piece(piece)
            )
        return self._event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])

    def finish(self, index: int, finish_reason: str) -> bytes:
        parts, text = self._parts, "".join(self._text)
        item, where = parts.item(text), {"item_id": parts.item_id(), "output_index": 0}
        if parts.tool is not None:
            rest = ("" if self._text else parts.tool.opening) + parts.tool.closing
            closing = self._event("response.function_call_arguments.delta", **where, delta=rest)
            done = self._event(
                "response.function_call_arguments.done",
                **where,
                name=parts.tool.name,
                arguments=item["arguments"],
            )
            return closing + done + self._event("response.output_item.done", output_index=0, item=item)
        part = item["content"][0]
        return (
            self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            + self._event("response.content_part.done", **where, content_index=0, part=part)
            + self._event("response.output_item.done", output_index=0, item=item)
        )

    def usage(self, usage_: dict[str, Any]) -> bytes:
        final = self._keep(self._parts.whole("".join(self._text)))
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return self._event(kind, response=final)

    def end(self) -> bytes:
        return b""


# -- Anthropic's Messages answer ------------------------------------------------------------------------

_STOP = {"stop": "end_turn", "length": "max_tokens"}


@dataclass(slots=True)
class MessageParts:
    """What a Messages answer is made of, besides its words."""

    message_id: str
    model: str
    input_tokens: int  # without cache reads and writes
    cache_read: int
    cache_write: int
    completion_tokens: int
    finish_reason: str
    tool: ToolCall | None

    def usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
        }

    def stop_reason(self) -> str:
        # A call's arguments are always whole here (the words fill one string argument), so it is a call.
        return "tool_use" if self.tool is not None else _STOP[self.finish_reason]

    def block(self, text: str) -> dict[str, Any]:
        if self.tool is None:
            return {"type": "text", "text": text}
        return {
            "type": "tool_use",
            "id": self.tool.call_id,
            "name": self.tool.name,
            "input": orjson.loads(self.tool.arguments(text)),
        }

    def whole(self, text: str) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [self.block(text)],
            "stop_reason": self.stop_reason(),
            "stop_sequence": None,
            "usage": self.usage(self.completion_tokens),
        }


class MessagesChunks:
    """Anthropic's stream events for one answer (``shapes.StreamChunks``)."""

    __slots__ = ("_parts", "_sent")

    def __init__(self, parts: MessageParts) -> None:
        self._parts = parts
        self._sent = 0

    def start(self, index: int) -> bytes | None:
        parts = self._parts
        message = {**parts.whole(""), "content": [], "stop_reason": None, "usage": parts.usage(1)}
        opened = parts.block("") if parts.tool is None else {**parts.block(""), "input": {}}
        return sse_named("message_start", {"type": "message_start", "message": message}) + sse_named(
            "content_block_start", {"type": "content_block_start", "index": 0, "content_block": opened}
        )

    def content(self, index: int, piece: str) -> bytes:
        tool = self._parts.tool
        self._sent += 1
        if tool is None:
            delta = {"type": "text_delta", "text": piece}
        else:
            prefix = tool.opening if self._sent == 1 else ""
            delta = {"type": "input_json_delta", "partial_json": prefix + tool.piece(piece)}
        return sse_named("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def finish(self, index: int, finish_reason: str) -> bytes:
        tool, out = self._parts.tool, b""
        if tool is not None:
            closing = ("" if self._sent else tool.opening) + tool.closing
            delta = {"type": "input_json_delta", "partial_json": closing}
            out = sse_named(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        return out + sse_named("content_block_stop", {"type": "content_block_stop", "index": 0})

    def usage(self, usage_: dict[str, Any]) -> bytes:
        parts = self._parts
        delta = {"stop_reason": parts.stop_reason(), "stop_sequence": None}
        usage = {"output_tokens": parts.completion_tokens}
        return sse_named(
            "message_delta", {"type": "message_delta", "delta": delta, "usage": usage}
        ) + sse_named("message_stop", {"type": "message_stop"})

    def end(self) -> bytes:
        return b""
