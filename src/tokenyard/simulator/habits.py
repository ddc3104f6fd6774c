"""Habits of real OpenAI-compatible servers the simulator can put on (opt-in, set with its faults).

Engines nobody here wrote answer in ways OpenAI does not: llama-cpp-python writes JSON with spaces and sends
no usage in streams, LiteLLM's proxy puts an empty choice in its usage chunk, servers keep a stream open
after ``data: [DONE]``. They are applied to the simulator's answers as they are sent, so the generation code
knows nothing of them: each body is re-serialised only while a habit is on (the default path is untouched).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from tokenyard.simulator.clock import Clock
from tokenyard.simulator.config import FaultConfig
from tokenyard.simulator.shapes import SSE_HEADERS
from tokenyard.wire.asgi import Message, Send
from tokenyard.wire.sse import EVENT_END, SSE_DONE, sse_data


def with_habits(send: Send, faults: FaultConfig, clock: Clock) -> Send:
    """``send``, answering with the habits ``faults`` turns on (``send`` itself when none is)."""
    if (
        faults.json_style == "compact"
        and not faults.usage_chunk_with_choice
        and not faults.no_usage
        and faults.linger_after_done_s is None
    ):
        return send
    return _HabitualSend(send, faults, clock)


class _HabitualSend:
    """An ASGI ``send`` that rewrites an answer's body as a server with these habits would write it."""

    __slots__ = ("_clock", "_faults", "_send", "_stream")

    def __init__(self, send: Send, faults: FaultConfig, clock: Clock) -> None:
        self._send = send
        self._faults = faults
        self._clock = clock
        self._stream = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", ())
            self._stream = (b"content-type", SSE_HEADERS[0][1]) in headers
            # A body written in another style has another length: the server counts it (chunked) instead.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
            await self._send({**message, "headers": headers})
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        body = self._stream_body(body) if self._stream else self._whole_body(body)
        linger_s = self._faults.linger_after_done_s
        if self._stream and not more_body and linger_s is not None and body.endswith(SSE_DONE):
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
            await self._clock.sleep(linger_s)
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._send({"type": "http.response.body", "body": body, "more_body": more_body})

    def _whole_body(self, body: bytes) -> bytes:
        if self._faults.json_style == "compact" or not body:
            return body
        return self._dumps(orjson.loads(body))

    def _stream_body(self, body: bytes) -> bytes:
        frames: list[bytes] = []
        for frame in body.split(EVENT_END):
            if not frame.startswith(b"data: {"):
                if frame:
                    frames.append(frame + EVENT_END)
                continue
            chunk = orjson.loads(frame[6:])
            if self._faults.no_usage:
                if chunk.pop("usage", None) is not None and not chunk.get("choices"):
                    continue  # the usage-only chunk: never sent
            elif self._faults.usage_chunk_with_choice and chunk.get("usage") and chunk.get("choices") == []:
                chunk["choices"] = [{"index": 0, "delta": {}}]
            frames.append(sse_data(self._dumps(chunk)))
        return b"".join(frames)

    def _dumps(self, payload: Any) -> bytes:
        if self._faults.json_style == "spaced":
            return json.dumps(payload).encode()  # json.dumps' own separators: ", " and ": "
        return orjson.dumps(payload)
