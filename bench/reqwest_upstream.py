"""tokenyard over pyreqwest instead of aiohttp: issue 19 part 3's "then as tokenyard's own".

pyreqwest (reqwest and hyper on a Tokio runtime of its own) took about half the CPU of aiohttp a request as
the bare pass-through's client (``bench.ceiling``). This is tokenyard's ``adapters.base.Upstream`` over it,
kept in ``bench/`` because it was measured and not adopted (bench/README.md, "Raising the limit (part 3)"):

    python -m bench.reqwest_upstream serve --config tokenyard.yaml   # tokenyard serve, over pyreqwest
    python -m bench.speed --client pyreqwest --baseline /tmp/same-commit/src  # side by side with aiohttp

It keeps the adapter's contract where the measurement depends on it (one shared first-byte/idle deadline,
cancelled on timeout; an unfinished body dropped; Retry-After; tokenyard's error types), not its every
message. Not done: resending on a pooled connection closed under the request (hyper resends a request it
could not write by itself), and aiohttp's error descriptions.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import ConnectError, ConnectTimeoutError, PyreqwestError

from tokenyard.adapters.deadlines import Deadlines, Wait
from tokenyard.adapters.openai_http import parse_retry_after, session_headers
from tokenyard.adapters.providers import AzureTarget, Provider, url_for
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStreamBroken, UpstreamTimeout


class ReqwestResponse:
    """``UpstreamResponse`` over a streamed pyreqwest response."""

    __slots__ = (
        "_done",
        "_idle_s",
        "_reader",
        "_reading",
        "_request",
        "_wait",
        "content_type",
        "retry_after_s",
        "status",
    )

    def __init__(self, request: Any, resp: Any, wait: Wait, idle_s: float) -> None:
        self._request = request  # the streamed request, entered: leaving it drops an unfinished body
        self._reader = resp.body_reader
        self._wait = wait
        self._idle_s = idle_s
        self._reading = False
        self._done = False  # the body's end was read: nothing to drop
        self.status = resp.status
        self.content_type = resp.get_header("content-type") or "application/json"
        self.retry_after_s = (
            parse_retry_after(resp.get_header("retry-after"), resp.get_header("retry-after-ms"))
            if self.status in (429, 503)
            else None
        )

    async def read(self) -> bytes:
        wait = self._wait
        wait.due_in(self._idle_s)
        try:
            with wait:
                body = await self._reader.bytes()
            self._done = True
            return body.to_bytes()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no data from the upstream for {self._idle_s:g} s") from exc
        except PyreqwestError as exc:
            raise UpstreamStreamBroken(f"the upstream's answer broke off: {exc}") from exc
        finally:
            self.close()

    async def next_chunk(self) -> bytes:
        wait = self._wait
        if self._reading:
            wait.due_in(self._idle_s)
        self._reading = True
        try:
            with wait:
                chunk = await self._reader.read_chunk()
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream stream went silent") from exc
        except PyreqwestError as exc:
            raise UpstreamStreamBroken(f"the upstream's stream broke off: {exc}") from exc
        if chunk is None:
            self._done = True
            return b""
        return chunk.to_bytes()

    def close(self) -> None:
        request, self._request = self._request, None
        if request is not None and not self._done:
            _leave(request)

    def release_when_done(self, grace_s: float) -> None:
        asyncio.get_running_loop().call_later(grace_s, self.close)


def _leave(request: Any) -> None:
    """Leave a streamed request's context (an async exit, from sync code: a task)."""
    task = asyncio.ensure_future(request.__aexit__(None, None, None))
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


class ReqwestUpstream:
    """``adapters.base.Upstream`` over a pyreqwest client; the same constructor as ``OpenAIHttpUpstream``."""

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
        self._connect_s = connect_s
        self._first_byte_s = first_byte_s
        self._idle_s = idle_s
        self._headers = session_headers(provider, api_key)
        builder = ClientBuilder().max_connections(max_connections).follow_redirects(False)
        builder = builder.gzip(False).brotli(False).zstd(False).deflate(False)
        self._client = builder.connect_timeout(timedelta(seconds=connect_s)).build()
        self._deadlines = Deadlines(asyncio.get_running_loop())

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> ReqwestResponse:
        return await self.request("POST", path, body, headers)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> ReqwestResponse:
        url = self._base_url + path if self._url is None else self._url(path)
        deadlines = self._deadlines
        wait = deadlines.wait(deadlines.time() + self._first_byte_s)
        builder = self._client.request(method, url)
        builder = builder.headers({**self._headers, **dict(headers)} if headers else self._headers)
        if body:
            builder = builder.body_bytes(body)
        # Its default read-ahead (64 KiB) holds the head back until that much or the whole body has come: a
        # stream would reach the client at its end. 0 hands each chunk on as it comes.
        request = builder.streamed_read_buffer_limit(0).build_streamed()
        try:
            with wait:
                resp = await request.__aenter__()
        except BaseException as exc:
            _leave(request)  # a timeout or a client that left: drop the request, so the upstream stops
            mapped = _mapped(exc, self._connect_s, self._first_byte_s)
            if mapped is exc:
                raise
            raise mapped from exc
        return ReqwestResponse(request, resp, wait, self._idle_s)

    async def aclose(self) -> None:
        await self._client.close()


def _mapped(exc: BaseException, connect_s: float, first_byte_s: float) -> BaseException:
    if isinstance(exc, ConnectTimeoutError):
        return UpstreamTimeout(f"cannot connect to the upstream within {connect_s:g} s")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"no response head within {first_byte_s:g} s")
    if isinstance(exc, ConnectError):
        return UpstreamConnectError(f"cannot reach the upstream: {exc}")
    if isinstance(exc, PyreqwestError):
        return UpstreamError(f"the upstream request failed: {exc}")
    return exc  # a cancellation (the client left) goes on as it is


def main() -> int:
    """``tokenyard`` with every backend's upstream client over pyreqwest."""
    from tokenyard import cli
    from tokenyard.proxy import backends

    backends.OpenAIHttpUpstream = ReqwestUpstream  # type: ignore[misc]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
