"""Webhook POSTs (a finished job's callback) over aiohttp: one pooled session, opened at the first POST.

The URL is someone else's (the client named it), so its failures are mapped here to the ``Upstream*``
errors, in the words of ``aiohttp_words.describe``: the one map of aiohttp's errors.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from tokenyard.adapters.aiohttp_words import describe
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout


class WebhookSender:
    """POSTs payloads to callback URLs (``adapters.base.Webhook``)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None  # most proxies never call a callback

    async def post(self, url: str, payload: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        """POST ``payload`` to ``url`` without following redirects; the status that answered."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.post(
                url, data=payload, headers=dict(headers), allow_redirects=False, timeout=timeout
            ) as resp:
                return resp.status
        except TimeoutError as exc:
            raise UpstreamTimeout(f"not answered within {timeout_s:g} s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamConnectError(describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(describe(exc)) from exc

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
