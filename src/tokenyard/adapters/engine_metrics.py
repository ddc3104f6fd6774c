"""GET an engine's Prometheus ``/metrics`` text over aiohttp: one pooled session for every engine scraped.

Failures are mapped here to the ``Upstream*`` errors, in the words of ``aiohttp_words.describe`` (the one map
of aiohttp's errors); what the text says is ``capacity.engine``'s business.
"""

from __future__ import annotations

import aiohttp

from tokenyard import __version__
from tokenyard.adapters.aiohttp_words import describe
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStatusError, UpstreamTimeout

_MAX_BYTES = 8 * 1024 * 1024  # a /metrics page past this is not an engine's: refused, not buffered on


class EngineMetricsClient:
    """Reads engines' ``/metrics`` pages; ``aclose`` when done."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None  # opened at the first GET, in the running loop

    async def get_text(self, url: str, timeout_s: float) -> str:
        """The page's text; ``UpstreamTimeout``, ``UpstreamConnectError``, ``UpstreamStatusError`` (not 200)
        or ``UpstreamError`` otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Accept": "text/plain", "User-Agent": f"tokenyard/{__version__}"},
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),  # an engine sets none; skip the jar's work per GET
            )
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise UpstreamStatusError(f"{url} answered {resp.status}", status=resp.status)
                if (resp.content_length or 0) > _MAX_BYTES:
                    raise UpstreamError(f"{url} would send more than {_MAX_BYTES} bytes")
                chunks, size = [], 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > _MAX_BYTES:
                        raise UpstreamError(f"{url} sent more than {_MAX_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks).decode("utf-8", "replace")
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{url} did not answer within {timeout_s:g} s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamConnectError(f"{url}: {describe(exc)}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{url}: {describe(exc)}") from exc

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
