"""What the meter stored for one model, read through the usage API, and what one request added to it.

Tests that share a proxy compare a request's usage with what the meter gained for its model: ``before`` reads
the model's totals, ``gained`` waits until one more request has been flushed and returns the difference.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support.config import ADMIN_KEY
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess

_PENDING = re.compile(r"^tokenyard_meter_pending_records (\S+)$", re.MULTILINE)

COUNTS = (
    "requests",
    "errors",
    "estimated",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "completion_tokens",
)


async def settled(proxy: ProxyProcess) -> None:
    """Wait until the meter holds no record it has not stored: an earlier test's last request, answered
    just now, must not land in this test's difference."""

    async def nothing_pending() -> None:
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            page = (await http.get(f"{proxy.url}/metrics")).text
        found = _PENDING.search(page)
        assert found is not None, page[:300]
        assert float(found[1]) == 0, found[0]

    await eventually(nothing_pending, timeout_s=15)


async def totals(proxy: ProxyProcess, model: str, **group: str) -> dict[str, Any]:
    """The meter's totals for ``model`` over the last hour (zeros before its first request), once what the
    proxy has recorded is stored."""
    await settled(proxy)
    usage = await proxy.admin("/admin/usage", start="1h", group_by="model", granularity="total")
    row = next((r for r in usage["data"] if r["model"] == model), {})
    out: dict[str, Any] = {name: row.get(name, 0) for name in COUNTS}
    out["token_cost_usd"] = row.get("token_cost_usd", 0.0)
    return out


async def gained(
    proxy: ProxyProcess, model: str, before: dict[str, Any], requests: int = 1
) -> dict[str, Any]:
    """What ``requests`` more requests of ``model`` added to the meter since ``before`` (once flushed)."""
    now: dict[str, Any] = {}

    async def flushed() -> None:
        now.update(await totals(proxy, model))
        assert now["requests"] == before["requests"] + requests, (now, before)

    await eventually(flushed, timeout_s=15)
    return {name: now[name] - before[name] for name in now}
