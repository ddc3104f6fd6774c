"""The Responses or Messages stream a client asked for, made from the whole answer of an upstream that
ignored ``stream: true`` (pure, no I/O).

LiteLLM's proxy answers a streamed ``/v1/messages`` with one JSON body, for one. Relayed as it is, the
anthropic SDK finds no events and its stream helper fails; so the answer is re-shaped into the named events
each API streams, in their order, the whole text in one delta: Anthropic's ``message_start`` …
``message_stop``, OpenAI's ``response.created`` … ``response.completed`` (with ``sequence_number``). The
answer's usage rides in the events that carry it there, so a client reading the stream sees it.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenyard.wire.sse import sse_named


def _object(body: bytes, kind_key: str, kind: str) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict) or answer.get(kind_key) != kind:
        return None
    return answer


def message_as_stream(body: bytes) -> bytes | None:
    """A whole Anthropic ``Message`` as its stream of events; None if ``body`` is none."""
    message = _object(body, "type", "message")
    content = message.get("content") if message is not None else None
    if message is None or not isinstance(content, list):
        return None
    found = message.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}  # fmt: skip
    events = [sse_named("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            return None
        if block.get("type") == "text":
            opened, delta = {**block, "text": ""}, {"type": "text_delta", "text": block.get("text", "")}
        elif block.get("type") == "tool_use":
            opened = {**block, "input": {}}
            delta = {
                "type": "input_json_delta",
                "partial_json": orjson.dumps(block.get("input", {})).decode(),
            }
        elif block.get("type") == "thinking":
            opened, delta = (
                {**block, "thinking": ""},
                {"type": "thinking_delta", "thinking": block.get("thinking", "")},
            )
        else:  # a block with no delta form: it opens whole
            opened, delta = block, None
        started = {"type": "content_block_start", "index": index, "content_block": opened}
        events.append(sse_named("content_block_start", started))
        if delta is not None:
            delta_event = {"type": "content_block_delta", "index": index, "delta": delta}
            events.append(sse_named("content_block_delta", delta_event))
        events.append(sse_named("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    events.append(sse_named("message_delta", {"type": "message_delta", "delta": stop, "usage": usage}))
    events.append(sse_named("message_stop", {"type": "message_stop"}))
    return b"".join(events)


class _Numbered:
    """Named Responses events with their ``sequence_number``, in order."""

    def __init__(self) -> None:
        self.events: list[bytes] = []

    def add(self, event: str, **fields: Any) -> None:
        self.events.append(sse_named(event, {"type": event, "sequence_number": len(self.events), **fields}))


def response_as_stream(body: bytes) -> bytes | None:
    """A whole OpenAI ``Response`` as its stream of events; None if ``body`` is none."""
    response = _object(body, "object", "response")
    output = response.get("output") if response is not None else None
    if response is None or not isinstance(output, list):
        return None
    out = _Numbered()
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    out.add("response.created", response=opening)
    out.add("response.in_progress", response=opening)
    for index, item in enumerate(output):
        if not isinstance(item, dict):
            return None
        _item_events(out, index, item)
    status = response.get("status")
    final = (
        "response.incomplete" if status == "incomplete" else "response.failed" if status == "failed" else None
    )
    out.add(final or "response.completed", response=response)
    return b"".join(out.events)


def _item_events(out: _Numbered, index: int, item: dict[str, Any]) -> None:
    """One output item's events: added, its content (text parts, or a function call's arguments), done."""
    item_id, kind = item.get("id", ""), item.get("type")
    content = item.get("content")
    parts: list[Any] = content if kind == "message" and isinstance(content, list) else []
    opened = {**item, "status": "in_progress", **({"content": []} if kind == "message" else {})}
    if kind == "function_call":
        opened["arguments"] = ""
    out.add("response.output_item.added", output_index=index, item=opened)
    for part_index, part in enumerate(parts):
        where = {"item_id": item_id, "output_index": index, "content_index": part_index}
        text = part.get("text", "") if isinstance(part, dict) else ""
        if isinstance(part, dict) and part.get("type") == "output_text":
            out.add("response.content_part.added", **where, part={**part, "text": ""})
            out.add("response.output_text.delta", **where, delta=text, logprobs=[])
            out.add("response.output_text.done", **where, text=text, logprobs=[])
        else:
            out.add("response.content_part.added", **where, part=part)
        out.add("response.content_part.done", **where, part=part)
    if kind == "function_call":
        arguments = item.get("arguments", "")
        out.add(
            "response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=arguments
        )
        out.add("response.function_call_arguments.done", item_id=item_id, output_index=index,
                arguments=arguments)  # fmt: skip
    out.add("response.output_item.done", output_index=index, item=item)
