"""Reading usage out of upstream responses as they pass (pure, no I/O).

Non-streaming answers carry ``usage`` in their JSON. Streams carry it in a final chunk when the request
asked for ``stream_options.include_usage``; tokenyard asks for it on every stream and, when the client did
not, strips it from what the client receives, whatever chunk carries it. When an upstream sends no usage (or
the client left mid-stream), tokens are estimated locally and the record is marked *estimated*: ~4
characters a prompt token, one completion token per streamed output chunk (as OpenAI-compatible servers
stream). Output is what the user pays for: ``content`` and ``text``, and also reasoning
(``reasoning_content``, ``reasoning``), refusals and tool-call arguments, which count in an upstream's
``completion_tokens`` too.

Each API names its usage its own way, and each is read into one ``Usage``:

- chat and legacy completions, embeddings: ``prompt_tokens`` (with ``prompt_tokens_details.cached_tokens``
  among them), ``completion_tokens`` (with ``completion_tokens_details.reasoning_tokens`` among them);
- Responses: ``input_tokens`` (``input_tokens_details.cached_tokens``), ``output_tokens``
  (``output_tokens_details.reasoning_tokens``); a stream's usage rides in ``response.completed`` (or
  ``response.incomplete`` / ``response.failed``);
- Anthropic Messages: ``input_tokens`` *leaves out* cache reads (``cache_read_input_tokens``) and cache
  writes (``cache_creation_input_tokens``), so the prompt is their sum; a stream's usage opens in
  ``message_start`` and its output count grows in ``message_delta`` (cumulative).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson


@dataclass(slots=True)
class Usage:
    """Tokens one request used. ``cached_tokens`` (read from a prompt cache) and ``cache_write_tokens``
    (written into one) are parts of ``prompt_tokens``; ``reasoning_tokens`` are part of
    ``completion_tokens`` (billed as output)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def parse_usage(obj: Any, api: str = "chat") -> Usage | None:
    """The ``usage`` object of a response or chunk in ``api``'s shape, or None if it has none."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    if api == "messages":
        return _messages_usage(usage)
    if api == "responses":
        return Usage(
            prompt_tokens=_int(usage.get("input_tokens")),
            cached_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
            completion_tokens=_int(usage.get("output_tokens")),
            reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
        )
    # Chat and completions: the hot path, spelled out.
    details, reasoning = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    return Usage(
        _int(usage.get("prompt_tokens")),
        _int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        _int(usage.get("completion_tokens")),
        False,
        0,
        _int(reasoning.get("reasoning_tokens")) if isinstance(reasoning, dict) else 0,
    )


def _messages_usage(usage: dict[str, Any]) -> Usage:
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=_int(usage.get("input_tokens")) + read + written,
        cached_tokens=read,
        completion_tokens=_int(usage.get("output_tokens")),
        cache_write_tokens=written,
    )


def _detail(usage: dict[str, Any], details: str, name: str) -> int:
    inner = usage.get(details)
    return _int(inner.get(name)) if isinstance(inner, dict) else 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of_body(body: bytes, api: str = "chat") -> Usage | None:
    """The usage of a whole (non-streaming) JSON answer in ``api``'s shape."""
    if b'"usage"' not in body:
        return None
    try:
        return parse_usage(orjson.loads(body), api)
    except orjson.JSONDecodeError:
        return None


def estimate_prompt_tokens(request: dict[str, Any]) -> int:
    """A local estimate of a request's prompt tokens (~4 characters a token, at least 1), in any API:
    chat ``messages``, ``prompt``, Responses ``input`` and ``instructions``, Messages ``system``."""
    chars = 0
    for message in request.get("messages") or ():
        if isinstance(message, dict):
            chars += _text_length(message.get("content"))
    for key in ("prompt", "input", "instructions", "system"):
        chars += _text_length(request.get(key))
    return max(1, -(-chars // 4))


def _text_length(value: Any) -> int:
    """Characters of text in a string, or in the parts, blocks or items of a list (nested content too)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(_text_of(part)) for part in value)
    return 0


def _text_of(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    for key in ("text", "content", "output", "arguments"):
        if key in part:
            return part[key]
    return None


def estimate_completion_tokens(body: bytes, api: str = "chat") -> int:
    """A local estimate of the completion tokens of a whole answer without usage (~4 characters a token)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(obj, dict):
        return 0
    if api == "responses":
        chars = _text_length(obj.get("output"))  # message items' text parts, function calls' arguments
    elif api == "messages":
        chars = _text_length(obj.get("content"))
    else:
        chars = 0
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict):
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else choice.get("text")
                chars += _text_length(text)
    return -(-chars // 4)


class Tap(Protocol):
    """Watches a stream being relayed: what to forward now, the usage it carried, whether it ended whole."""

    usage: Usage | None
    content_chunks: int  # output chunks, one completion token each when estimating
    done: bool  # the stream's last event has been passed on: the answer is whole

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk from the upstream; return what to send to the client now (whole events only)."""
        ...

    def rest(self) -> bytes:
        """Whatever partial event is still held when the stream ends."""
        ...


def tap_class(api: str) -> Callable[..., Tap]:
    """The tap for a stream in ``api``, made as ``tap(strip_usage=…)``: chat and legacy completions
    (``data:`` chunks ending ``[DONE]``), Responses or Messages (named events ending in a last typed event).
    Only chat streams carry a usage chunk the client may not have asked for (``strip_usage``)."""
    if api == "responses":
        return ResponsesTap
    if api == "messages":
        return MessagesTap
    return StreamTap


_MAX_HELD = 1 << 20
_EVENT_SEPARATOR = re.compile(rb"(\r?\n\r?\n)")
# An output chunk: a key that carries generated text, with a non-empty string value, however the upstream
# spaces its JSON (llama-cpp-python writes ``"content": "…"``) and in whatever key order. JSON escapes every
# quote inside a string, so ``"content"`` followed by a colon is always a key, never text. One C-level scan,
# no parse: for a one-event read ~9.3k instructions against ~7.7k for the four exact-byte counts it replaces
# (callgrind), a quarter of the time of parsing the event. It costs more per byte than ``bytes.count`` on
# big reads, yet a whole streamed request through the proxy (bench upstream, callgrind) measured 916k
# instructions against 934k before this change (which also stops reading at [DONE]).
_OUTPUT = re.compile(rb'"(content|text|reasoning_content|reasoning|refusal|arguments)"\s*:\s*"(?!")')
_DONE_ENDINGS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n")  # a read holding the last event ends so


class StreamTap:
    """Watches an SSE stream being relayed: keeps its usage, optionally strips the usage chunk.

    ``feed`` returns the bytes to forward now: whole events only (a partial event waits for its end), so
    the usage event can be cut out. Hot path: an event is parsed only if it carries a usage object.
    """

    __slots__ = ("_held", "content_chunks", "done", "strip_usage", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self.content_chunks = 0  # output chunks, one completion token each when estimating
        self.done = False  # ``data: [DONE]`` has been passed on: the stream is complete
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk from the upstream; return what to send to the client now."""
        data = self._held + chunk if self._held else chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")  # _events_end, inline: the hot path
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        if not end:  # no complete event yet
            if len(data) > _MAX_HELD:  # not SSE as we know it: stop waiting for events, pass it on
                self._held = b""
                return data
            self._held = data
            return b""
        complete, self._held = data[:end], data[end:]
        if outputs := _OUTPUT.findall(complete):
            self.content_chunks += len(outputs)
            if b"reasoning" in outputs:  # a list of a key or two: cheap
                # The same reasoning under both names (engines renaming the field send both) counts once.
                self.content_chunks -= min(outputs.count(b"reasoning"), outputs.count(b"reasoning_content"))
        if complete.endswith(_DONE_ENDINGS) and _holds_done(complete):
            self.done = True
        if (at := _usage_at(complete, 0)) >= 0:
            complete = self._take_usage(complete, at)
        return complete

    def rest(self) -> bytes:
        """Whatever partial event is still held when the stream ends."""
        held, self._held = self._held, b""
        return held

    def _take_usage(self, data: bytes, at: int) -> bytes:
        """Read the usage out of the events in ``data`` that carry one (the first at ``at``); strip it if
        the client did not ask.

        Only those events are located and parsed: the rest of ``data`` is passed on as it is.
        """
        kept: list[bytes] = []  # stays empty while nothing changes: then ``data`` itself goes on
        done = 0  # data[:done] is in ``kept`` (once something changed)
        searched = 0  # data[:searched] is decided
        while at >= 0:
            # The event around the marker: after the last separator before it, up to the next one.
            start = max(searched, _after(data, b"\n\n", searched, at), _after(data, b"\n\r\n", searched, at))
            separator = _EVENT_SEPARATOR.search(data, at)
            if separator is None:  # cannot happen: ``feed`` passes whole events only
                break
            event, searched = data[start : separator.start()], separator.end()
            replacement = self._read_usage(event)
            if replacement is not None:  # the event changes (the client did not ask for the usage)
                kept.append(data[done:start])  # everything before it
                if replacement:
                    kept.append(replacement + separator.group())
                done = searched
            at = _usage_at(data, searched)
        if not kept:  # nothing changed (the client asked for the usage): no copy
            return data
        kept.append(data[done:])
        return b"".join(kept)

    def _read_usage(self, event: bytes) -> bytes | None:
        """Keep the usage an event carries; what to send instead of the event (``b""``: nothing), or None
        to send it as it is."""
        if not event.startswith(b"data:"):
            return None
        try:
            obj = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            return None
        usage = parse_usage(obj)
        if usage is None:
            return None
        self.usage = usage
        if not self.strip_usage:
            return None
        # tokenyard asked for the usage on the client's behalf: take it out of whatever chunk carries it
        # (OpenAI: a chunk of its own, with no choices; LiteLLM: one with an empty choice), and drop the
        # chunk if nothing the client needs is left in it.
        del obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list) or not any(_carries_something(choice) for choice in choices):
            return b""
        return b"data: " + orjson.dumps(obj)


def _carries_something(choice: Any) -> bool:
    """Whether a stream chunk's choice holds anything for the client: output, a finish reason, logprobs."""
    if not isinstance(choice, dict):
        return True  # not a shape we know: keep it rather than guess
    for key, value in choice.items():
        if key == "delta":
            if isinstance(value, dict) and any(
                v not in (None, "", [], {}) for k, v in value.items() if k != "role"
            ):
                return True
        elif key != "index" and value not in (None, "", [], {}):
            return True
    return False


def _holds_done(data: bytes) -> bool:
    """Whether whole events ``data`` end with ``data: [DONE]``, the last event of an OpenAI stream."""
    # Found from the end with C-level searches: a regex for it scans every byte of a read.
    at = data.rfind(b"[DONE]")
    if at < 0:
        return False
    line = data[data.rfind(b"\n", 0, at) + 1 : at]
    return (line == b"data: " or line == b"data:") and data.startswith((b"\n", b"\r\n"), at + 6)


def _after(data: bytes, separator: bytes, start: int, end: int) -> int:
    """Just past the last ``separator`` in ``data[start:end]``, or ``start`` if there is none."""
    at = data.rfind(separator, start, end)
    return at + len(separator) if at >= 0 else start


def _usage_at(data: bytes, start: int) -> int:
    """Where the next usage object (``"usage":{`` or ``"usage": {``) starts in ``data`` from ``start``, or
    -1. One scan for the key (a search for each spelling scanned all of a read that has neither, twice);
    a ``"usage":null`` (OpenAI's on every chunk before the last, when usage is asked for) is stepped over."""
    at = data.find(b'"usage":', start)
    while at >= 0:
        value = at + 8
        if data.startswith(b"{", value) or data.startswith(b" {", value):
            return at
        at = data.find(b'"usage":', value)
    return -1


class _NamedEventTap:
    """A tap for streams of named events (Responses, Messages): forwards whole events as they are, counts
    output chunks, and parses only the few events that carry usage or end the stream."""

    __slots__ = ("_held", "content_chunks", "done", "usage")
    # Class constants of each kind of stream (ClassVar: under mypyc, instance attributes may have no class
    # default, and a subclass's must have the very type its base declares).
    _OUTPUT: ClassVar[re.Pattern[bytes]]
    _MARKERS: ClassVar[tuple[bytes, ...]]  # events worth parsing hold one of these

    def __init__(
        self, *, strip_usage: bool = False
    ) -> None:  # nothing to strip: the usage is in the last event
        self.usage: Usage | None = None
        self.content_chunks = 0
        self.done = False
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        end = _events_end(data)
        if not end:
            if len(data) > _MAX_HELD:  # not SSE as we know it: pass it on
                self._held = b""
                return data
            self._held = data
            return b""
        complete, self._held = data[:end], data[end:]
        self.content_chunks += len(self._OUTPUT.findall(complete))
        if any(marker in complete for marker in self._MARKERS):
            for event in _EVENT_SEPARATOR.split(complete)[::2]:
                if any(marker in event for marker in self._MARKERS):
                    self._read(_event_json(event))
        return complete

    def rest(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def _read(self, obj: Any) -> None:
        raise NotImplementedError


class ResponsesTap(_NamedEventTap):
    """The Responses API's stream: usage and the end in ``response.completed`` (or ``.incomplete``,
    ``.failed``), whose ``response`` carries the whole answer."""

    __slots__ = ()
    _OUTPUT = re.compile(rb'"delta"\s*:\s*"(?!")')
    _MARKERS = (b"response.completed", b"response.incomplete", b"response.failed")

    def _read(self, obj: Any) -> None:
        if not isinstance(obj, dict) or obj.get("type") not in _RESPONSES_LAST:
            return
        self.done = True
        usage = parse_usage(obj.get("response"), "responses")
        if usage is not None:
            self.usage = usage


_RESPONSES_LAST = frozenset(("response.completed", "response.incomplete", "response.failed"))


class MessagesTap(_NamedEventTap):
    """Anthropic's Messages stream: usage opens in ``message_start`` (input and cache counts), the output
    count grows in ``message_delta`` (cumulative, and may restate the input counts); ``message_stop`` ends
    it."""

    __slots__ = ()
    _OUTPUT = re.compile(rb'"(text|partial_json|thinking)"\s*:\s*"(?!")')
    _MARKERS = (b"message_start", b"message_delta", b"message_stop")

    def _read(self, obj: Any) -> None:
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "message_stop":
            self.done = True
        elif kind == "message_start":
            self.usage = parse_usage(obj.get("message"), "messages") or self.usage
        elif kind == "message_delta" and isinstance(obj.get("usage"), dict):
            delta: dict[str, Any] = obj["usage"]
            usage = self.usage or Usage()
            usage.completion_tokens = _int(delta.get("output_tokens")) or usage.completion_tokens
            if delta.get("input_tokens") is not None:  # restated at the end: the final counts win
                restated = _messages_usage(delta)
                usage.prompt_tokens, usage.cached_tokens = restated.prompt_tokens, restated.cached_tokens
                usage.cache_write_tokens = restated.cache_write_tokens
            self.usage = usage


def _events_end(data: bytes) -> int:
    """Just past the last whole event in ``data`` (0: none is whole yet)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _event_json(event: bytes) -> Any:
    """The JSON of an event's ``data:`` line (None if it has none, or it is not JSON)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                return orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
    return None
