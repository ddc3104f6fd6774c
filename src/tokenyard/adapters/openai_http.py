"""An HTTP upstream over aiohttp: OpenAI-compatible engines and APIs, Anthropic's and Azure OpenAI's.

The provider decides, once, at construction, which header carries the key and how a path becomes a URL
(``providers.py``); an OpenAI-provider ``post`` costs what it did before there were other providers.

Why aiohttp: on one core at 64 concurrent requests, aiohttp's ``ClientSession`` relayed ~4,000 req/s
here against ~200 for httpx's own transport (its pool is a known hot spot, encode/httpx#3215) and
~1,300 for httpx over an aiohttp transport. The proxy's ceiling is this client, so it is the fastest one,
kept private to this module behind ``adapters.base.Upstream``.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import math
import os
import socket
import time
from collections.abc import Sequence

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError, ContentLengthError, TransferEncodingError

from tokenyard import __version__
from tokenyard.adapters.deadlines import Deadlines, Wait
from tokenyard.adapters.providers import AzureTarget, Provider, auth_headers, url_for
from tokenyard.errors import (
    ProxyOverloaded,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)

_CHUNK_LIMIT = 64 * 1024


_MAX_RETRY_AFTER_S = 86_400.0
_RESENDS_ON_CLOSED_CONNECTION = 2

# Errors that say this machine ran out of something (descriptors, buffers, memory, local ports), not that
# the upstream failed: every backend would fail the same way, so no circuit breaker may count them.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})


def describe(exc: aiohttp.ClientError | OSError) -> str:
    """What went wrong with the upstream, in words: aiohttp's class names mean nothing to a client (the one
    map of aiohttp's errors, for every adapter over it).

    Most specific first; an aiohttp error a case below does not know keeps aiohttp's own sentence.
    """
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _describe_body(exc.__cause__)
    if isinstance(exc, aiohttp.ClientResponseError):  # the response could not be parsed
        detail = exc.message.splitlines()[0].rstrip(": ") if exc.message else ""
        what = "chunked encoding" if "chunk" in detail.lower() else "HTTP response"
        return f"the upstream's {what} was malformed" + (f" ({detail})" if detail else "")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection unexpectedly"
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return "the upstream reset the connection"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "the upstream's TLS certificate was rejected"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        return "the TLS handshake with the upstream failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return "the upstream's host name does not resolve"
        return f"cannot connect to the upstream ({_strerror(exc)})"
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return f"network error with the upstream ({_strerror(exc)})"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the upstream URL is invalid"
    return str(exc) or "the upstream request failed"


def _describe_body(cause: BaseException | None) -> str:
    if isinstance(cause, ContentLengthError):
        return "the upstream closed the connection mid-body (before its Content-Length was reached)"
    if isinstance(cause, TransferEncodingError):
        if "not enough data" in str(cause).lower():
            return "the upstream closed the connection mid-body (before the last chunk)"
        return "the upstream's chunked encoding was malformed"
    if isinstance(cause, ContentEncodingError):
        return "the upstream's compressed body could not be decoded"
    return "the upstream's body was incomplete or malformed"


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or "connection failed")


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


class AiohttpResponse:
    """``UpstreamResponse`` over an ``aiohttp.ClientResponse``."""

    __slots__ = ("_idle_s", "_reading", "_resp", "_wait", "content_type", "retry_after_s", "status")

    def __init__(self, resp: aiohttp.ClientResponse, wait: Wait, idle_s: float) -> None:
        self._resp = resp
        self._wait = wait  # the head's wait, whose deadline is the first byte's: the body's waits reuse it
        self._idle_s = idle_s
        self._reading = False  # a chunk has been read
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")
        self.retry_after_s = (
            parse_retry_after(resp.headers.get("Retry-After"), resp.headers.get("retry-after-ms"))
            if resp.status in (429, 503)
            else None
        )

    async def read(self) -> bytes:
        resp = self._resp
        try:
            if resp.content.is_eof():  # the whole body came with the head (a small answer): no wait
                return await resp.read()
            wait = self._wait
            wait.due_in(self._idle_s)
            with wait:
                return await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no data from the upstream for {self._idle_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamStreamBroken(f"the upstream's answer broke off: {describe(exc)}") from exc
        finally:
            resp.release()

    async def next_chunk(self) -> bytes:
        # A method, not an async generator: nothing to close, and no generator machinery each chunk.
        wait = self._wait
        if self._reading:  # the first chunk is still within the first-byte budget; each later one idle_s
            wait.due_in(self._idle_s)
        self._reading = True
        try:
            with wait:
                return await self._resp.content.readany()
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream stream went silent") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamStreamBroken(f"the upstream's stream broke off: {describe(exc)}") from exc

    def close(self) -> None:
        # close(), not release(): an unfinished body must drop the connection so the upstream stops work.
        self._resp.close()

    def release_when_done(self, grace_s: float) -> None:
        # aiohttp hands the connection back to its pool by itself when the body's end arrives, read or not
        # (its end-of-payload callback); until then it holds a pool slot, so the wait is bounded.
        if self._resp.connection is not None:
            asyncio.get_running_loop().call_later(grace_s, self._resp.close)


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
        # None: the URL is base + path, concatenated inline on the hot path (no call).
        self._url = url_for(provider, self._base_url, azure) if provider == "azure" else None
        self._connect_s = connect_s
        self._first_byte_s = first_byte_s
        self._idle_s = idle_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300),
            headers=session_headers(provider, api_key),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, connect=connect_s),
            auto_decompress=False,
            read_bufsize=_CHUNK_LIMIT,
        )
        self._deadlines = Deadlines(asyncio.get_running_loop())

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> AiohttpResponse:
        return await self.request("POST", path, body, headers)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> AiohttpResponse:
        """Any method on ``path`` (an inference ``POST``, a stored object's ``GET``, ``DELETE``, a ``POST``
        …/cancel): the same URL, auth, timeouts and errors as ``post``.

        Sent again when the connection it went out on was closed before any byte of an answer. Upstreams
        close pooled connections under us: llama-server closes after every streamed answer while saying
        keep-alive, and any server closes an idle one at its own keep-alive timeout. A close that arrives as
        the connection is reused fails the request before the upstream read it; aiohttp sends such a request
        again only for idempotent methods (RFC 9112 §9.3.1). An inference POST changes no state upstream,
        and a connection closed with no answer means the request was not served, so it goes again too, at
        most twice (the pool may hold more than one dead connection).
        """
        url = self._base_url + path if self._url is None else self._url(path)
        deadlines = self._deadlines
        wait = deadlines.wait(deadlines.time() + self._first_byte_s)
        resends_left = _RESENDS_ON_CLOSED_CONNECTION
        # One coroutine from here to aiohttp's, the resends inline: every resume of the request passes
        # through each coroutine of its await chain.
        while True:
            try:
                with wait:
                    # No headers (most requests): aiohttp merges none with the session's.
                    resp = await self._session.request(
                        method, url, data=body or None, headers=headers or None
                    )
                return AiohttpResponse(resp, wait, self._idle_s)
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                aiohttp.ClientConnectionResetError,
            ) as exc:
                if not resends_left or not closed_before_answer(exc):
                    raise self._mapped(exc) from exc
                resends_left -= 1
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                raise self._mapped(exc) from exc

    def _mapped(self, exc: TimeoutError | OSError | aiohttp.ClientError) -> Exception:
        """The one map from a failed send to tokenyard's errors, most specific first (the URL, which may
        carry a deployment, and the key never appear in it)."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # a TimeoutError too: before the next case
            return UpstreamTimeout(f"cannot connect to the upstream within {self._connect_s:g} s")
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"no response head within {self._first_byte_s:g} s")
        if isinstance(exc, OSError):  # aiohttp's connection errors with an errno are OSErrors too
            if exc.errno in _LOCAL_ERRNOS:
                return ProxyOverloaded(
                    f"tokenyard cannot open a connection to the upstream: {os.strerror(exc.errno)} "
                    "on the proxy's machine (the upstream is not at fault); retry shortly."
                )
            what = describe(exc) if isinstance(exc, aiohttp.ClientError) else _strerror(exc)
            return UpstreamConnectError(f"cannot reach the upstream: {what}")
        if isinstance(exc, aiohttp.ClientConnectionError):
            return UpstreamConnectError(f"cannot reach the upstream: {describe(exc)}")
        return UpstreamError(f"the upstream request failed: {describe(exc)}")

    async def aclose(self) -> None:
        await self._session.close()


def closed_before_answer(exc: aiohttp.ClientError) -> bool:
    """Whether a request failed because its connection was closed under it before any answer (not: the
    upstream could not be reached, or broke off an answer): what ``request`` sends again."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return True
    # ClientConnectorError is a ClientOSError too, and means no connection was made: nothing to resend on.
    if type(exc) is not aiohttp.ClientOSError:
        return False
    # aiohttp wraps a failed body write ("Can not write request body") around its cause, which says whether
    # the pooled connection was already closing (a reset, a broken pipe) or something else went wrong.
    reset = exc.errno in (errno.ECONNRESET, errno.EPIPE)
    return reset or isinstance(exc.__cause__, ConnectionResetError | BrokenPipeError)
