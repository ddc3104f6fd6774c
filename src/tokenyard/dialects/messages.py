"""Anthropic's Messages API over a chat-completions backend: the request as chat, the answer back (pure).

Carried: ``system`` (text or text blocks), ``messages`` with text, image, ``tool_use`` and ``tool_result``
blocks, ``max_tokens``, ``temperature``/``top_p``, ``stop_sequences``, ``stream``, ``metadata.user_id``,
custom ``tools`` and ``tool_choice`` (with ``disable_parallel_tool_use``). ``cache_control`` marks are
accepted and dropped (a chat backend caches prefixes on its own, or not at all); earlier ``thinking`` blocks
in the history are dropped. Anything else that would change the answer (extended thinking, ``top_k``,
server tools, documents…) is a 400 naming it.

Back, a chat refusal is text (Anthropic has no refusal block; the stop reason says ``refusal`` when the chat
answer was filtered), and tool-call arguments that are not a JSON object are kept as text under
``_arguments`` (see ``tool_input``). Anthropic's ``input_tokens`` leave out cache reads, so a chat answer's
``cached_tokens`` are moved to ``cache_read_input_tokens``: the three add up to the chat backend's
``prompt_tokens``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenyard.dialects.chat_events import (
    counts,
    error_message,
    first_message,
    pieces,
    present,
    refuse,
    text_of,
    tool_calls,
)
from tokenyard.errors import InvalidRequest
from tokenyard.wire.ids import new_object_id
from tokenyard.wire.sse import sse_named

_DROPPED = frozenset(("model", "service_tier", "metadata", "system", "messages"))
_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def to_chat(request: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as a chat completions request; ``InvalidRequest`` naming all it cannot carry."""
    problems: list[str] = []
    messages: list[dict[str, Any]] = []
    if present(request, "system"):
        messages.append({"role": "system", "content": _system_text(request["system"], problems)})
    turns = request.get("messages")
    if not isinstance(turns, list):
        raise InvalidRequest("messages: Field required", param="messages")
    for index, turn in enumerate(turns):
        messages += _turn(turn, f"messages[{index}]", problems)
    chat: dict[str, Any] = {"model": request.get("model"), "messages": messages}
    metadata = request.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    for key, value in request.items():
        if value is not None and key not in _DROPPED:
            _carry(chat, key, value, problems)
    refuse(problems)
    if not chat.get("tools"):  # OpenAI's chat endpoint refuses a tool choice (or parallel setting) alone
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            chat.pop(key, None)
    return chat


def _carry(chat: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    if key in ("temperature", "top_p"):
        chat[key] = value
    elif key == "max_tokens":
        chat["max_completion_tokens"] = value
    elif key == "stop_sequences":
        chat["stop"] = value
    elif key == "stream":
        if value is True:
            chat.update(stream=True, stream_options={"include_usage": True})
    elif key == "tools":
        chat["tools"] = _tools(value, problems)
    elif key == "tool_choice":
        _tool_choice(chat, value, problems)
    elif not (key == "thinking" and isinstance(value, dict) and value.get("type") == "disabled"):
        problems.append(key)


def _system_text(system: Any, problems: list[str]) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise InvalidRequest("system: must be a string or a list of text blocks.", param="system")
    texts = []
    for index, block in enumerate(system):
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        else:
            problems.append(
                f"system[{index}].type '{block.get('type') if isinstance(block, dict) else block}'"
            )
    return "\n\n".join(texts)


def _turn(turn: Any, where: str, problems: list[str]) -> list[dict[str, Any]]:
    """One Messages turn as chat messages: tool results first (each a ``tool`` message), then the rest."""
    role = turn.get("role") if isinstance(turn, dict) else None
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"{where}.role: must be user or assistant.", param=f"{where}.role")
    content = turn.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where}.content: must be a string or a list of blocks.", param=f"{where}.content"
        )
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.content[{index}]"
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at, problems))
        elif kind == "tool_use" and role == "assistant":
            arguments = orjson.dumps(block.get("input", {})).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at, problems))
        elif kind not in ("thinking", "redacted_thinking"):
            problems.append(f"{at}.type '{kind}'")
    return results + _chat_message(role, parts, calls)


def _chat_message(
    role: str, parts: list[dict[str, Any]], calls: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if not parts and not calls:
        return []
    content: Any = parts
    if all(part["type"] == "text" for part in parts):
        content = "".join(part["text"] for part in parts) if parts else None
    message: dict[str, Any] = {"role": role, "content": content}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _image(block: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    found = block.get("source")
    source: dict[str, Any] = found if isinstance(found, dict) else {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        problems.append(f"{where}.source.type '{source.get('type')}'")
        url = ""
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") != "text" for b in content):
        problems.append(f"{where}.content (only text tool results are carried)")
    text = content if isinstance(content, str) else text_of(content) or ""
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _tools(tools: Any, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list.", param="tools")
    out = []
    for index, tool in enumerate(tools):
        kind = tool.get("type", "custom") if isinstance(tool, dict) else None
        if kind != "custom" or not isinstance(tool, dict):
            problems.append(f"tools[{index}].type '{kind}'")
            continue
        function = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(chat: dict[str, Any], value: Any, problems: list[str]) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("auto", "none"):
        chat["tool_choice"] = kind
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "tool" and isinstance(value, dict):
        chat["tool_choice"] = {"type": "function", "function": {"name": value.get("name")}}
    else:
        problems.append(f"tool_choice.type '{kind}'")
        return
    if isinstance(value, dict) and value.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def count_tokens_estimate(request: dict[str, Any]) -> int:
    """tokenyard's estimate of a Messages request's input tokens (~4 characters a token, at least 1): for a
    model whose backends cannot count them (they speak chat completions only)."""
    chars = len(_system_text(request.get("system") or "", [])) if present(request, "system") else 0
    for turn in request.get("messages") or ():
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(_block_text(block)) for block in content)
    if isinstance(request.get("tools"), list):
        chars += len(orjson.dumps(request["tools"]))
    return max(1, -(-chars // 4))


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return ""
    if block.get("type") == "tool_use":
        return orjson.dumps(block.get("input", {})).decode()
    content = block.get("text", block.get("content"))
    return content if isinstance(content, str) else text_of(content) or ""


# -- the answer back ------------------------------------------------------------------------------------


def usage_object(chat_usage: Any) -> dict[str, int]:
    """A chat usage object in Anthropic's words (zeros without one): cached tokens are cache reads, left
    out of ``input_tokens``."""
    prompt, cached, completion, _ = counts(chat_usage) or (0, 0, 0, 0)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def from_chat(answer: dict[str, Any], request: dict[str, Any], *, message_id: str) -> dict[str, Any]:
    """A whole chat completion as an Anthropic Message."""
    message, finish = first_message(answer)
    content: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    refusal = message.get("refusal")
    if text or isinstance(refusal, str):
        content.append({"type": "text", "text": (text or "") + (refusal if isinstance(refusal, str) else "")})
    for call_id, name, arguments in tool_calls(message):
        block_id = call_id or new_object_id("toolu_")  # a backend that named no id: the client needs one
        content.append({"type": "tool_use", "id": block_id, "name": name, "input": tool_input(arguments)})
    named = answer.get("model")
    model = named if isinstance(named, str) else str(request.get("model", ""))
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP.get(finish or "", "end_turn"),
        "stop_sequence": None,
        "usage": usage_object(answer.get("usage")),
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """A chat tool call's arguments as a ``tool_use`` block's input: the JSON object they spell, or, when a
    model wrote something else, that text under ``_arguments`` (rather than losing it)."""
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"_arguments": arguments}


class MessagesStream:
    """A chat stream turned into Anthropic's Messages events, as whole chat events arrive (``feed``)."""

    __slots__ = ("_block", "_blocks", "_calls", "_finish", "_id", "_model", "_started", "_usage", "done")

    def __init__(self, request: dict[str, Any], *, message_id: str) -> None:
        self._id = message_id
        self._model = str(request.get("model", ""))
        self._started = False
        self._blocks = 0  # blocks opened so far
        self._block: tuple[str, int] | None = None  # the open block: ("text", -1) or ("tool", call index)
        self._calls: dict[int, int] = {}  # chat tool-call index -> its block's index
        self._finish: str | None = None
        self._usage: Any = None
        self.done = False

    def feed(self, events: bytes) -> bytes:
        """The Messages events for these whole chat events."""
        out: list[bytes] = []
        for kind, index, value in pieces(events):
            if self.done:
                break
            if kind == "model" and not self._started:
                self._model = value
            self._start(out)
            self._take(out, kind, index, value)
        return b"".join(out)

    def _start(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out.append(sse_named("message_start", {"type": "message_start", "message": message}))

    def _take(self, out: list[bytes], kind: str, index: int, value: Any) -> None:
        if kind in ("text", "refusal"):  # Anthropic has no refusal block: a refusal is what the model said
            if self._block != ("text", -1):
                self._open(out, ("text", -1), {"type": "text", "text": ""})
            self._delta(out, self._blocks - 1, {"type": "text_delta", "text": value})
        elif kind == "tool" and index not in self._calls:  # some backends repeat a call's head: once only
            block = {
                "type": "tool_use",
                "id": value[0] or new_object_id("toolu_"),
                "name": value[1],
                "input": {},
            }
            self._open(out, ("tool", index), block)
            self._calls[index] = self._blocks - 1
        elif kind == "args":
            if index not in self._calls:
                self._take(out, "tool", index, ("", ""))
            self._delta(out, self._calls[index], {"type": "input_json_delta", "partial_json": value})
        elif kind == "finish":
            self._finish = value
        elif kind == "usage":
            self._usage = value
        elif kind == "error":
            error = {"type": "api_error", "message": error_message(value)}
            out.append(sse_named("error", {"type": "error", "error": error}))
            self.done = True
        elif kind == "done":
            self._end(out)

    def _open(self, out: list[bytes], block: tuple[str, int], opened: dict[str, Any]) -> None:
        self._close(out)
        self._block = block
        start = {"type": "content_block_start", "index": self._blocks, "content_block": opened}
        out.append(sse_named("content_block_start", start))
        self._blocks += 1

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(
                sse_named("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})
            )
            self._block = None

    @staticmethod
    def _delta(out: list[bytes], index: int, delta: dict[str, Any]) -> None:
        out.append(
            sse_named("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )

    def _end(self, out: list[bytes]) -> None:
        self._close(out)
        # A chat stream knows its input tokens only at the end: restated here, where the SDK takes them.
        delta = {"stop_reason": _STOP.get(self._finish or "", "end_turn"), "stop_sequence": None}
        out.append(
            sse_named(
                "message_delta", {"type": "message_delta", "delta": delta, "usage": usage_object(self._usage)}
            )
        )
        out.append(sse_named("message_stop", {"type": "message_stop"}))
        self.done = True
