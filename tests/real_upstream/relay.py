"""A recording HTTP/1.1 relay: sits between tokenyard and a real upstream and keeps what the upstream sent.

Bytes pass both ways unchanged, as they arrive (a stream stays a stream); beside that, each direction is
parsed with httptools so every request/response pair on a connection is recorded: the request body, the
response's status, headers and de-chunked body, and whether the response ended cleanly. Tests compare
tokenyard's meter with *this* record of what the upstream really said, not with what the upstream is
documented to say.

The relay runs as a process of its own (``python -m tests.real_upstream.relay``), like a real load balancer:
inside the test's process it would pass an upstream's close on only when the test's own code let it run,
milliseconds late, and tokenyard would reuse connections the upstream had already closed (llama-server closes
its connection after every stream). It appends each exchange to a JSON-lines file as soon as the upstream's
answer is complete or cut, and takes commands on its standard input, one JSON object a line, answering
``ok`` on its standard output once a command is in force:

- ``{"kill_after_chunks": N, "kill_pgid": PGID}``: right after forwarding the event that carries the Nth
  content chunk of an answer, SIGKILL the upstream's process group and relay nothing more of that answer (what
  the dying server still had in flight never arrives), as if the upstream died right there;
- ``{"hold_after_done": true}``: hold whatever follows a ``data: [DONE]`` event (the end of the chunked body)
  until ``{"release": true}``: an upstream that has not closed its answer when the client has all it needs;
- ``{"late_close": true}``: when the upstream closes its connection after a whole answer, pass the close on
  only when the client sends its next request on it (which then gets no answer): a relay slow to notice.

Nothing is timed: the points are counts and the test's own commands.

The relay runs in a thread of its own, so its hooks run there too. ``after_forward`` lets a test act at
an exact point of a stream without timing anything: while it is set, answers are forwarded event by event
and it is called after each; returning True cuts the relay there, as if the upstream died right after that
event (a test kills the real upstream in the same call). ``hold_after_done`` (a ``threading.Event``) holds
whatever follows a ``data: [DONE]`` event (the end of the chunked body) until the test sets it: an upstream
that has not closed its answer yet when the client has all it needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

from tests.support.net import free_port
from tests.support.polling import eventually


@dataclass
class Relayed:
    """One request as the upstream received it and the answer as the upstream sent it."""

    method: str = ""
    path: str = ""
    request_body: bytes = b""
    request_headers: dict[str, str] = field(default_factory=dict)  # as tokenyard sent them (names lowered)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # the response's
    body: bytes = b""  # de-chunked
    complete: bool = False  # the upstream finished the response message (not cut off)
    upstream_closed: bool = False  # the upstream's side of the connection ended (EOF or reset)

    def to_line(self) -> bytes:
        """The exchange as one JSON line (bodies in base64)."""
        obj = {k: v for k, v in self.__dict__.items() if not isinstance(v, bytes)}
        obj.update(
            {k: base64.b64encode(v).decode() for k, v in self.__dict__.items() if isinstance(v, bytes)}
        )
        return json.dumps(obj).encode() + b"\n"

    @classmethod
    def from_line(cls, line: str) -> Relayed:
        """The inverse of ``to_line``."""
        obj = json.loads(line)
        for name in ("request_body", "body"):
            obj[name] = base64.b64decode(obj[name])
        return cls(**obj)

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

    def __init__(self, pending: list[Relayed]) -> None:
        self.pending = pending
        self.current: Relayed | None = None
        self.url = b""
        self.began = asyncio.Event()  # set when a request starts

    def on_message_begin(self) -> None:
        self.current, self.url = Relayed(), b""
        self.pending.append(self.current)
        self.began.set()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.request_headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.path = self.url.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.request_body += body


class _ResponseSide:
    """httptools callbacks for the upstream → client direction: fills the oldest unanswered ``Relayed``."""

    def __init__(self, pending: list[Relayed], server: RelayServer) -> None:
        self.pending, self.server = pending, server
        self.current: Relayed | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.content_chunks = 0  # of the current answer: counted as it passes, for kill_after_chunks

    def on_message_begin(self) -> None:
        self.current = self.pending.pop(0) if self.pending else Relayed()
        self.content_chunks = 0

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
        self.server.record(self.current)

    def finish(self, *, upstream_closed: bool) -> None:
        """The connection ended: record an answer that was cut (a complete one is recorded already)."""
        if self.current is not None and not self.current.complete:
            self.current.upstream_closed = upstream_closed
            self.server.record(self.current)
            self.current = None
        while self.pending:  # asked, never answered
            unanswered = self.pending.pop(0)
            unanswered.upstream_closed = upstream_closed
            self.server.record(unanswered)


class RelayServer:
    """The relay itself (runs in the relay process): serves until its standard input closes."""

    def __init__(self, port: int, upstream_port: int, record_path: str) -> None:
        self.port, self.upstream_port = port, upstream_port
        self.records = open(record_path, "ab")  # noqa: SIM115 (open for the life of the process)
        self.kill_after_chunks: int | None = None
        self.kill_pgid: int | None = None
        self.hold_after_done = False
        self.released = asyncio.Event()
        self.late_close = False

    def record(self, exchange: Relayed) -> None:
        """Append one exchange to the record file (flushed: the test reads it while the relay runs)."""
        self.records.write(exchange.to_line())
        self.records.flush()

    async def run(self) -> None:
        """Serve, obeying commands from standard input, until it closes."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
        print("ready", flush=True)
        async with server:
            while line := await commands.readline():
                self._obey(json.loads(line))
                print("ok", flush=True)

    def _obey(self, command: dict[str, Any]) -> None:
        if "kill_after_chunks" in command:
            self.kill_after_chunks, self.kill_pgid = command["kill_after_chunks"], command.get("kill_pgid")
        if "hold_after_done" in command:
            self.hold_after_done = bool(command["hold_after_done"])
            self.released.clear()
        if command.get("release"):
            self.released.set()
        if "late_close" in command:
            self.late_close = bool(command["late_close"])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()  # the upstream is down: the client sees its connection closed, as directly
            return
        pending: list[Relayed] = []
        requests = _RequestSide(pending)
        responses = _ResponseSide(pending, self)
        responses.parser = httptools.HttpResponseParser(responses)
        to_upstream = asyncio.create_task(
            self._pump(client_r, up_w, httptools.HttpRequestParser(requests), None)
        )
        to_client = asyncio.create_task(self._pump(up_r, client_w, responses.parser, responses))
        try:
            done, _ = await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
            if self.late_close and to_client in done and not pending:
                # The upstream closed after a whole answer; pass the close on only once the client has sent
                # its next request on this connection (a relay that is slow to notice, made certain).
                requests.began.clear()
                began = asyncio.ensure_future(requests.began.wait())
                await asyncio.wait((to_upstream, began), return_when=asyncio.FIRST_COMPLETED)
                began.cancel()
        finally:
            for pump in (to_upstream, to_client):
                pump.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            responses.finish(upstream_closed=to_client in done)
            up_w.close()
            client_w.close()

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
            by_event = responses is not None and (self.kill_after_chunks is not None or self.hold_after_done)
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
                if responses is not None and by_event and await self._after(piece, responses):
                    return  # cut here: the rest never reaches the client

    async def _after(self, piece: bytes, responses: _ResponseSide) -> bool:
        """Act on what was just forwarded; True to cut the answer here."""
        if self.kill_after_chunks is not None and responses.current is not None:
            responses.content_chunks += sum(
                1 for e in _piece_events(piece) for c in _choices(e) if _content(c)
            )
            if responses.content_chunks >= self.kill_after_chunks:
                if self.kill_pgid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.kill_pgid, signal.SIGKILL)
                return True
        if self.hold_after_done and piece.endswith(b"[DONE]\n\n"):
            await self.released.wait()
        return False


def _piece_events(piece: bytes) -> Iterator[dict[str, Any]]:
    """The JSON events of one forwarded piece."""
    for line in piece.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line[5:])
                if isinstance(obj, dict):
                    yield obj


class Relay:
    """The test's handle on a relay process to ``upstream_port``: its address, its record, its commands."""

    def __init__(self, upstream_port: int, folder: Path) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.record_path = folder / f"relay-{self.port}.jsonl"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL of the upstream, through the relay."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> Relay:
        self.record_path.touch()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.real_upstream.relay",
            str(self.port),
            str(self.upstream_port),
            str(self.record_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent.parent,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line == b"ready\n", f"the relay did not start: {line!r}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the relay ends when its commands end
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def command(self, **command: Any) -> None:
        """Send the relay a command and wait until it is in force."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        assert await asyncio.wait_for(self.proc.stdout.readline(), 60) == b"ok\n"

    def exchanges(self) -> list[Relayed]:
        """Every exchange recorded so far."""
        return [Relayed.from_line(line) for line in self.record_path.read_text().splitlines() if line]

    async def find(self, marker: str, timeout_s: float = 20) -> Relayed:
        """The one exchange whose request carried ``marker`` (tests put a unique one in each request) and
        that the upstream answered: a request tokenyard sent on a connection the upstream had already
        closed is recorded too, unanswered (status 0), and sent again.

        Waits for it to be recorded: an answer is recorded when it is complete or cut, which the client may
        learn of first.
        """
        found: list[Relayed] = []

        async def recorded() -> None:
            found[:] = [x for x in self.exchanges() if marker.encode() in x.request_body and x.status]
            assert found, f"no answered upstream request carrying {marker!r} recorded yet"

        await eventually(recorded, timeout_s=timeout_s)
        assert len(found) == 1, f"{len(found)} answered upstream requests carry {marker!r}"
        return found[0]


def main() -> None:
    """``python -m tests.real_upstream.relay PORT UPSTREAM_PORT RECORD_FILE``."""
    port, upstream_port, record_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    asyncio.run(RelayServer(port, upstream_port, record_path).run())


def _events(data: bytes) -> list[bytes]:
    """``data`` split just after each blank line (SSE event end), so each event can be forwarded alone."""
    pieces, start = [], 0
    while (end := data.find(b"\n\n", start)) >= 0:
        pieces.append(data[start : end + 2])
        start = end + 2
    if start < len(data):
        pieces.append(data[start:])
    return pieces


if __name__ == "__main__":
    main()
