"""tokenyard over the least an HTTP/1.1 client can be: issue 19 part 3, what the client costs tokenyard.

``bench.ceiling``'s ``raw`` client (asyncio, httptools' response parser, a pool of keep-alive connections)
took two thirds of aiohttp's CPU a whole answer, and half its memory a held stream, as the bare
pass-through's client. This is tokenyard's ``adapters.base.Upstream`` over the same kind of connection, so
that tokenyard itself is measured over it:

    python -m bench.raw_upstream serve --config tokenyard.yaml   # tokenyard serve, over this client
    python -m bench.speed --client raw --baseline /tmp/same-commit/src  # side by side with aiohttp

It keeps the adapter's contract where the measurement depends on it: the first-byte and idle deadlines on
tokenyard's one timer, an unfinished body's connection dropped (so the upstream stops), a request resent
when its pooled connection was closed before any answer, Retry-After, reading paused while
a stream's chunks wait, and tokenyard's error types. It is not a client to ship: plain HTTP and TLS only (no
proxies, no decompression, no 1xx or bodies that end at a close, no bound on the pool, no bound on a
response head).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from bench.raw_http import RawConnection
from tokenyard.adapters.deadlines import Deadlines, Wait
from tokenyard.adapters.openai_http import _LOCAL_ERRNOS as LOCAL_ERRNOS
from tokenyard.adapters.openai_http import parse_retry_after, session_headers
from tokenyard.adapters.providers import AzureTarget, Provider, url_for
from tokenyard.errors import ProxyOverloaded, UpstreamConnectError, UpstreamStreamBroken, UpstreamTimeout

_RESENDS = 2


class _Closed(Exception):
    """The connection closed before the answer's head."""


class RawResponse:
    """``UpstreamResponse`` over a ``RawConnection``."""

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

    def __init__(self, conn: RawConnection, wait: Wait, idle_s: float) -> None:
        self._conn = conn
        self._finished = False  # the connection went back to the pool or was closed: never twice
        self._wait = wait
        self._idle_s = idle_s
        self._reading = False
        self.status = conn.status
        headers = conn.headers
        self.content_type = headers.get(b"content-type", b"application/json").decode("latin-1")
        if conn.status in (429, 503):
            after, after_ms = headers.get(b"retry-after"), headers.get(b"retry-after-ms")
            self.retry_after_s = parse_retry_after(
                after.decode("latin-1") if after else None, after_ms.decode("latin-1") if after_ms else None
            )
        else:
            self.retry_after_s = None

    async def read(self) -> bytes:
        conn = self._conn
        try:
            if conn.done:  # the whole body came with the head (a small answer): no wait
                return conn.take()
            wait = self._wait
            wait.due_in(self._idle_s)
            with wait:
                return await conn.rest()
        except ConnectionError as exc:
            raise UpstreamStreamBroken(f"the upstream's answer broke off: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no data from the upstream for {self._idle_s:g} s") from exc
        finally:
            self.close()

    async def next_chunk(self) -> bytes:
        conn = self._conn
        wait = self._wait
        if self._reading:
            wait.due_in(self._idle_s)
        self._reading = True
        try:
            if not conn.parts and not conn.done:
                with wait:
                    while not conn.parts and not conn.done:
                        if conn.closed:
                            raise UpstreamStreamBroken(
                                f"the upstream's stream broke off: {conn.why_broken()}"
                            )
                        await conn.wait()
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream stream went silent") from exc
        if conn.parts:
            return conn.take()
        self.close()
        return b""

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._conn.finish()

    def release_when_done(self, grace_s: float) -> None:
        # As aiohttp: the connection goes back to the pool when the body's end arrives, read or not, and
        # is dropped if it has not within ``grace_s``.
        if self._conn.done:
            self.close()
            return
        self._conn.after_end = self.close
        asyncio.get_running_loop().call_later(grace_s, self.close)


class RawUpstream:
    """``adapters.base.Upstream`` over raw connections; the same constructor as ``OpenAIHttpUpstream``."""

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
        self._url = url_for(provider, self._base_url, azure) if provider == "azure" else None
        parts = urlsplit(self._base_url)
        self._host = parts.hostname or "localhost"
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._ssl else 80)
        self._connect_s = connect_s
        self._first_byte_s = first_byte_s
        self._idle_s = idle_s
        host = self._host if parts.port is None else f"{self._host}:{parts.port}"
        fixed = {"Host": host, **session_headers(provider, api_key)}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._idle: list[RawConnection] = []
        self._deadlines = Deadlines(asyncio.get_running_loop())

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> RawResponse:
        return await self.request("POST", path, body, headers)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> RawResponse:
        url = self._base_url + path if self._url is None else self._url(path)
        target = urlsplit(url)
        where = (target.path or "/") + (f"?{target.query}" if target.query else "")
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
        head = b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n" % (
            method.encode(),
            where.encode("latin-1"),
            self._fixed,
            extra,
            len(body),
        )
        deadlines = self._deadlines
        wait = deadlines.wait(deadlines.time() + self._first_byte_s)
        resends_left = _RESENDS
        while True:
            conn = await self._connection()
            conn.transport.write(head + body)  # type: ignore[union-attr]
            try:
                with wait:
                    while not conn.head_done:
                        if conn.closed:
                            raise _Closed
                        await conn.wait()
                return RawResponse(conn, wait, self._idle_s)
            except _Closed as exc:
                conn.finish()
                if not conn.reused or not resends_left:
                    raise UpstreamConnectError(f"cannot reach the upstream: {conn.why_broken()}") from exc
                resends_left -= 1
            except TimeoutError as exc:
                conn.finish()
                raise UpstreamTimeout(f"no response head within {self._first_byte_s:g} s") from exc
            except BaseException:
                conn.finish()  # a client that left: drop the request, so the upstream stops
                raise

    async def _connection(self) -> RawConnection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_s):
                _, conn = await loop.create_connection(
                    lambda: RawConnection(idle),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"cannot connect to the upstream within {self._connect_s:g} s") from exc
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                raise ProxyOverloaded(
                    f"tokenyard cannot open a connection to the upstream: {os.strerror(exc.errno)} "
                    "on the proxy's machine (the upstream is not at fault); retry shortly."
                ) from exc
            raise UpstreamConnectError(f"cannot reach the upstream: {exc.strerror or exc}") from exc
        return conn

    async def aclose(self) -> None:
        idle = self._idle[:]  # each connection_lost takes its connection off the list: walk a copy
        self._idle.clear()
        for conn in idle:
            conn.transport.close()  # type: ignore[union-attr]


def main() -> int:
    """``tokenyard`` with every backend's upstream client over raw connections."""
    from tokenyard import cli
    from tokenyard.proxy import backends

    backends.OpenAIHttpUpstream = RawUpstream  # type: ignore[misc]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
