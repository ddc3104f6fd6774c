"""A key's own ``rpm`` holds across replicas the way backend caps do: two replicas on one Redis each take half
of it. Refusals are OpenAI's 429 ``rate_limit_exceeded`` with ``Retry-After``, and every answer to a
rate-limited key carries OpenAI's ``x-ratelimit-*`` headers — for config file keys and keys made through the
admin API alike. Real processes, the official ``openai`` SDK, the simulator upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import fresh_prefix
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[list[ProxyProcess]]:
    """Two replicas on one Redis; team-a's key may send 4 requests a minute, team-b's is unlimited."""
    prefix = fresh_prefix()
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as sims:
        cfg: dict[str, Any] = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": REDIS_URL, "redis_prefix": prefix, "flush_interval_s": 0.2},
            "backends": {"api": backend("serverless", sims["api"].base_url)},
            "models": {MODEL: {"deployments": ["api"]}},
            "keys": {"team-a": {"key": CLIENT_KEY, "rpm": 4}, "team-b": {"key": OTHER_KEY}},
        }
        replicas = [await start_proxy(cfg, tmp_path) for _ in range(2)]
        try:

            async def both_count_two() -> None:
                for replica in replicas:
                    [state] = (await replica.admin("/admin/backends"))["data"]
                    assert state["proxy_replicas"] == 2

            await eventually(both_count_two)
            yield replicas
        finally:
            for replica in replicas:
                replica.stop()
            await delete_prefix(prefix)


async def ask(proxy: ProxyProcess, key: str) -> Any:
    async with proxy.client(key=key) as client:
        return await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )


async def refused(proxy: ProxyProcess, key: str) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as raised:
        await ask(proxy, key)
    return raised.value


async def test_a_keys_rpm_is_shared_by_the_replicas(fleet: list[ProxyProcess]) -> None:
    a, b = fleet
    first = await ask(a, CLIENT_KEY)
    assert first.headers["x-ratelimit-limit-requests"] == "4"
    assert first.headers["x-ratelimit-remaining-requests"] == "2", "what is left across both replicas"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    await ask(a, CLIENT_KEY)
    error = await refused(a, CLIENT_KEY)
    assert error.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "Rate limit reached for requests per min (RPM) on key team-a: Limit 4." in error.message
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    await ask(b, CLIENT_KEY)  # the other replica's half
    await ask(b, CLIENT_KEY)
    await refused(b, CLIENT_KEY)
    unlimited = await ask(a, OTHER_KEY)
    assert "x-ratelimit-limit-requests" not in unlimited.headers


async def test_a_key_made_through_the_admin_api_has_its_own_limits(fleet: list[ProxyProcess]) -> None:
    a, b = fleet
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        made = (await http.post(f"{a.url}/admin/keys", json={"name": "bot", "rpm": 2, "tpm": 100_000})).json()
        assert (made["rpm"], made["tpm"], made["priority"]) == (2, 100_000, "normal")
        bad = await http.post(f"{a.url}/admin/keys", json={"name": "bot", "rpm": 0})
        assert bad.status_code == 400
        assert "rpm: Input should be greater than 0" in bad.json()["error"]["message"]
    answer = await ask(a, made["value"])
    assert answer.headers["x-ratelimit-limit-tokens"] == "100000"
    assert answer.headers["x-ratelimit-limit-requests"] == "2"
    await refused(a, made["value"])  # its share on this replica: one a minute

    async def on_b_too() -> None:
        try:
            await ask(b, made["value"])
        except openai.AuthenticationError as exc:
            raise AssertionError("not synced yet") from exc

    await eventually(on_b_too)
    await refused(b, made["value"])
