"""The inference path's upstream: OpenAI-compatible engines and APIs, Anthropic's and Azure OpenAI's, over
``http1.py``'s pooled HTTP/1.1 client.

The provider decides, once, at construction, which header carries the key and how a path becomes a URL
(``providers.py``); an OpenAI-provider ``post`` costs what it did before there were other providers.

Why not aiohttp (the client here until issue 19): on this machine it was two thirds of a bare
pass-through's CPU a request; over ``http1.py`` tokenyard needs ~0.6 of the CPU a whole answer it needed
over aiohttp (``bench/README.md``). Before that, aiohttp had beaten httpx ~20 to 1 (encode/httpx#3215). The
client stays private to this module behind ``adapters.base.Upstream``.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlsplit

from tokenyard import __version__
from tokenyard.adapters.deadlines import Deadlines, Wait
from tokenyard.adapters.http1 import Http1Connection, Http1Pool, default_tls
from tokenyard.adapters.providers import AzureTarget, Provider, auth_headers, url_for
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStreamBroken, UpstreamTimeout

_MAX_RETRY_AFTER_S = 86_400.0
_RESENDS_ON_CLOSED_CONNECTION = 2
# What a request target may hold as it is (RFC 3986's path and query characters, and '%' of an escape);
# anything else (a space, a CR or LF, a non-ASCII letter of an id a client chose) is percent-encoded.
_UNSAFE_TARGET = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_SAFE_IN_TARGET = "-._~!$&'()*+,;=:@/?%"
_LINE_BREAK = re.compile(r"[\r\n\0]")
_NO_BODY_METHODS = frozenset({"GET", "DELETE"})


def parse_retry_after(
    value: str | None, value_ms: str | None = None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or OpenAI's ``retry-after-ms``,
    at most a day: an upstream's ``inf`` or a date years ahead must not take a backend out for good."""
    seconds = _retry_after(value, value_ms, now)
    if seconds is None:
        return None
    return min(seconds, _MAX_RETRY_AFTER_S) if math.isfinite(seconds) else _MAX_RETRY_AFTER_S


def _retry_after(value: str | None, value_ms: str | None, now: float | None) -> float | None:
    if value_ms:
        try:
            return max(0.0, float(value_ms) / 1000)
        except ValueError:
            pass
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Http1Response:
    """``UpstreamResponse`` over the connection its head arrived on."""

    __slots__ = (
        "_conn",
        "_finished",
        "_idle_s",
        "_reading",
        "_wait",
        "content_type",
        "retry_after_s",
        "status",
    )

    def __init__(self, conn: Http1Connection, wait: Wait, idle_s: float) -> None:
        self._conn = conn
        self._finished = False  # the connection went back to the pool or was closed: never twice
        self._wait = wait  # the head's wait, whose deadline is the first byte's: the body's waits reuse it
        self._idle_s = idle_s
        self._reading = False  # a chunk has been read
        self.status = status = conn.status
        headers = conn.headers
        content_type = headers.get(b"content-type")
        self.content_type = "application/json" if content_type is None else content_type.decode("latin-1")
        self.retry_after_s = _retry_after_of(headers) if status == 429 or status == 503 else None

    async def read(self) -> bytes:
        conn = self._conn
        try:
            if conn.done:  # the whole body came with the head (a small answer): no wait
                return conn.take()
            return await conn.rest(self._gap)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no data from the upstream for {self._idle_s:g} s") from exc
        except ConnectionError as exc:
            raise UpstreamStreamBroken(f"the upstream's answer broke off: {exc}") from exc
        finally:
            self.close()

    async def _gap(self) -> None:
        """Wait for the body's next bytes, ``idle_s`` at most (a gap, not the whole body)."""
        wait = self._wait
        wait.due_in(self._idle_s)
        with wait:
            await self._conn.wait()

    async def next_chunk(self) -> bytes:
        # A method, not an async generator: nothing to close, and no generator machinery each chunk.
        if self._finished:  # let go or closed: the connection may be carrying another request's answer
            return b""
        conn = self._conn
        if not conn.parts and not conn.done:
            wait = self._wait
            if self._reading:  # the first chunk is still within the first-byte budget; each later one idle_s
                wait.due_in(self._idle_s)
            try:
                with wait:
                    while not conn.parts and not conn.done:
                        if conn.closed:
                            raise UpstreamStreamBroken(
                                f"the upstream's stream broke off: {conn.why_broken()}"
                            )
                        await conn.wait()
            except TimeoutError as exc:
                raise UpstreamTimeout("the upstream stream went silent") from exc
        self._reading = True
        if conn.parts:
            return conn.take()
        self.close()  # the end: the connection goes back to the pool
        return b""

    def close(self) -> None:
        # An unfinished body drops the connection, so the upstream stops work.
        if not self._finished:
            self._finished = True
            self._conn.finish()

    def release_when_done(self, grace_s: float) -> None:
        # The connection goes back to the pool when the body's end arrives, unread; dropped if it has not
        # within grace_s (until then it holds a pool slot, so the wait is bounded).
        conn = self._conn
        if self._finished:
            return
        if conn.done or conn.closed:
            self.close()
            return
        conn.drain()
        conn.after_end = self.close
        asyncio.get_running_loop().call_later(grace_s, self.close)


def _retry_after_of(headers: dict[bytes, bytes]) -> float | None:
    after, after_ms = headers.get(b"retry-after"), headers.get(b"retry-after-ms")
    return parse_retry_after(
        None if after is None else after.decode("latin-1"),
        None if after_ms is None else after_ms.decode("latin-1"),
    )


def session_headers(provider: Provider, api_key: str | None) -> dict[str, str]:
    """The headers every request to an upstream carries: JSON, no compression, tokenyard's User-Agent and
    the provider's key header."""
    return {
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",  # the body is relayed and, later, parsed: no gzip round trip
        "User-Agent": f"tokenyard/{__version__}",
        **auth_headers(provider, api_key),
    }


class OpenAIHttpUpstream:
    """A pooled client for one upstream: an OpenAI-compatible base URL (``https://host/v1``), Anthropic's
    (``https://api.anthropic.com/v1``) or an Azure OpenAI resource (``https://res.openai.azure.com``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        connect_s: float,
        first_byte_s: float,
        idle_s: float,
        max_connections: int,
        provider: Provider = "openai",
        azure: AzureTarget | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        # None: the target is the base URL's path + path, concatenated inline on the hot path (no call).
        self._url = url_for(provider, self._base_url, azure) if provider == "azure" else None
        parts = urlsplit(self._base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream's base URL must be http:// or https:// with a host")
        self._prefix = parts.path
        tls = default_tls() if parts.scheme == "https" else None
        host = parts.hostname
        port = parts.port or (443 if tls is not None else 80)
        self._first_byte_s = first_byte_s
        self._idle_s = idle_s
        self._pool = Http1Pool(host, port, tls, connect_s=connect_s, max_connections=max_connections)
        named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
        fixed = {
            "Host": named if parts.port is None else f"{named}:{port}",
            **session_headers(provider, api_key),
        }
        self._fixed = _header_lines(fixed.items())
        self._deadlines = Deadlines(asyncio.get_running_loop())

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> Http1Response:
        return await self.request("POST", path, body, headers)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Http1Response:
        """Any method on ``path`` (an inference ``POST``, a stored object's ``GET``, ``DELETE``, a ``POST``
        …/cancel): the same URL, auth, timeouts and errors as ``post``.

        Sent again when the pooled connection it went out on was closed before any byte of an answer, or
        answered 408 (timed out idle). Upstreams close pooled connections under us: llama-server closes
        after every streamed answer while saying keep-alive, and any server closes an idle one at its own
        keep-alive timeout. A close that arrives as the connection is reused fails the request before the
        upstream read it. An inference POST changes no state upstream, and a connection closed with no
        answer means the request was not served, so it goes again, at most twice (the pool may hold more
        than one dead connection); a new connection closed so is the upstream's failure, and is not.
        """
        if method == "HEAD":  # its answer's length describes a body that never comes: nothing here asks it
            raise ValueError("HEAD is not supported by the upstream client")
        message = self._message(method, path, body, headers)
        deadlines = self._deadlines
        wait = deadlines.wait(deadlines.time() + self._first_byte_s)
        resends_left = _RESENDS_ON_CLOSED_CONNECTION
        pool = self._pool
        while True:
            conn: Http1Connection | None = None
            try:
                with wait:
                    conn = await pool.acquire()
                    conn.send(message)
                    while not conn.head_done:
                        if conn.closed:
                            break
                        await conn.wait()
            except TimeoutError as exc:
                if conn is not None:
                    conn.finish()
                raise UpstreamTimeout(f"no response head within {self._first_byte_s:g} s") from exc
            except BaseException:
                if conn is not None:
                    conn.finish()  # a client that left: drop the request, so the upstream stops
                raise
            if conn.head_done and (conn.status != 408 or not conn.reused or not resends_left):
                return Http1Response(conn, wait, self._idle_s)
            _drop_for_resend(conn, resends_left)
            resends_left -= 1

    def _message(self, method: str, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """The request's bytes: its line, the fixed headers, ``headers``, the body's length and the body."""
        if self._url is None:
            target = self._prefix + path
        else:
            url = urlsplit(self._url(path))
            target = url.path + (f"?{url.query}" if url.query else "")
        if _UNSAFE_TARGET.search(target) is not None:
            target = quote(target, safe=_SAFE_IN_TARGET)
        extra = _header_lines(headers) if headers else b""
        length = b"" if not body and method in _NO_BODY_METHODS else b"Content-Length: %d\r\n" % len(body)
        return b"%s %s HTTP/1.1\r\n%s%s%s\r\n%s" % (
            method.encode("ascii"),
            target.encode("ascii"),
            self._fixed,
            extra,
            length,
            body,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _drop_for_resend(conn: Http1Connection, resends_left: int) -> None:
    """Close ``conn``, on which a request got no answer; raise unless the request may go again: the
    connection was reused, and closed before any byte of an answer, or answered 408 (the upstream timed it
    out idle as the request went out: a server's way of closing it; Go's client resends on it too)."""
    conn.keep_alive = False
    conn.finish()
    if conn.head_done:  # a reused connection's 408, with resends left
        return
    if conn.broken:
        raise UpstreamError(f"the upstream request failed: {conn.why_broken()}")
    if not conn.reused or conn.got_bytes or not resends_left:
        raise UpstreamConnectError(f"cannot reach the upstream: {conn.why_broken()}")


def _header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """``name: value`` lines; a CR, LF or NUL in either would end the header early (an injected header, a
    smuggled request), so it is refused."""
    lines = []
    for name, value in headers:
        if _LINE_BREAK.search(name) is not None or _LINE_BREAK.search(value) is not None:
            raise ValueError(f"header {name!r} holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError("a header holds a character outside Latin-1 (percent-encode it)") from exc
