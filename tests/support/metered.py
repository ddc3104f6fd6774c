"""What the meter stored for one model, read through the usage API, and what one request added to it.

Tests that share a proxy compare a request's usage with what the meter gained for its model: ``before`` reads
the model's totals, ``gained`` waits until one more request has been flushed and returns the difference.
"""

from __future__ import annotations

from typing import Any

from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess

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


async def totals(proxy: ProxyProcess, model: str, **group: str) -> dict[str, Any]:
    """The meter's totals for ``model`` over the last hour (zeros before its first request)."""
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
