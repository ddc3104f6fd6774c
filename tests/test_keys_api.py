"""Virtual keys managed live through ``/admin/keys``: made on one replica and used at once on another,
revoked and refused on both, rotated with a grace period, never stored in clear; and every bad request
answered with a clear 4xx that changes nothing.

Two ``tokenyard serve`` replicas share the machine's Redis; a single one runs on SQLite. Clients are the
official ``openai`` SDK for inference and plain HTTP for the admin API.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy, start_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import fresh_prefix, sqlite_url
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama"
OTHER_MODEL = "mistral"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def config(base_url: str, store: str, prefix: str = "tokenyard") -> dict[str, Any]:
    api = backend("serverless", base_url, prices={"input_per_1m": 1.0, "output_per_1m": 2.0})
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {"api": api},
        "models": {MODEL: {"deployments": ["api"]}, OTHER_MODEL: {"deployments": ["api"]}},
        "keys": {"ops": {"key": CLIENT_KEY, "tenant": "platform"}},
    }


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as sims:
        yield sims["api"].base_url


@pytest.fixture
async def fleet(upstream: str, tmp_path: Path) -> AsyncIterator[tuple[list[ProxyProcess], str]]:
    """Two replicas on one Redis prefix."""
    prefix = fresh_prefix()
    replicas = [await start_proxy(config(upstream, REDIS_URL, prefix), tmp_path) for _ in range(2)]
    try:
        yield replicas, prefix
    finally:
        for replica in replicas:
            replica.stop()
        await delete_prefix(prefix)


@pytest.fixture
async def single(upstream: str, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    async with running_proxy(config(upstream, sqlite_url(tmp_path / "keys.sqlite3")), tmp_path) as proxy:
        yield proxy


async def admin(proxy: ProxyProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", ADMIN)
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(method, f"{proxy.url}/admin/keys{path}", **kwargs)


async def make_key(proxy: ProxyProcess, **fields: Any) -> dict[str, Any]:
    made = await admin(proxy, "POST", "", json={"name": "search-team", **fields})
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


async def chat(proxy: ProxyProcess, secret: str, model: str = MODEL) -> str:
    async with proxy.client(key=secret) as client:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello there"}]
        )
    return answer.id


async def refused(proxy: ProxyProcess, secret: str) -> str:
    with pytest.raises(openai.AuthenticationError) as raised:
        await chat(proxy, secret)
    return str(raised.value.body["message"])  # type: ignore[index]


async def test_a_key_made_on_one_replica_works_on_the_other_and_once_revoked_on_neither(
    fleet: tuple[list[ProxyProcess], str],
) -> None:
    (a, b), _ = fleet
    made = await make_key(a, tenant="acme", team="search", models=[MODEL], metadata={"owner": "ana"})
    secret = made.pop("value")
    assert secret.startswith("ty-")
    assert made["prefix"] == secret[:8]
    assert made["status"] == "active"
    assert made["source"] == "api"
    await chat(a, secret)  # at once on the replica that made it

    async def works_on_b() -> None:
        try:
            await chat(b, secret)
        except openai.AuthenticationError as exc:
            raise AssertionError("not on the other replica yet") from exc

    await eventually(works_on_b, timeout_s=10)
    got = (await admin(b, "GET", f"/{made['id']}")).json()
    assert got == made, "the other replica reads the same key, without its secret"

    revoked = await admin(b, "DELETE", f"/{made['id']}")
    assert revoked.json() == {"object": "tokenyard.key.deleted", "id": made["id"], "deleted": True}
    assert await refused(b, secret) == "Incorrect API key provided."

    async def refused_on_a() -> None:
        try:
            await chat(a, secret)
        except openai.AuthenticationError:
            return
        raise AssertionError("still works on the replica that made it")

    await eventually(refused_on_a, timeout_s=10)
    again = await admin(a, "DELETE", f"/{made['id']}")
    assert again.status_code == 200, "revoking twice is no error"
    listed = (await admin(a, "GET", "")).json()["data"]
    assert [k["id"] for k in listed] == ["ops"], "revoked keys are listed only when asked for"
    with_revoked = (await admin(a, "GET", "", params={"include_revoked": "true"})).json()["data"]
    assert [(k["id"], k["status"]) for k in with_revoked] == [("ops", "active"), (made["id"], "revoked")]


async def test_the_store_never_holds_a_secret_in_clear(fleet: tuple[list[ProxyProcess], str]) -> None:
    (a, _), prefix = fleet
    made = await make_key(a)
    rotated = (await admin(a, "POST", f"/{made['id']}/rotate", json={"grace_s": 60})).json()
    secrets = [made["value"], rotated["value"]]
    stored = b""
    async with aioredis.from_url(REDIS_URL) as redis:
        async for name in redis.scan_iter(match=f"{{{prefix}}}:*"):
            kind = await redis.type(name)
            if kind == b"hash":
                stored += b"".join(k + v for k, v in (await redis.hgetall(name)).items())
            elif kind == b"string":
                stored += await redis.get(name) or b""
    assert b"secret_sha256" in stored
    for secret in secrets:
        assert secret[8:].encode() not in stored
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored


async def test_a_rotated_key_keeps_its_old_secret_for_the_grace_period_or_none(single: ProxyProcess) -> None:
    made = await make_key(single)
    old = made["value"]
    graced = await admin(single, "POST", f"/{made['id']}/rotate", json={"grace_s": 3600})
    assert graced.status_code == 200
    new = graced.json()["value"]
    assert graced.json()["previous_expires_at"] == graced.json()["rotated_at"] + 3600
    await chat(single, old)
    await chat(single, new)
    abrupt = (await admin(single, "POST", f"/{made['id']}/rotate", json={"grace_s": 0})).json()
    assert await refused(single, old) == "Incorrect API key provided."
    assert await refused(single, new) == "Incorrect API key provided.", "grace 0: the secret before stops"
    await chat(single, abrupt["value"])
    defaulted = await admin(single, "POST", f"/{made['id']}/rotate")  # no body: an hour's grace
    assert defaulted.json()["previous_expires_at"] == defaulted.json()["rotated_at"] + 3600
    await chat(single, abrupt["value"])


async def test_what_a_key_says_holds_for_its_requests(single: ProxyProcess) -> None:
    made = await make_key(single, tenant="acme", models=[MODEL])
    await chat(single, made["value"])
    with pytest.raises(openai.NotFoundError):
        await chat(single, made["value"], model=OTHER_MODEL)
    changed = await admin(single, "PATCH", f"/{made['id']}", json={"models": None, "team": "search"})
    assert (changed.json()["models"], changed.json()["team"]) == (None, "search")
    await chat(single, made["value"], model=OTHER_MODEL)

    async def billed_to_acme() -> None:
        rows = (await single.admin("/admin/usage", group_by="tenant", start="1h"))["data"]
        assert {row["tenant"]: row["requests"] for row in rows} == {"acme": 2}

    await eventually(billed_to_acme)
    expiring = await admin(single, "PATCH", f"/{made['id']}", json={"expires_at": 4_000_000_000})
    assert expiring.json()["expires_at"] == 4_000_000_000
    await chat(single, made["value"])


async def test_list_pages_and_filters(single: ProxyProcess) -> None:
    made = [await make_key(single, name=f"k{i}", team="red" if i % 2 else "blue") for i in range(5)]
    first = (await admin(single, "GET", "", params={"limit": "3"})).json()
    assert [k["id"] for k in first["data"]] == ["ops", made[0]["id"], made[1]["id"]]
    assert first["has_more"]
    assert first["last_id"] == made[1]["id"]
    rest = (await admin(single, "GET", "", params={"limit": "3", "after": first["last_id"]})).json()
    assert [k["id"] for k in rest["data"]] == [k["id"] for k in made[2:]]
    assert not rest["has_more"]
    red = (await admin(single, "GET", "", params={"team": "red"})).json()["data"]
    assert [k["name"] for k in red] == ["k1", "k3"]
    await admin(single, "DELETE", f"/{made[1]['id']}")  # the last key of the first page leaves the list
    after_revoked = (await admin(single, "GET", "", params={"after": made[1]["id"]})).json()
    assert [k["id"] for k in after_revoked["data"]] == [k["id"] for k in made[2:]]
    assert all("value" not in k for k in first["data"] + rest["data"])


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "", {"content": b"{not json"}, 400, "could not parse the JSON body"),
    ("POST", "", {"json": ["a", "list"]}, 400, "must be a JSON object"),
    ("POST", "", {"content": b""}, 400, "must be a JSON object"),
    ("POST", "", {"json": {}}, 400, "name: Field required"),
    ("POST", "", {"json": {"name": "x", "colour": "red"}}, 400, "colour: Extra inputs are not permitted"),
    ("POST", "", {"json": {"name": "x", "models": ["nope"]}}, 400, "Unknown model 'nope'"),
    ("POST", "", {"json": {"name": "x", "models": [MODEL, MODEL]}}, 400, "more than once"),
    ("POST", "", {"json": {"name": "x", "mode": "sometimes"}}, 400, "mode: Input should be"),
    ("POST", "", {"json": {"name": "x", "deadline_s": -1}}, 400, "deadline_s: Input should be greater"),
    ("POST", "", {"json": {"name": "x", "expires_at": 1}}, 400, "expires_at must be in the future"),
    ("POST", "", {"json": {"name": "x", "metadata": {"a": 1}}}, 400, "metadata.a: Input should be a valid"),
    ("POST", "", {"json": {"name": ""}}, 400, "name: String should have at least 1 character"),
    ("POST", "", {"json": {"name": "x"}, "headers": {}}, 401, "needs the admin key"),
    (
        "POST",
        "",
        {"json": {"name": "x"}, "headers": {"Authorization": f"Bearer {CLIENT_KEY}"}},
        403,
        "may not",
    ),
    ("GET", "", {"params": {"limit": "0"}}, 400, "limit must be an integer"),
    ("GET", "", {"params": {"limit": "²"}}, 400, "limit must be an integer"),
    ("POST", "", {"json": {"name": "x", "expires_at": True}}, 400, "expires_at: Input should be a valid"),
    ("POST", "", {"json": {"name": "x", "budgets": [{"limit_usd": 1, "window": "2d"}]}}, 400, "window"),
    ("POST", "", {"json": {"name": "x", "budgets": [{"limit_usd": 0}]}}, 400, "limit_usd: Input should be"),
    (
        "POST",
        "",
        {"json": {"name": "x", "budgets": [{"limit_usd": 1}, {"limit_usd": 2}]}},
        400,
        "two budgets with the same window",
    ),
    (
        "POST",
        "",
        {"json": {"name": "x", "budgets": [{"limit_usd": 1, "time_zone": "Mars/Base"}]}},
        400,
        "time zone",
    ),
    ("GET", "", {"params": {"after": "nobody"}}, 400, "No key 'nobody' to list after"),
    ("GET", "/key_nobody", {}, 404, "No key with id 'key_nobody'"),
    ("PATCH", "/key_nobody", {"json": {"team": "x"}}, 404, "No key with id"),
    ("PATCH", "/{id}", {"json": {"name": None}}, 400, "keeps a name"),
    ("PATCH", "/{id}", {"json": {"tenant": 5}}, 400, "tenant: Input should be a valid string"),
    ("PATCH", "/{id}", {"json": {"id": "key_other"}}, 400, "id: Extra inputs"),
    ("PATCH", "/ops", {"json": {"team": "x"}}, 409, "defined in the config file"),
    ("DELETE", "/ops", {}, 409, "defined in the config file"),
    ("POST", "/ops/rotate", {}, 409, "defined in the config file"),
    ("POST", "/{id}/rotate", {"json": {"grace_s": -1}}, 400, "grace_s: Input should be greater"),
    ("POST", "/{id}/rotate", {"json": {"grace_s": 10**9}}, 400, "grace_s: Input should be less"),
    ("DELETE", "/key_nobody", {}, 404, "No key with id"),
    ("PUT", "/{id}", {"json": {}}, 405, "PUT is not allowed"),
]


async def test_bad_requests_get_a_clear_4xx_and_change_nothing(single: ProxyProcess) -> None:
    made = await make_key(single)
    before = (await admin(single, "GET", "", params={"include_revoked": "true"})).json()
    for method, path, kwargs, status, message in BAD_REQUESTS:
        got = await admin(single, method, path.format(id=made["id"]), **kwargs)
        assert got.status_code == status, (method, path, kwargs, got.text)
        error = got.json()["error"]
        assert message in error["message"], (method, path, kwargs, error)
    after = (await admin(single, "GET", "", params={"include_revoked": "true"})).json()
    assert after == before
    await chat(single, made["value"])
    await admin(single, "DELETE", f"/{made['id']}")
    for method, path in (("PATCH", f"/{made['id']}"), ("POST", f"/{made['id']}/rotate")):
        got = await admin(single, method, path, json={})
        assert (got.status_code, got.json()["error"]["message"]) == (
            409,
            f"The key {made['id']!r} is revoked; make a new one.",
        )


async def test_changes_racing_on_two_replicas_both_land(fleet: tuple[list[ProxyProcess], str]) -> None:
    (a, b), _ = fleet
    made = await make_key(a)
    for round_ in range(5):
        got = await asyncio.gather(
            admin(a, "PATCH", f"/{made['id']}", json={"team": f"team-{round_}"}),
            admin(b, "PATCH", f"/{made['id']}", json={"metadata": {"round": str(round_)}}),
        )
        assert [r.status_code for r in got] == [200, 200]
        now = (await admin(a, "GET", f"/{made['id']}")).json()
        assert (now["team"], now["metadata"]) == (f"team-{round_}", {"round": str(round_)})


async def test_with_metering_off_only_the_config_files_keys_exist(upstream: str, tmp_path: Path) -> None:
    async with running_proxy(config(upstream, "off"), tmp_path) as proxy:
        listed = await admin(proxy, "GET", "")
        assert [k["id"] for k in listed.json()["data"]] == ["ops"]
        made = await admin(proxy, "POST", "", json={"name": "x"})
        assert made.status_code == 404
        assert "metering is off" in made.json()["error"]["message"]


async def test_with_no_keys_on_loopback_the_proxy_is_open_until_a_key_is_made(
    upstream: str, tmp_path: Path
) -> None:
    open_config = config(upstream, sqlite_url(tmp_path / "open.sqlite3"))
    del open_config["keys"], open_config["server"]["admin_key"]
    async with running_proxy(open_config, tmp_path) as proxy:
        await chat(proxy, "anything")
        made = await admin(proxy, "POST", "", json={"name": "first"}, headers={})
        assert made.status_code == 201, "the admin API is open on loopback with no keys and no admin key"
        assert await refused(proxy, "anything") == "Incorrect API key provided."
        await chat(proxy, made.json()["value"])
        listed = await admin(proxy, "GET", "", headers={})
        assert listed.status_code == 200, "and stays open, or nobody could manage the keys"
