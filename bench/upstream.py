"""A fixed-response OpenAI-compatible upstream on raw asyncio: never the bottleneck of a benchmark.

Over keep-alive HTTP/1.1 it answers every POST with the same chat completion, or, when the body asks for
``"stream": true``, the same SSE stream (role, three content chunks, finish, a usage chunk, ``[DONE]``).
It parses only what it must (the request line, Content-Length and that one flag), so one core serves far
more than the proxy can send it. Two path prefixes change the timing, so one server and a proxy
``base_url`` select the variant:

- ``/slow20/...`` answers after 20 ms (the added-latency scenario);
- ``/drip/S/...`` streams one content chunk a second for S seconds (held-open streams).

    python -m bench.upstream --port 9101
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

_USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    }
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(COMPLETION)).encode()
    + b"\r\n\r\n"
    + COMPLETION
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _event(delta: dict[str, str], finish: str | None = None, usage: bool = False) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = _USAGE
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# The stream's events, unframed (bench.nginx_upstream serves the same ones).
ROLE_EVENT = _event({"role": "assistant", "content": ""})
CONTENT_EVENT = _event({"content": "Hello "})
END_EVENTS = _event({}, finish="stop") + _event({}, usage=True) + b"data: [DONE]\n\n"
ROLE = _chunked(ROLE_EVENT)
CONTENT = _chunked(CONTENT_EVENT)
FINISH_AND_USAGE = _chunked(END_EVENTS) + b"0\r\n\r\n"
# The whole fast stream in one write, as a static-file server would send it.
STREAM = STREAM_HEAD + ROLE + CONTENT * 3 + FINISH_AND_USAGE


class FixedResponse(asyncio.Protocol):
    """Answers each complete request on the connection, in order."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed answer is pending: later requests wait for it (no reordering)
        self.drip: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._answer_buffered()

    def _answer_buffered(self) -> None:
        while not self.busy and self.transport is not None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end > 0 else None])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            path = head[: head.find(b"\r\n")].split(b" ")[1]
            body = self.buffer[head_end + 4 : end]
            self.buffer = self.buffer[end:]
            stream = b'"stream":true' in body or b'"stream": true' in body
            if path.startswith(b"/slow20/"):
                self._later(0.02, STREAM if stream else RESPONSE)
            elif path.startswith(b"/drip/"):
                self.drip = asyncio.ensure_future(self._drip(int(path.split(b"/")[2])))
            else:
                self.transport.write(STREAM if stream else RESPONSE)

    def _later(self, delay_s: float, answer: bytes) -> None:
        self.busy = True

        def write() -> None:
            self.busy = False
            if self.transport is not None:
                self.transport.write(answer)
                self._answer_buffered()

        asyncio.get_running_loop().call_later(delay_s, write)

    async def _drip(self, seconds: int) -> None:
        self.busy = True
        try:
            for part in (STREAM_HEAD + ROLE, *[CONTENT] * seconds):
                if self.transport is None:
                    return
                self.transport.write(part)
                await asyncio.sleep(1)
            if self.transport is not None:
                self.transport.write(FINISH_AND_USAGE)
        finally:
            self.busy = False
        self._answer_buffered()


async def serve(host: str, port: int) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedResponse, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
