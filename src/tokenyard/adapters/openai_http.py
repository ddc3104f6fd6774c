"""An OpenAI-compatible HTTP upstream over aiohttp.

Why aiohttp: on one core at 64 concurrent requests, aiohttp's ``ClientSession`` relayed ~4,000 req/s
here against ~200 for httpx's own transport (its pool is a known hot spot, encode/httpx#3215) and
~1,300 for httpx over an aiohttp transport. The proxy's ceiling is this client, so it is the fastest one,
kept private to this module behind ``adapters.base.Upstream``.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import AsyncGenerator

import aiohttp

from tokenyard import __version__
from tokenyard.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)

_CHUNK_LIMIT = 64 * 1024


_MAX_RETRY_AFTER_S = 86_400.0


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

    __slots__ = ("_first_byte_deadline", "_idle_s", "_resp", "content_type", "retry_after_s", "status")

    def __init__(self, resp: aiohttp.ClientResponse, first_byte_deadline: float, idle_s: float) -> None:
        self._resp = resp
        self._first_byte_deadline = first_byte_deadline
        self._idle_s = idle_s
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")
        self.retry_after_s = (
            parse_retry_after(resp.headers.get("Retry-After"), resp.headers.get("retry-after-ms"))
            if resp.status in (429, 503)
            else None
        )

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_s):
                return await self._resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no data from the upstream for {self._idle_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamStreamBroken(f"upstream body broken: {type(exc).__name__}") from exc
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        content = self._resp.content
        loop = asyncio.get_running_loop()
        # The first chunk is still within the first-byte budget; every later one gets idle_s.
        deadline = self._first_byte_deadline
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await content.readany()
                except TimeoutError as exc:
                    raise UpstreamTimeout("the upstream stream went silent") from exc
                if not chunk:
                    return
                yield chunk
                deadline = loop.time() + self._idle_s
        except aiohttp.ClientError as exc:
            raise UpstreamStreamBroken(f"upstream stream broken: {type(exc).__name__}") from exc

    def close(self) -> None:
        # close(), not release(): an unfinished body must drop the connection so the upstream stops work.
        self._resp.close()

    def release_when_done(self, grace_s: float) -> None:
        # aiohttp hands the connection back to its pool by itself when the body's end arrives, read or not
        # (its end-of-payload callback); until then it holds a pool slot, so the wait is bounded.
        if self._resp.connection is not None:
            asyncio.get_running_loop().call_later(grace_s, self._resp.close)


class OpenAIHttpUpstream:
    """A pooled client for one OpenAI-compatible base URL (``https://host/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        connect_s: float,
        first_byte_s: float,
        idle_s: float,
        max_connections: int,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._first_byte_s = first_byte_s
        self._idle_s = idle_s
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",  # the body is relayed and, later, parsed: no gzip round trip
            "User-Agent": f"tokenyard/{__version__}",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, connect=connect_s),
            auto_decompress=False,
            read_bufsize=_CHUNK_LIMIT,
        )

    async def post(self, path: str, body: bytes) -> AiohttpResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._first_byte_s
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self._session.post(self._base_url + path, data=body)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response head within {self._first_byte_s:g} s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamConnectError(f"cannot reach the upstream: {type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream request failed: {type(exc).__name__}") from exc
        return AiohttpResponse(resp, deadline, self._idle_s)

    async def aclose(self) -> None:
        await self._session.close()
