"""Dashboard sessions: they expire, die with the admin key they were issued under (even if that key comes
back later), hold on every replica sharing the store, and are ``Secure`` when served over TLS.

The proxy runs as a subprocess on the real clock, so expiry is checked two ways: the rule as a pure function
with a given clock, and end to end with a cookie whose signature is valid but whose issue time is old.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.config import CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.redis_servers import REDIS_URL
from tests.support.simulators import FAST_UPSTREAM, simulators
from tokenyard.meter.open_store import open_store
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.telemetry.sessions import (
    SALT_DOCUMENT,
    key_fingerprint,
    session_secret,
    session_valid,
    session_value,
)

KEY_A = "sk-admin-A-0123456789abcdef"
KEY_B = "sk-admin-B-0123456789abcdef"
TTL_S = 3600

# -- the rule, with a given clock ---------------------------------------------------------------------


def test_a_session_is_valid_from_its_issue_time_until_its_lifetime_runs_out() -> None:
    secret = session_secret(b"admin", b"salt")
    value = session_value(secret, 1_000_000)
    assert session_valid(secret, value, now_s=1_000_000, ttl_s=TTL_S)
    assert session_valid(secret, value, now_s=1_000_000 + TTL_S - 1, ttl_s=TTL_S)
    assert not session_valid(secret, value, now_s=1_000_000 + TTL_S, ttl_s=TTL_S)
    assert session_valid(secret, value, now_s=1_000_000 - 60, ttl_s=TTL_S)  # another replica's clock
    assert not session_valid(secret, value, now_s=1_000_000 - 61, ttl_s=TTL_S)  # issued in the future


def test_a_session_is_valid_only_with_its_own_secret_and_issue_time() -> None:
    secret = session_secret(b"admin", b"salt")
    value = session_value(secret, 1_000_000)
    now = 1_000_010
    assert not session_valid(session_secret(b"admin", b"other salt"), value, now, TTL_S)
    assert not session_valid(session_secret(b"other key", b"salt"), value, now, TTL_S)
    assert not session_valid(None, value, now, TTL_S)
    stretched = b"1000005" + value[len(b"1000000") :]  # a later issue time under the old signature
    assert not session_valid(secret, stretched, now, TTL_S)
    for junk in (b"", b".", b"1000000", b"1000000.", b"x.y", b"-1." + value.partition(b".")[2]):
        assert not session_valid(secret, junk, now, TTL_S)


# -- end to end ---------------------------------------------------------------------------------------


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, Any]]:
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as running:
        yield running


def config(sims: dict[str, Any], prefix: str, admin_key: str) -> dict[str, Any]:
    """Replicas sharing the machine's Redis under ``prefix``."""
    return {
        "server": {"admin_key": admin_key, "dashboard_session_ttl_s": TTL_S},
        "meter": {"store": REDIS_URL, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {"api": backend("serverless", sims["api"].base_url)},
        "models": {"m": {"deployments": ["api"]}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
    }


@pytest.fixture
async def fleet(sims: dict[str, Any], redis_prefix: str, tmp_path: Path) -> AsyncIterator[list[ProxyProcess]]:
    """Two replicas on one store, with admin key A."""
    started = [await start_proxy(config(sims, redis_prefix, KEY_A), tmp_path) for _ in range(2)]
    try:
        yield started
    finally:
        for proxy in started:
            proxy.stop()


async def sign_in(http: httpx.AsyncClient, proxy: ProxyProcess, key: str, **headers: str) -> str:
    """Sign in with ``key``; the whole ``Set-Cookie`` header (kept out of ``http``'s cookie jar: each
    check says which session it sends)."""
    got = await http.post(f"{proxy.url}/dashboard/login", data={"key": key}, headers=headers)
    http.cookies.clear()
    assert got.status_code == 303, got.text
    cookie: str = got.headers["set-cookie"]
    return cookie


def session(set_cookie: str) -> dict[str, str]:
    """The request header a browser sends back for a ``Set-Cookie``."""
    return {"Cookie": set_cookie.split(";")[0]}


async def admitted(http: httpx.AsyncClient, proxy: ProxyProcess, headers: dict[str, str]) -> bool:
    got = await http.get(f"{proxy.url}/admin/queue", headers=headers)
    assert got.status_code in (200, 401), got.text
    return got.status_code == 200


async def rotate(http: httpx.AsyncClient, fleet: list[ProxyProcess], old: str, new: str, cfg: Any) -> None:
    """Give every replica's config file admin key ``new``; reload them all through the first."""
    for proxy in fleet:
        assert proxy.config_path is not None
        data = yaml.safe_load(proxy.config_path.read_text())
        data["server"]["admin_key"] = new
        proxy.config_path.write_text(yaml.safe_dump(data))
    got = await http.post(f"{fleet[0].url}/admin/reload", headers={"Authorization": f"Bearer {old}"})
    assert got.json()["reloaded"] is True, got.text

    async def everywhere() -> None:
        for proxy in fleet:
            assert (
                await http.get(f"{proxy.url}/admin/queue", headers={"Authorization": f"Bearer {new}"})
            ).status_code == 200

    await eventually(everywhere, timeout_s=30)


async def test_a_session_says_its_lifetime_and_holds_on_every_replica(fleet: list[ProxyProcess]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        cookie = await sign_in(http, fleet[0], KEY_A)
        attributes = [part.strip() for part in cookie.split(";")]
        assert f"Max-Age={TTL_S}" in attributes
        assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
        assert "Secure" not in attributes  # plain HTTP: a Secure cookie would never come back
        for proxy in fleet:  # signed by one replica, valid on the other
            assert await admitted(http, proxy, session(cookie))


async def test_a_validly_signed_session_past_its_lifetime_is_refused(
    fleet: list[ProxyProcess], redis_prefix: str
) -> None:
    # Sign as the proxy does, with the salt it shares in the store: only the issue time is old.
    store = open_store(REDIS_URL, prefix=redis_prefix, retention_s=86400, records_max=10)
    try:
        stored = await store.get_document(SALT_DOCUMENT)
    finally:
        await store.aclose()
    assert stored is not None
    document = yaml.safe_load(stored)  # JSON is YAML
    assert document["key"] == key_fingerprint(KEY_A.encode())
    secret = session_secret(KEY_A.encode(), bytes.fromhex(document["salt"]))
    now = int(time.time())
    async with httpx.AsyncClient(timeout=30) as http:
        fresh = session_value(secret, now - 10).decode()
        assert await admitted(http, fleet[1], {"Cookie": f"tokenyard_admin={fresh}"})
        old = session_value(secret, now - TTL_S - 10).decode()
        for proxy in fleet:
            assert not await admitted(http, proxy, {"Cookie": f"tokenyard_admin={old}"})


async def test_a_key_rotated_back_does_not_bring_its_old_sessions_back(fleet: list[ProxyProcess]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        first_a = session(await sign_in(http, fleet[0], KEY_A))
        assert await admitted(http, fleet[1], first_a)

        await rotate(http, fleet, KEY_A, KEY_B, config)
        for proxy in fleet:
            assert not await admitted(http, proxy, first_a)
        under_b = session(await sign_in(http, fleet[1], KEY_B))
        assert await admitted(http, fleet[0], under_b)

        await rotate(http, fleet, KEY_B, KEY_A, config)
        for proxy in fleet:
            assert not await admitted(http, proxy, first_a)  # A again, but a new A
            assert not await admitted(http, proxy, under_b)
        second_a = session(await sign_in(http, fleet[0], KEY_A))
        for proxy in fleet:
            assert await admitted(http, proxy, second_a)


async def test_a_session_cookie_is_secure_when_served_over_tls(fleet: list[ProxyProcess]) -> None:
    # The proxy is reached through a TLS-terminating proxy on loopback, which uvicorn trusts by default
    # (forwarded_allow_ips: 127.0.0.1) to say the original scheme.
    async with httpx.AsyncClient(timeout=30) as http:
        cookie = await sign_in(http, fleet[0], KEY_A, **{"X-Forwarded-Proto": "https"})
        assert "Secure" in [part.strip() for part in cookie.split(";")]
