"""tokenyard in front of real upstreams, each behind a recording relay, and what its meter recorded."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.real_upstream.relay import Relay
from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.otlp import Collector, otlp_http_collector
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.stores import metered_records, sqlite_url
from tokenyard.meter.model import UsageRecord

# Prices make the meter's cost checkable: cost_pusd = prompt × 1,000,000 + completion × 2,000,000.
PRICES = {"input_per_1m": 1.0, "output_per_1m": 2.0}
INPUT_PUSD, OUTPUT_PUSD = 1_000_000, 2_000_000


def new_marker() -> str:
    """A unique word to put in a request, to find it among what a relay recorded."""
    return f"mk{os.urandom(6).hex()}"


@dataclass
class Yard:
    """A tokenyard proxy whose backends are real upstreams reached through recording relays."""

    name: str
    proxy: ProxyProcess
    store_url: str
    chat_model: str  # a public model for chat and completions
    embed_model: str
    chat_relay: Relay
    embed_relay: Relay
    collector: Collector  # where the proxy's spans arrive

    async def record(self, request_id: str, timeout_s: float = 20) -> UsageRecord:
        """The meter's record of one request, once the proxy has flushed it."""
        return (await metered_records(self.store_url, request_id, timeout_s))[0]


@asynccontextmanager
async def open_yard(
    name: str,
    tmp: Path,
    upstreams: dict[str, tuple[int, str | None]],
    models: dict[str, str],
    *,
    chat_model: str,
    embed_model: str,
    metrics_urls: dict[str, str] | None = None,
) -> AsyncIterator[Yard]:
    """Relays to ``upstreams`` (name → (port, api key)), and a proxy serving ``models`` (model → upstream)
    that scrapes the engines' own ``metrics_urls`` (upstream → URL, straight at the engine), forwards the
    caller's identity to every upstream, and traces every request to its own OTLP collector."""
    async with AsyncExitStack() as stack:
        collector = await stack.enter_async_context(otlp_http_collector())
        relays = {
            up: await stack.enter_async_context(Relay(port, tmp)) for up, (port, _key) in upstreams.items()
        }
        backends: dict[str, Any] = {}
        for up, (_port, key) in upstreams.items():
            section = backend("serverless", relays[up].base_url, prices=PRICES)
            section["api_key"] = key or "sk-none"
            section["timeouts"] = {"first_byte_s": 120}  # a busy 2-core machine: the model may start slowly
            if metrics_urls and up in metrics_urls:
                section.update(metrics_url=metrics_urls[up], engine={"interval_s": 1})
            # Every request carries the caller's identity and a trace context: real upstreams must take them.
            section["forward_identity"] = True
            backends[up] = section
        store_url = sqlite_url(tmp / f"meter-{name}.sqlite3")
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": store_url, "flush_interval_s": 0.2},
            "backends": backends,
            "models": {model: {"deployments": [up]} for model, up in models.items()},
            "keys": {"team-a": {"key": CLIENT_KEY}},
            "telemetry": {"otlp": {"endpoint": collector.url, "schedule_s": 0.1}},
        }
        proxy = await start_proxy(config, tmp)
        stack.callback(proxy.stop)
        yield Yard(
            name,
            proxy,
            store_url,
            chat_model,
            embed_model,
            relays[models[chat_model]],
            relays[models[embed_model]],
            collector,
        )
