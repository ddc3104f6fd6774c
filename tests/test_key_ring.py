"""The key ring: config file keys by their secret, admin API keys by its hash, expiry and rotation's grace
on a clock the test moves, and when the proxy is open."""

from __future__ import annotations

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from tests.support.clocks import T0, FakeClock
from tokenyard.admission.auth import KeyRing, Principal
from tokenyard.admission.managed_keys import (
    SECRET_PREFIX,
    KeyCreate,
    KeyUpdate,
    ManagedKey,
    new_secret,
    stored_keys,
)
from tokenyard.config import KeyConfig, TokenyardConfig
from tokenyard.errors import AuthenticationFailed

CONFIG_SECRET = "sk-config-key-0123456789"


def bearer(secret: str) -> bytes:
    return f"Bearer {secret}".encode()


def made(secret: str, now: int = int(T0), **fields: object) -> ManagedKey:
    return ManagedKey.made("key_abc", KeyCreate.model_validate({"name": "team-x", **fields}), secret, now)


def ring(*records: ManagedKey, clock: FakeClock, config: bool = True, loopback: bool = False) -> KeyRing:
    keys = {"ops": KeyConfig(key=SecretStr(CONFIG_SECRET))} if config else {}
    return KeyRing(keys, loopback=loopback, stored=stored_keys(list(records)), wall=clock)


def refused(keys: KeyRing, secret: str) -> str:
    with pytest.raises(AuthenticationFailed) as raised:
        keys.authenticate(bearer(secret))
    return raised.value.message


def test_a_made_key_is_found_by_its_secret_and_acts_as_what_it_says() -> None:
    secret = new_secret()
    record = made(secret, tenant="acme", team="search", models=["llama"], mode="async", deadline_s=600)
    keys = ring(record, clock=FakeClock(T0))
    assert keys.authenticate(bearer(secret)) == Principal(
        "acme", frozenset({"llama"}), "key_abc", "async", 600, team="search"
    )
    assert keys.authenticate(bearer(CONFIG_SECRET)).key_name == "ops"
    assert refused(keys, secret + "x") == "Incorrect API key provided."


def test_the_record_keeps_a_hash_and_a_prefix_never_the_secret() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) == len(SECRET_PREFIX) + 43
    record = made(secret)
    stored = record.model_dump_json()
    assert secret not in stored
    assert secret[8:20] not in stored
    assert record.prefix == secret[:8]
    view = record.public(T0)
    assert "secret_sha256" not in view
    assert "previous_sha256" not in view
    assert secret not in str(view)
    assert view["tenant"] == "team-x", "the tenant defaults to the key's name"


def test_an_expired_key_is_told_so_from_its_expiry_on() -> None:
    clock = FakeClock(T0)
    secret = new_secret()
    keys = ring(made(secret, expires_at=int(T0) + 60), clock=clock)
    clock.advance(59.9)
    assert keys.authenticate(bearer(secret)).key_name == "key_abc"
    clock.advance(0.1)
    assert refused(keys, secret) == "This API key has expired."


def test_a_rotated_out_secret_works_until_its_grace_ends_then_reads_as_any_wrong_key() -> None:
    clock = FakeClock(T0)
    old, new = new_secret(), new_secret()
    rotated = made(old).rotated(new, 300, int(T0))
    keys = ring(rotated, clock=clock)
    assert keys.authenticate(bearer(old)) == keys.authenticate(bearer(new))
    clock.advance(299)
    assert keys.authenticate(bearer(old)).key_name == "key_abc"
    clock.advance(1)
    assert refused(keys, old) == "Incorrect API key provided."
    assert keys.authenticate(bearer(new)).key_name == "key_abc"


def test_a_rotation_without_grace_stops_the_old_secret_at_once_and_the_key_expiry_bounds_the_grace() -> None:
    clock = FakeClock(T0)
    old, new, newer = new_secret(), new_secret(), new_secret()
    assert (
        refused(ring(made(old).rotated(new, 0, int(T0)), clock=clock), old) == "Incorrect API key provided."
    )
    bounded = made(old, expires_at=int(T0) + 10).rotated(newer, 3600, int(T0))
    keys = ring(bounded, clock=clock)
    clock.advance(10)
    assert refused(keys, old) == "Incorrect API key provided."
    assert refused(keys, newer) == "This API key has expired."


def test_a_revoked_key_is_refused() -> None:
    secret = new_secret()
    keys = ring(made(secret).revoked(int(T0)), clock=FakeClock(T0))
    assert refused(keys, secret) == "Incorrect API key provided."


def test_an_update_changes_only_the_fields_sent_and_null_clears_an_optional_one() -> None:
    record = made(new_secret(), team="search", metadata={"owner": "ana"}, expires_at=int(T0) + 99)
    changed = record.updated(KeyUpdate.model_validate({"team": None, "models": ["a"]}), int(T0) + 5)
    assert (changed.team, changed.models, changed.metadata) == (None, ["a"], {"owner": "ana"})
    assert (changed.expires_at, changed.updated_at, changed.created_at) == (
        int(T0) + 99,
        int(T0) + 5,
        int(T0),
    )
    with pytest.raises(ValidationError, match="keeps a name"):
        KeyUpdate.model_validate({"name": None})
    with pytest.raises(ValidationError, match="more than once"):
        KeyUpdate.model_validate({"models": ["a", "a"]})


def test_the_proxy_is_open_only_on_loopback_with_no_keys_and_stays_open_to_admins_when_keys_are_made() -> (
    None
):
    clock = FakeClock(T0)
    anyone = KeyRing({}, loopback=True, wall=clock)
    assert anyone.is_open
    assert anyone.admin_open
    assert anyone.authenticate(None).tenant == "default"
    secret = new_secret()
    anyone.stored = stored_keys([made(secret)])
    assert not anyone.is_open
    assert anyone.admin_open
    assert anyone.authenticate(bearer(secret)).key_name == "key_abc"
    with pytest.raises(AuthenticationFailed, match="didn't provide an API key"):
        anyone.authenticate(None)
    guarded = KeyRing({}, loopback=True, admin_key=True, wall=clock)
    assert guarded.is_open, "no keys: any client on loopback may call the models"
    assert not guarded.admin_open, "but the admin API wants the admin key once there is one"
    public = KeyRing({}, loopback=False, wall=clock)  # an admin key, no keys yet: nobody gets in
    assert not public.is_open
    assert not public.admin_open
    assert refused(public, "anything-at-all") == "Incorrect API key provided."


def test_config_file_keys_may_not_take_the_admin_apis_ids() -> None:
    config = TokenyardConfig.model_validate(
        {
            "backends": {"a": {"kind": "serverless", "base_url": "http://127.0.0.1:1"}},
            "models": {"m": {"deployments": ["a"]}},
            "keys": {"key_0001": {"key": CONFIG_SECRET}},
        }
    )
    assert ("keys.key_0001", "names starting with key_ are the admin API's key ids") in (
        config.cross_reference_problems()
    )


def test_a_record_a_newer_tokenyard_wrote_still_works_here() -> None:
    """A rolling upgrade: fields this version does not know, on the key or in its budgets, are left out."""
    secret = new_secret()
    record = made(secret, budgets=[{"limit_usd": 5, "window": "day"}]).model_dump(mode="json")
    record["colour"] = "blue"
    record["budgets"][0]["burst_usd"] = 1
    read = ManagedKey.model_validate_json(orjson.dumps(record))
    assert read.budgets[0].limit_usd == 5
    keys = ring(read, clock=FakeClock(T0))
    assert keys.authenticate(bearer(secret)).budgets == tuple(read.budgets)
    with pytest.raises(ValidationError, match="burst_usd"):
        KeyCreate.model_validate({"name": "x", "budgets": [{"limit_usd": 5, "burst_usd": 1}]})
