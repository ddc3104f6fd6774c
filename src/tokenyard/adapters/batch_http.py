"""The HTTP underneath every Batch API adapter: a few large calls, each answered whole, errors mapped here.

aiohttp, like the real-time adapter. A call either returns the body of a 2xx answer or raises one of the
``Upstream*`` errors saying which call failed and how (never the URL's host, the key or the body).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from tokenyard import __version__
from tokenyard.adapters.aiohttp_words import describe
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStatusError, UpstreamTimeout


class BatchHttp:
    """A session on one provider's base URL, with its auth headers, for JSON and file calls."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"tokenyard/{__version__}", **headers},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object a successful answer carries; ``UpstreamError`` when it carries something else."""
        body, content_type = await self.call(method, path, **kwargs)
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            what = content_type or "a body"
            raise UpstreamError(
                f"the batch API answered {method} {path} with {what} that is not a JSON object"
            )
        return value

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[bytes, str]:
        """The body and content type of a successful answer; an ``Upstream*`` error saying what went wrong."""
        try:
            async with self._session.request(method, self.base_url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise UpstreamStatusError(
                        f"the batch API answered {method} {path} with {resp.status}", status=resp.status
                    )
                return body, resp.content_type
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the batch API did not answer {method} {path} in time") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamConnectError(
                f"cannot reach the batch API for {method} {path}: {describe(exc)}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the batch API's answer to {method} {path} failed: {describe(exc)}") from exc

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._session.close()
