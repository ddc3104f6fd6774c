"""``tokenyard keys`` against a running proxy: a key made on the command line works with the openai SDK, and
list, get, update, rotate and revoke do what the admin API says, for a person (text) or a script (--json).
The admin key comes from an option, the environment or the config file, and a command that fails says why
on stderr and exits 1."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
import yaml

from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.net import free_port
from tests.support.proxy import ProxyProcess, run_cli, running_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, USER_HELLO, simulators
from tests.support.stores import fresh_prefix
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama"
OTHER_MODEL = "mistral"
PRICES = {"input_per_1m": 1.0, "output_per_1m": 2.0}
SECRET_LINE = re.compile(r"^\s+(ty-[A-Za-z0-9_-]{43})$", re.MULTILINE)


@pytest_asyncio.fixture(scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProxyProcess]:
    """One proxy for the module, keeping its keys in Redis; each test works under a tenant of its own."""
    prefix = fresh_prefix()
    async with simulators(api=SimulatorConfig.model_validate(FAST_UPSTREAM)) as sims:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "meter": {"store": REDIS_URL, "redis_prefix": prefix},
            "backends": {"api": backend("serverless", sims["api"].base_url, prices=PRICES)},
            "models": {MODEL: {"deployments": ["api"]}, OTHER_MODEL: {"deployments": ["api"]}},
            "keys": {"team-a": {"key": CLIENT_KEY}},
        }
        try:
            async with running_proxy(config, tmp_path_factory.mktemp("keys-cli")) as running:
                yield running
        finally:
            await delete_prefix(prefix)


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any tokenyard settings of the machine's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENYARD_CONFIG", "TOKENYARD_ADMIN_KEY")}
    return {**env, **extra}


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tokenyard ARGS``, run in a thread so the simulator in this event loop keeps answering."""
    return await asyncio.to_thread(run_cli, *args, env=env if env is not None else clean_env())


async def keys(proxy: ProxyProcess, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tokenyard keys COMMAND ARGS`` against ``proxy``, the admin key in the environment: it succeeds."""
    done = await cli("keys", command, *args, "--url", proxy.url, env=clean_env(TOKENYARD_ADMIN_KEY=ADMIN_KEY))
    assert done.returncode == 0, done.stderr
    assert ADMIN_KEY not in done.stdout + done.stderr
    return done


async def keys_json(proxy: ProxyProcess, command: str, *args: str) -> Any:
    return json.loads((await keys(proxy, command, *args, "--json")).stdout)


async def failed(*args: str, env: dict[str, str] | None = None) -> str:
    """What ``tokenyard ARGS`` printed on stderr when it exited 1 (and nothing on stdout)."""
    done = await cli(*args, env=env)
    assert (done.returncode, done.stdout) == (1, ""), done.stdout + done.stderr
    return done.stderr


def secret_in(stdout: str) -> str:
    """The secret a create or rotate printed, on a line of its own."""
    found = SECRET_LINE.findall(stdout)
    assert len(found) == 1, stdout
    secret: str = found[0]
    return secret


async def made(proxy: ProxyProcess, *options: str) -> tuple[str, str]:
    """A key made with ``tokenyard keys create``: its id and its secret."""
    key = await keys_json(proxy, "create", *options)
    return key["id"], key["value"]


async def answered(proxy: ProxyProcess, secret: str, model: str = MODEL) -> None:
    async with proxy.client(key=secret) as client:
        completion = await client.chat.completions.create(model=model, messages=USER_HELLO)
    assert completion.choices[0].message.content


async def refused(proxy: ProxyProcess, secret: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        await answered(proxy, secret)


async def listed_ids(proxy: ProxyProcess, *options: str) -> list[str]:
    return [key["id"] for key in (await keys_json(proxy, "list", *options))["data"]]


async def test_a_key_made_on_the_command_line_works_with_the_sdk_and_its_secret_is_shown_once(
    proxy: ProxyProcess, tenant: str
) -> None:
    done = await keys(
        proxy,
        "create",
        *("--name", "ci-bot", "--tenant", tenant, "--team", "search", "--model", MODEL),
        *("--mode", "realtime", "--deadline-s", "600", "--metadata", "owner=ana", "--expires-in", "30d"),
    )
    secret = secret_in(done.stdout)
    assert "will not be shown again" in done.stdout
    key_id = re.findall(r"\bkey_[0-9a-f]+", done.stdout)[0]
    assert secret[:8] in done.stdout.replace(secret, "")
    await answered(proxy, secret)
    with pytest.raises(openai.NotFoundError):  # --model: this one only
        await answered(proxy, secret, OTHER_MODEL)

    key = await keys_json(proxy, "get", key_id)
    assert "value" not in key
    assert secret not in json.dumps(key)
    fields = ("name", "tenant", "team", "models", "mode", "deadline_s", "metadata")
    assert [key[name] for name in fields] == [
        "ci-bot",
        tenant,
        "search",
        [MODEL],
        "realtime",
        600,
        {"owner": "ana"},
    ]
    assert 29 * 86400 < key["expires_at"] - time.time() <= 30 * 86400
    assert (key["status"], key["source"], key["prefix"]) == ("active", "api", secret[:8])


async def test_list_get_update_rotate_and_revoke_round_trip(proxy: ProxyProcess, tenant: str) -> None:
    key_id, secret = await made(proxy, "--name", "indexer", "--tenant", tenant, "--team", "search")
    other_id, _ = await made(proxy, "--name", "crawler", "--tenant", tenant)

    table = (await keys(proxy, "list", "--tenant", tenant)).stdout
    assert key_id in table
    assert other_id in table
    assert "indexer" in table
    assert "2 keys" in table
    assert "team-a" not in table, "--tenant keeps to that tenant's keys"
    assert await listed_ids(proxy, "--tenant", tenant, "--team", "search") == [key_id]
    assert "team-a" in await listed_ids(proxy), "the config file's keys are listed too"
    shown = (await keys(proxy, "get", key_id)).stdout
    assert re.search(r"team\s+search", shown)
    assert re.search(r"status\s+active", shown)

    expires_at = int(time.time()) + 86400
    updated = await keys(
        proxy,
        "update",
        key_id,
        *("--team", "ranking", "--model", MODEL, "--model", OTHER_MODEL, "--mode", "async"),
        *("--deadline-s", "900", "--metadata", "env=prod", "--expires-at", str(expires_at)),
    )
    assert "Updated" in updated.stdout
    key = await keys_json(proxy, "get", key_id)
    assert (key["team"], key["models"], key["mode"], key["deadline_s"]) == (
        "ranking",
        [MODEL, OTHER_MODEL],
        "async",
        900,
    )
    assert (key["metadata"], key["expires_at"], key["name"]) == ({"env": "prod"}, expires_at, "indexer")

    clears = ("--clear-team", "--clear-models", "--clear-mode", "--clear-deadline", "--clear-metadata")
    key = await keys_json(proxy, "update", key_id, *clears, "--clear-expiry")
    assert (key["team"], key["models"], key["mode"], key["deadline_s"]) == (None, None, None, None)
    assert (key["metadata"], key["expires_at"]) == ({}, None)
    await answered(proxy, secret)

    rotated = await keys(proxy, "rotate", key_id, "--grace", "0")
    new_secret = secret_in(rotated.stdout)
    assert "no longer works" in rotated.stdout
    await refused(proxy, secret)
    await answered(proxy, new_secret)
    rotated = await keys(proxy, "rotate", key_id)  # the default grace: an hour
    newer_secret = secret_in(rotated.stdout)
    assert "previous secret works until" in rotated.stdout
    await answered(proxy, new_secret)
    await answered(proxy, newer_secret)

    revoked = await keys(proxy, "revoke", key_id)
    assert f"Revoked key {key_id}" in revoked.stdout
    await refused(proxy, newer_secret)
    await refused(proxy, new_secret)
    assert await listed_ids(proxy, "--tenant", tenant) == [other_id]
    assert await listed_ids(proxy, "--tenant", tenant, "--all") == [key_id, other_id]
    assert "revoked" in (await keys(proxy, "list", "--tenant", tenant, "--all")).stdout


async def test_list_pages_through_every_key(proxy: ProxyProcess, tenant: str) -> None:
    ids = [(await made(proxy, "--name", f"worker-{i}", "--tenant", tenant))[0] for i in range(5)]
    listed = await keys_json(proxy, "list", "--tenant", tenant, "--page-size", "2")
    assert [key["id"] for key in listed["data"]] == ids
    assert (listed["object"], listed["first_id"], listed["last_id"], listed["has_more"]) == (
        "list",
        ids[0],
        ids[-1],
        False,
    )
    table = (await keys(proxy, "list", "--tenant", tenant, "--page-size", "2")).stdout
    assert all(key_id in table for key_id in ids)
    assert "5 keys" in table


async def test_every_command_prints_the_apis_json_with_json(proxy: ProxyProcess, tenant: str) -> None:
    key = await keys_json(proxy, "create", "--name", "scripted", "--tenant", tenant)
    assert (key["object"], key["status"], key["prefix"]) == ("tokenyard.key", "active", key["value"][:8])
    assert await keys_json(proxy, "get", key["id"]) == {k: v for k, v in key.items() if k != "value"}
    assert (await keys_json(proxy, "update", key["id"], "--team", "ops"))["team"] == "ops"
    rotated = await keys_json(proxy, "rotate", key["id"], "--grace", "90s")
    assert rotated["value"] != key["value"]
    assert rotated["rotated_at"] is not None
    assert rotated["previous_expires_at"] - rotated["rotated_at"] == 90
    assert await keys_json(proxy, "revoke", key["id"]) == {
        "object": "tokenyard.key.deleted",
        "id": key["id"],
        "deleted": True,
    }
    assert (await keys_json(proxy, "list", "--tenant", tenant))["data"] == []


async def test_the_address_and_admin_key_come_from_the_config_file_whose_other_secrets_need_not_be_set(
    proxy: ProxyProcess, tenant: str, tmp_path: Path
) -> None:
    assert proxy.config_path is not None
    config = yaml.safe_load(proxy.config_path.read_text())
    config["server"].update(port=proxy.port, admin_key="${TEST_KEYS_ADMIN_KEY}")
    config["backends"]["api"]["api_key"] = "${TEST_KEYS_UNSET_UPSTREAM_SECRET}"
    path = tmp_path / "tokenyard.yaml"
    path.write_text(yaml.safe_dump(config))
    env = clean_env(TEST_KEYS_ADMIN_KEY=ADMIN_KEY)

    done = await cli(
        "keys", "create", "--name", "from-config", "--tenant", tenant, "--config", str(path), env=env
    )
    assert done.returncode == 0, done.stderr
    await answered(proxy, secret_in(done.stdout))
    done = await cli("keys", "list", "--tenant", tenant, env={**env, "TOKENYARD_CONFIG": str(path)})
    assert done.returncode == 0, done.stderr
    assert "from-config" in done.stdout
    assert ADMIN_KEY not in done.stdout + done.stderr

    message = await failed("keys", "list", "--config", str(path))
    assert "server.admin_key: environment variable TEST_KEYS_ADMIN_KEY is not set" in message


async def test_a_wrong_or_missing_admin_key_exits_1_with_the_apis_message(proxy: ProxyProcess) -> None:
    wrong = "sk-not-the-admin-key-0123"
    message = await failed("keys", "list", "--url", proxy.url, "--admin-key", wrong)
    assert "This key may not use the admin API." in message
    assert wrong not in message
    env = clean_env(TOKENYARD_ADMIN_KEY=CLIENT_KEY)
    message = await failed("keys", "create", "--name", "x", "--url", proxy.url, env=env)
    assert "This key may not use the admin API." in message
    assert CLIENT_KEY not in message
    message = await failed("keys", "list", "--url", proxy.url)
    assert "The admin API needs the admin key as a Bearer token." in message
    assert "$TOKENYARD_ADMIN_KEY" in message


async def test_what_the_api_refuses_exits_1_with_its_message(proxy: ProxyProcess) -> None:
    env = clean_env(TOKENYARD_ADMIN_KEY=ADMIN_KEY)
    where = ("--url", proxy.url)
    assert "No key with id 'key_nope'." in await failed("keys", "get", "key_nope", *where, env=env)
    message = await failed("keys", "create", "--name", "x", "--model", "gpt-nope", *where, env=env)
    assert "Unknown model 'gpt-nope'." in message
    assert "models[0]" in message
    message = await failed("keys", "revoke", "team-a", *where, env=env)
    assert "defined in the config file" in message
    await answered(proxy, CLIENT_KEY)


async def test_a_proxy_that_is_not_running_exits_1_naming_its_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    message = await failed("keys", "list", "--url", url, "--admin-key", ADMIN_KEY)
    assert f"cannot reach the proxy at {url}: connection refused" in message
    assert ADMIN_KEY not in message
    port = free_port()
    path = tmp_path / "tokenyard.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": port, "admin_key": ADMIN_KEY}}))
    message = await failed("keys", "revoke", "key_abc", "--config", str(path))
    assert f"http://127.0.0.1:{port}" in message
    assert ADMIN_KEY not in message


@pytest.mark.parametrize("command", ["create", "list", "get", "update", "rotate", "revoke"])
async def test_each_command_explains_itself_with_examples(command: str) -> None:
    done = await cli("keys", command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: tokenyard keys {command}")
    assert f"examples:\n  tokenyard keys {command}" in done.stdout
    assert all(option in done.stdout for option in ("--url", "--config", "--admin-key", "--json"))


async def test_keys_alone_lists_its_commands() -> None:
    done = await cli("keys", "--help")
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in ("create", "list", "get", "update", "rotate", "revoke"))
    assert re.search(r"^\s+keys\s+make, list", (await cli("--help")).stdout, re.MULTILINE)
