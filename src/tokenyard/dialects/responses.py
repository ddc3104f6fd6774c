"""OpenAI's Responses API over a chat-completions backend: the request as chat, the answer back (pure).

Carried: ``input`` as text or items (messages with text and image parts, function calls and their
outputs), ``instructions``, ``max_output_tokens``, ``temperature``/``top_p``, ``user``, ``stream``,
function ``tools``, ``tool_choice`` and ``parallel_tool_calls``, ``text.format`` (JSON schema or JSON
object), ``reasoning.effort``. Anything else that would change the answer (built-in tools,
``previous_response_id``, ``include``, ``truncation: "auto"``…) is a 400 naming all of it at once.

The answer comes back as OpenAI's Response, whole or as its stream of events: the chat message's text (and
refusal) as a message item, each tool call as a function_call item, and the reasoning text some backends
add (``reasoning_content``/``reasoning``) as a reasoning item's summary, since that is the only place the
Responses API shows reasoning as text."""

from __future__ import annotations

from typing import Any

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

# Fields that change nothing a chat backend does (or are tokenyard's own business): accepted, not sent.
# (``top_logprobs`` shows only with ``include: ["message.output_text.logprobs"]``, which is refused.)
_DROPPED = frozenset(
    (
        "model",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "stream_options",
        "top_logprobs",
    )
)
# Fields whose value here asks for nothing beyond chat completions: accepted as if absent.
_HARMLESS: dict[str, Any] = {"truncation": "disabled", "background": False, "include": []}
# What only makes sense beside tools: OpenAI's chat endpoint refuses them without any (a Responses client
# may send them with none, or with only tools that are refused anyway).
_WITH_TOOLS = ("tools", "tool_choice", "parallel_tool_calls")
_TEXT_PARTS = frozenset(("input_text", "output_text", "text", "refusal"))
_STATUS = {"length": ("incomplete", "max_output_tokens"), "content_filter": ("incomplete", "content_filter")}


def to_chat(request: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as a chat completions request; ``InvalidRequest`` naming all it cannot carry."""
    problems: list[str] = []
    chat: dict[str, Any] = {"model": request.get("model")}
    messages = (
        [{"role": "system", "content": request["instructions"]}] if present(request, "instructions") else []
    )
    messages += _input_messages(request.get("input"), problems)
    chat["messages"] = messages
    for key, value in request.items():
        if value is None or key in _DROPPED or key in ("input", "instructions"):
            continue
        if key not in _HARMLESS or _HARMLESS[key] != value:
            _carry(chat, key, value, problems)
    refuse(problems)
    if not chat.get("tools"):
        for key in _WITH_TOOLS:
            chat.pop(key, None)
    return chat


def _carry(chat: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    """One top-level field into ``chat``, or a problem named."""
    if key in ("temperature", "top_p", "user", "parallel_tool_calls"):
        chat[key] = value
    elif key == "max_output_tokens":
        chat["max_completion_tokens"] = value
    elif key == "stream":
        if value is True:
            chat.update(stream=True, stream_options={"include_usage": True})
    elif key == "tools":
        chat["tools"] = _tools(value, problems)
    elif key == "tool_choice":
        _tool_choice(chat, value, problems)
    elif key == "text":
        _text_format(chat, value, problems)
    elif key == "reasoning":
        if isinstance(value, dict) and value.get("effort") is not None:
            chat["reasoning_effort"] = value["effort"]
    else:
        problems.append(key)


def _input_messages(value: Any, problems: list[str]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("input: must be a string or a list of input items.", param="input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input[{index}]: must be an object.", param=f"input[{index}]")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, f"input[{index}]", problems))
        elif kind == "function_call":
            _function_call(messages, item)
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else text_of(output) or ""
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind != "reasoning":  # earlier reasoning fed back: the chat backend has no place for it
            problems.append(f"input[{index}].type '{kind}'")
    return messages


def _message(item: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(
            f"{where}.role: must be user, assistant, system or developer.", param=f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, list):
        parts = [_part(part, f"{where}.content[{i}]", problems) for i, part in enumerate(content)]
        carried = [part for part in parts if part is not None]
        if all(part["type"] == "text" for part in carried):  # plain text: the form every chat server takes
            content = "".join(part["text"] for part in carried)
        else:
            content = carried
    elif not isinstance(content, str):
        raise InvalidRequest(
            f"{where}.content: must be a string or a list of parts.", param=f"{where}.content"
        )
    return {"role": "system" if role == "developer" else role, "content": content}


def _part(part: Any, where: str, problems: list[str]) -> dict[str, Any] | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": str(part.get("text", part.get("refusal", "")))}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    problems.append(f"{where}.type '{kind}'" if kind != "input_image" else f"{where}.file_id")
    return None


def _function_call(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    call = {
        "id": item.get("call_id"),
        "type": "function",
        "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)  # calls made together go back together
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tools(tools: Any, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list.", param="tools")
    out = []
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            problems.append(f"tools[{index}].type '{kind}'")
            continue
        function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(chat: dict[str, Any], value: Any, problems: list[str]) -> None:
    if value in ("auto", "none", "required"):
        chat["tool_choice"] = value
    elif isinstance(value, dict) and value.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": value.get("name")}}
    else:
        kind = value.get("type") if isinstance(value, dict) else value
        problems.append(f"tool_choice '{kind}'")


def _text_format(chat: dict[str, Any], value: Any, problems: list[str]) -> None:
    fmt = value.get("format") if isinstance(value, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema" and isinstance(fmt, dict):
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind not in (None, "text"):
        problems.append(f"text.format.type '{kind}'")


# -- the answer back ------------------------------------------------------------------------------------


def from_chat(
    answer: dict[str, Any], request: dict[str, Any], *, response_id: str, created_at: int
) -> dict[str, Any]:
    """A whole chat completion as a Response object."""
    message, finish = first_message(answer)
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(_reasoning_item(reasoning))
    text, refusal = text_of(message.get("content")), message.get("refusal")
    if text or isinstance(refusal, str):
        output.append(
            _message_item(new_object_id("msg_"), text or "", refusal if isinstance(refusal, str) else None)
        )
    for call_id, name, arguments in tool_calls(message):
        output.append(_call_item(new_object_id("fc_"), call_id, name, arguments))
    named = answer.get("model")
    model = named if isinstance(named, str) else str(request.get("model", ""))
    return response_object(request, response_id, created_at, model, output, finish, answer.get("usage"))


def response_object(
    request: dict[str, Any],
    response_id: str,
    created_at: int,
    model: str,
    output: list[dict[str, Any]],
    finish: str | None,
    chat_usage: Any,
    *,
    status: str | None = None,
) -> dict[str, Any]:
    """A Response object: the answer, its usage, and the request's settings echoed as OpenAI echoes them."""
    state, reason = _STATUS.get(finish or "", ("completed", None))
    text = request.get("text") if isinstance(request.get("text"), dict) else {"format": {"type": "text"}}
    found = request.get("reasoning")
    reasoning: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status or state,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": reason} if reason and status is None else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": request.get("store", True) is not False,
        "temperature": _given(request, "temperature", 1.0),
        "text": text,
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": _given(request, "top_p", 1.0),
        "truncation": "disabled",
        "usage": usage_object(chat_usage),
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _given(request: dict[str, Any], key: str, default: Any) -> Any:
    """A request's field, or the default OpenAI echoes when it is absent or null."""
    value = request.get(key)
    return default if value is None else value


def usage_object(chat_usage: Any) -> dict[str, Any] | None:
    """A chat usage object in the Responses API's words (None without one)."""
    found = counts(chat_usage)
    if found is None:
        return None
    prompt, cached, completion, reasoning = found
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _message_item(
    item_id: str, text: str, refusal: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or refusal is None:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal is not None:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id or new_object_id("call_"),
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _reasoning_item(text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": new_object_id("rs_"),
        "summary": [{"type": "summary_text", "text": text}],
    }


class ResponsesStream:
    """A chat stream turned into the Responses API's events, as whole chat events arrive (``feed``).

    Output items open in the order their first piece arrives (reasoning, message, function calls) and are
    all closed when the chat stream ends, which is when the last event can carry the usage.
    """

    __slots__ = (
        "_calls",
        "_created_at",
        "_finish",
        "_id",
        "_items",
        "_message",
        "_model",
        "_reasoning",
        "_request",
        "_seq",
        "_usage",
        "done",
    )

    def __init__(self, request: dict[str, Any], *, response_id: str, created_at: int) -> None:
        self._request, self._id, self._created_at = request, response_id, created_at
        self._seq = -1  # no event yet
        self._model = str(request.get("model", ""))
        self._items: list[dict[str, Any]] = []  # output items in the order they opened
        self._reasoning: dict[str, Any] | None = None  # the reasoning item being written, if one is
        self._message: dict[str, Any] | None = None  # the message item being written, if one is
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its function_call item
        self._finish: str | None = None
        self._usage: Any = None
        self.done = False

    def feed(self, events: bytes) -> bytes:
        """The Responses events for these whole chat events."""
        out: list[bytes] = []
        for kind, index, value in pieces(events):
            if self.done:
                break
            if kind == "model" and self._seq < 0:
                self._model = value
            self._start(out)
            self._take(out, kind, index, value)
        return b"".join(out)

    def _event(self, out: list[bytes], kind: str, **fields: Any) -> None:
        self._seq += 1
        out.append(sse_named(kind, {"type": kind, "sequence_number": self._seq, **fields}))

    def _start(self, out: list[bytes]) -> None:
        if self._seq >= 0:
            return
        response = self._response([], None, status="in_progress")
        self._event(out, "response.created", response=response)
        self._event(out, "response.in_progress", response=response)

    def _take(self, out: list[bytes], kind: str, index: int, value: Any) -> None:
        if kind == "text":
            self._write_part(out, "output_text", value)
        elif kind == "refusal":
            self._write_part(out, "refusal", value)
        elif kind == "reasoning":
            self._write_reasoning(out, value)
        elif kind == "tool":
            self._open_call(out, index, *value)
        elif kind == "args":
            call = self._calls.get(index) or self._open_call(out, index, "", "")
            call["arguments"] += value
            where = {"item_id": call["id"], "output_index": self._items.index(call)}
            self._event(out, "response.function_call_arguments.delta", **where, delta=value)
        elif kind == "finish":
            self._finish = value
        elif kind == "usage":
            self._usage = value
        elif kind == "error":
            self._error(out, value)
        elif kind == "done":
            self._end(out)

    def _add(self, out: list[bytes], item: dict[str, Any], announced: dict[str, Any]) -> dict[str, Any]:
        """Open an output item (``announced``: how it looks empty); its ``item_id``/``output_index``."""
        self._items.append(item)
        where = {"item_id": item["id"], "output_index": len(self._items) - 1}
        self._event(out, "response.output_item.added", output_index=where["output_index"], item=announced)
        return where

    def _write_reasoning(self, out: list[bytes], piece: str) -> None:
        item = self._reasoning
        if item is None:
            item = self._reasoning = _reasoning_item("")
            where = self._add(out, item, {**item, "summary": []})
            part = {"type": "summary_text", "text": ""}
            self._event(out, "response.reasoning_summary_part.added", **where, summary_index=0, part=part)
        item["summary"][0]["text"] += piece
        where = {"item_id": item["id"], "output_index": self._items.index(item)}
        self._event(out, "response.reasoning_summary_text.delta", **where, summary_index=0, delta=piece)

    def _write_part(self, out: list[bytes], part_type: str, piece: str) -> None:
        """A piece of the message's text (``output_text``) or of its refusal (``refusal``), each one part."""
        item = self._message
        if item is None:
            item = self._message = _message_item(new_object_id("msg_"), "", status="in_progress")
            item["content"] = []  # parts open as their first piece comes
            self._add(out, item, {**item, "content": []})
        where = {"item_id": item["id"], "output_index": self._items.index(item)}
        parts: list[dict[str, Any]] = item["content"]
        found = [i for i, part in enumerate(parts) if part["type"] == part_type]
        content_index = found[0] if found else len(parts)
        if not found:
            parts.append(_empty_part(part_type))
            part = _empty_part(part_type)
            self._event(out, "response.content_part.added", **where, content_index=content_index, part=part)
        if part_type == "output_text":
            parts[content_index]["text"] += piece
            at = {**where, "content_index": content_index}
            self._event(out, "response.output_text.delta", **at, delta=piece, logprobs=[])
        else:
            parts[content_index]["refusal"] += piece
            self._event(out, "response.refusal.delta", **where, content_index=content_index, delta=piece)

    def _open_call(self, out: list[bytes], index: int, call_id: str, name: str) -> dict[str, Any]:
        call = self._calls.get(index)
        if call is not None:  # a repeated head: fill in what the first one lacked
            call["name"] = call["name"] or name
            return call
        call = self._calls[index] = _call_item(new_object_id("fc_"), call_id, name, "", status="in_progress")
        self._add(out, call, dict(call))
        return call

    def _error(self, out: list[bytes], error: dict[str, Any]) -> None:
        message = error_message(error)
        code, param = error.get("code"), error.get("param")
        self._event(
            out,
            "error",
            code=None if code is None else str(code),
            message=message,
            param=None if param is None else str(param),
            # the object beside the fields is what makes the openai SDK raise (as legs.stream_error_event)
            error={"type": error.get("type") or "server_error", "message": message},
        )
        self.done = True

    def _end(self, out: list[bytes]) -> None:
        for output_index, item in enumerate(self._items):
            self._close(out, output_index, item)
            self._event(out, "response.output_item.done", output_index=output_index, item=item)
        response = self._response(self._items, self._finish)
        last = "response.completed" if response["status"] == "completed" else "response.incomplete"
        self._event(out, last, response=response)
        self.done = True

    def _close(self, out: list[bytes], output_index: int, item: dict[str, Any]) -> None:
        """The events that end one output item's content (its ``output_item.done`` follows)."""
        where = {"item_id": item["id"], "output_index": output_index}
        if item["type"] == "reasoning":
            summary = item["summary"][0]
            self._event(
                out, "response.reasoning_summary_text.done", **where, summary_index=0, text=summary["text"]
            )
            self._event(out, "response.reasoning_summary_part.done", **where, summary_index=0, part=summary)
            return
        item["status"] = "completed"
        if item["type"] == "function_call":
            done = {"name": item["name"], "arguments": item["arguments"]}
            self._event(out, "response.function_call_arguments.done", **where, **done)
            return
        for content_index, part in enumerate(item["content"]):
            at = {**where, "content_index": content_index}
            if part["type"] == "output_text":
                self._event(out, "response.output_text.done", **at, text=part["text"], logprobs=[])
            else:
                self._event(out, "response.refusal.done", **at, refusal=part["refusal"])
            self._event(out, "response.content_part.done", **at, part=part)

    def _response(
        self, output: list[dict[str, Any]], finish: str | None, status: str | None = None
    ) -> dict[str, Any]:
        usage = self._usage if status is None else None
        return response_object(
            self._request, self._id, self._created_at, self._model, output, finish, usage, status=status
        )


def _empty_part(part_type: str) -> dict[str, Any]:
    if part_type == "output_text":
        return {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    return {"type": "refusal", "refusal": ""}
