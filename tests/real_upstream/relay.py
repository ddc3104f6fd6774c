"""A recording HTTP/1.1 relay: sits between tokenyard and a real upstream and keeps what the upstream sent.

Bytes pass both ways unchanged, as they arrive (a stream stays a stream); beside that, each direction is
parsed with httptools so every request/response pair on a connection is recorded: the request body, the
response's status, headers and de-chunked body, and whether the response ended cleanly. Tests compare
tokenyard's meter with *this* record of what the upstream really said, not with what the upstream is
documented to say.

The relay runs in a thread of its own, so its hooks run there too. ``after_forward`` lets a test act at
an exact point of a stream without timing anything: while it is set, answers are forwarded event by event
and it is called after each; returning True cuts the relay there, as if the upstream died right after that
event (a test kills the real upstream in the same call). ``hold_after_done`` (a ``threading.Event``) holds
whatever follows a ``data: [DONE]`` event (the end of the chunked body) until the test sets it: an upstream
that has not closed its answer yet when the client has all it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from tests.harness import free_port


@dataclass
class Relayed:
    """One request as the upstream received it and the answer as the upstream sent it."""

    method: str = ""
    path: str = ""
    request_body: bytes = b""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # de-chunked
    complete: bool = False  # the upstream finished the response message (not cut off)
    upstream_closed: bool = False  # the upstream's side of the connection ended (EOF or reset)

    def request_json(self) -> dict[str, Any]:
        """The request body tokenyard forwarded, parsed."""
        obj: dict[str, Any] = json.loads(self.request_body)
        return obj

    @property
    def streamed(self) -> bool:
        """Whether the upstream answered with server-sent events."""
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def events(self) -> list[dict[str, Any]]:
        """The JSON ``data:`` events of a streamed answer, in order (``[DONE]`` and non-JSON left out)."""
        out = []
        for line in self.body.decode("utf-8", "replace").splitlines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                with contextlib.suppress(ValueError):
                    obj = json.loads(line[5:])
                    if isinstance(obj, dict):
                        out.append(obj)
        return out

    def saw_done(self) -> bool:
        """Whether a streamed answer ended with ``data: [DONE]``."""
        return any(
            line.strip() == "data: [DONE]" for line in self.body.decode("utf-8", "replace").splitlines()
        )

    def usage(self) -> dict[str, Any] | None:
        """The (last) usage object the upstream reported, streamed or not; None if it sent none."""
        if self.streamed:
            found = [event["usage"] for event in self.events() if isinstance(event.get("usage"), dict)]
            return found[-1] if found else None
        try:
            usage = json.loads(self.body).get("usage")
        except (ValueError, AttributeError):
            return None
        return usage if isinstance(usage, dict) else None

    def content_chunks(self) -> int:
        """How many streamed events carried content (chat ``delta.content`` or completion ``text``)."""
        return sum(1 for event in self.events() for choice in _choices(event) if _content(choice))

    def finish_reasons(self) -> list[str]:
        """The ``finish_reason`` values a streamed answer carried (or a whole answer's), in order."""
        events = self.events() if self.streamed else [json.loads(self.body)]
        return [c["finish_reason"] for e in events for c in _choices(e) if c.get("finish_reason")]

    def text(self) -> str:
        """The content the upstream produced (streamed chunks joined, or the whole answer's first choice)."""
        if self.streamed:
            return "".join(_content(choice) for event in self.events() for choice in _choices(event))
        choice = _choices(json.loads(self.body))[0]
        message = choice.get("message")
        return (
            str(message.get("content") or "") if isinstance(message, dict) else str(choice.get("text") or "")
        )


def _choices(obj: dict[str, Any]) -> list[dict[str, Any]]:
    choices = obj.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _content(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    value = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return value if isinstance(value, str) else ""


class _RequestSide:
    """httptools callbacks for the client → upstream direction: one ``Relayed`` per request."""

    def __init__(self, relay: Relay, pending: list[Relayed]) -> None:
        self.relay, self.pending = relay, pending
        self.current: Relayed | None = None
        self.url = b""

    def on_message_begin(self) -> None:
        self.current, self.url = Relayed(), b""
        self.relay.exchanges.append(self.current)
        self.pending.append(self.current)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.path = self.url.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.request_body += body


class _ResponseSide:
    """httptools callbacks for the upstream → client direction: fills the oldest unanswered ``Relayed``."""

    def __init__(self, pending: list[Relayed]) -> None:
        self.pending = pending
        self.current: Relayed | None = None
        self.header = b""
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.current = self.pending.pop(0) if self.pending else Relayed()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.current is not None
        assert self.parser is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True


class Relay:
    """A loopback TCP relay to ``upstream_port`` that records every exchange passing through it."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.port = free_port()
        self.exchanges: list[Relayed] = []
        self.after_forward: Callable[[Relayed], bool] | None = None
        self.hold_after_done: threading.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL of the upstream, through the relay."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> Relay:
        # The relay runs its own event loop in a thread of its own: in the test's loop it would pass an
        # upstream's close on only once the test's client code yields, milliseconds late, and tokenyard would
        # reuse connections the upstream had already closed (llama-server closes after every stream).
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"relay-{self.port}", daemon=True
        )
        self._thread.start()
        await asyncio.to_thread(started.wait, 30)
        assert self._server is not None, "the relay did not start"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 30)

    def _run(self, started: threading.Event) -> None:
        """The relay thread: serve until stopped, then close every connection."""
        assert self._loop is not None
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        started.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

    def find(self, marker: str) -> Relayed:
        """The one exchange whose request carried ``marker`` (tests put a unique one in each request)."""
        found = [x for x in self.exchanges if marker.encode() in x.request_body]
        assert len(found) == 1, f"{len(found)} upstream requests carry {marker!r}"
        return found[0]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(client_r, client_w)
        except asyncio.CancelledError:
            pass  # the relay is closing; ending quietly keeps asyncio's stream callback from logging it
        finally:
            client_w.close()
            self._tasks.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """Relay one client connection to a new upstream connection until either side ends."""
        try:
            up_r, up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            return  # the upstream is down: the client sees its connection closed, as it would directly
        pending: list[Relayed] = []
        request_side = _RequestSide(self, pending)
        response_side = _ResponseSide(pending)
        request_parser = httptools.HttpRequestParser(request_side)
        response_parser = httptools.HttpResponseParser(response_side)
        response_side.parser = response_parser
        to_upstream = asyncio.create_task(self._pump(client_r, up_w, request_parser, None))
        to_client = asyncio.create_task(self._pump(up_r, client_w, response_parser, response_side))
        try:
            done, _ = await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
            if to_client in done and response_side.current is not None:
                response_side.current.upstream_closed = True
        finally:
            for pump in (to_upstream, to_client):
                pump.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            up_w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        responses: _ResponseSide | None,
    ) -> None:
        """Copy one direction until EOF, parsing (never altering) what passes."""
        parsing = True
        while True:
            try:
                data = await reader.read(65536)
            except OSError:  # reset: the peer died
                return
            if not data:
                return
            by_event = responses is not None and (self.after_forward or self.hold_after_done) is not None
            for piece in _events(data) if by_event else (data,):
                if parsing:
                    try:
                        parser.feed_data(piece)
                    except httptools.HttpParserError:
                        parsing = False  # not HTTP as we know it: keep relaying, stop recording
                try:
                    writer.write(piece)
                    await writer.drain()
                except OSError:
                    return
                hook = self.after_forward
                if (
                    responses is not None
                    and responses.current is not None
                    and hook
                    and hook(responses.current)
                ):
                    return  # cut here: the rest never reaches the client, and is not recorded
                if (
                    responses is not None
                    and self.hold_after_done is not None
                    and piece.endswith(b"[DONE]\n\n")
                ):
                    await self.hold_after_done.wait()


def _events(data: bytes) -> list[bytes]:
    """``data`` split just after each blank line (SSE event end), so each event can be forwarded alone."""
    pieces, start = [], 0
    while (end := data.find(b"\n\n", start)) >= 0:
        pieces.append(data[start : end + 2])
        start = end + 2
    if start < len(data):
        pieces.append(data[start:])
    return pieces
