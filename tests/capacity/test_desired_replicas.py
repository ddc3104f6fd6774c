"""Desired replicas decided from a real meter store's minutes, and the actuators acting on them.

The store holds synthetic minutes (what the meter would have flushed); the planner's clock is fake, so a
load step up and down is a few writes and ticks, never a wait. The webhook actuator POSTs to a real local
receiver, the command actuator runs a real script. On SQLite and on Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.clocks import T0, FakeClock
from tests.support.config import backend
from tests.support.receiver import receiving
from tests.support.stores import Stores
from tokenyard.adapters.base import Webhook
from tokenyard.adapters.webhook import WebhookSender
from tokenyard.capacity.desired import CapacityEstimate
from tokenyard.capacity.planner import DECISIONS_DOC, CapacityPlanner
from tokenyard.capacity.shared_replicas import publish_replicas, published_replicas
from tokenyard.config import TokenyardConfig
from tokenyard.errors import StoreUnavailable
from tokenyard.meter.model import AGG_FIELDS, AggKey, FlushBatch
from tokenyard.meter.store import MeterStore
from tokenyard.stores.documents import read_json_dict

WEEK_S = 7 * 86400
SECRET = "whsec-capacity-0123"
PER_REPLICA = CapacityEstimate(600.0, "measured: 600 tok/s")  # output tokens/s one replica serves at the SLA
_batch_ids = (f"synthetic-{n}" for n in itertools.count())


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[MeterStore]:
    stores = Stores(request.param, tmp_path, clock)
    try:
        yield stores.open(retention_s=35 * 86400)  # a week ago is still kept
    finally:
        await stores.close()


def config(actuator: dict[str, Any] | None = None, **capacity: Any) -> TokenyardConfig:
    return TokenyardConfig.model_validate(
        {
            "backends": {
                "ded": backend("dedicated", "http://127.0.0.1:9/v1"),
                "api": backend("serverless", "http://127.0.0.1:9/v1"),
            },
            "models": {"llama": {"deployments": ["ded", "api"]}},
            "capacity": {"window_minutes": 3, **capacity, "actuator": actuator},
            "advisor": {"autoscaling": {"scale_out_lead_min": 3}},
        }
    )


def configured() -> dict[str, int | None]:
    """The config file's replicas per backend (a published count stands while the file says the same)."""
    return {name: b.replicas for name, b in config().backends.items()}


async def demand(store: MeterStore, minute: int, tokens_per_s: float, *, backend_name: str = "api") -> None:
    """One minute of real-time demand for llama, as the meter flushes it (spillover to ``api`` counts)."""
    fields = dict.fromkeys(AGG_FIELDS, 0) | {"requests": 10, "completion_tokens": round(tokens_per_s * 60)}
    key = AggKey(minute, "team-a", "llama", backend_name, "serverless", "realtime")
    await store.write(FlushBatch(next(_batch_ids), {key: fields}))


class Fleet:
    """The replicas this proxy replica counts per backend, as the planner reads and changes them."""

    def __init__(self) -> None:
        self.replicas = {"ded": 1}

    def provisioned(self, name: str) -> int:
        return self.replicas[name]

    def apply(self, name: str, n: int) -> None:
        self.replicas[name] = n


def planner(
    store: MeterStore,
    cfg: list[TokenyardConfig],
    wall: FakeClock,
    fleet: Fleet,
    webhook: Webhook,
    *,
    replica: str = "replica-a",
) -> CapacityPlanner:
    return CapacityPlanner(
        store,  # type: ignore[arg-type]  # MeterStore is a PlannerStore
        lambda: cfg[0],
        replica=replica,
        capacity=lambda name: PER_REPLICA,
        provisioned=fleet.provisioned,
        apply=fleet.apply,
        advice=lambda: None,
        webhook=webhook,
        wall=wall,
    )


def desired(p: CapacityPlanner) -> tuple[int | None, int | None]:
    assert p.latest is not None
    item = p.latest["backends"][0]
    return item["desired"]["now"], item["desired"]["next"]


async def test_desired_replicas_follow_a_load_step_up_and_down(
    store: MeterStore, webhook: WebhookSender
) -> None:
    wall = FakeClock(T0 + 30)  # half-way through minute T0
    p = planner(store, [config()], wall, Fleet(), webhook)
    for minute in range(T0 - 120, T0 + 60, 60):
        await demand(store, minute, 400)  # under one replica's 600
    await p.tick()
    assert desired(p) == (1, 1)

    wall.advance(60)
    await demand(store, T0 + 60, 1500)  # the step up: 2.5 replicas' worth
    await p.tick()
    assert desired(p) == (3, 3)
    assert p.latest is not None
    assert p.latest["backends"][0]["inputs"]["demand"]["now"]["completion_tokens_per_s"] == 1500.0

    for minute in range(T0 + 120, T0 + 300, 60):  # three quiet minutes: the step has left the window
        wall.advance(60)
        await demand(store, minute, 100)
    await p.tick()
    assert desired(p) == (1, 1)


async def test_next_follows_last_weeks_coming_minutes(store: MeterStore, webhook: WebhookSender) -> None:
    wall = FakeClock(T0 + 30)
    p = planner(store, [config()], wall, Fleet(), webhook)
    await demand(store, T0, 500)
    await demand(store, T0 - WEEK_S + 120, 2000)  # last week, two minutes later, the morning ramp began
    await p.tick()
    assert desired(p) == (1, 4)
    assert p.latest is not None
    assert "a week ago the coming minutes peaked at 2,000.0 output tok/s" in " ".join(
        p.latest["backends"][0]["reasons"]
    )


def signature_ok(headers: dict[str, str], body: bytes) -> bool:
    t, v1 = (part.split("=", 1)[1] for part in headers["x-tokenyard-signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(v1, expected)


async def test_the_webhook_actuator_posts_signed_steps_within_max_step_and_cool_down(
    store: MeterStore, webhook: WebhookSender
) -> None:
    async with receiving() as (port, got):
        actuator = {
            "kind": "webhook",
            "url": f"http://127.0.0.1:{port}/scale",
            "allow_hosts": ["127.0.0.1"],
            "secret": SECRET,
            "dry_run": False,
            "max_step": 1,
            "cooldown_s": 120,
        }
        wall, fleet = FakeClock(T0 + 30), Fleet()
        p = planner(store, [config(actuator)], wall, fleet, webhook)
        await demand(store, T0, 1500)  # 3 replicas wanted, 1 running
        await p.tick()
        assert len(got) == 1
        headers, body = got[0]
        assert signature_ok(headers, body)
        sent = orjson.loads(body)
        assert (sent["backend"], sent["from"], sent["replicas"]) == ("ded", 1, 2)  # one step at most
        assert sent["desired"] == {"now": 3, "next": 3}
        assert fleet.replicas["ded"] == 2  # this replica counts it at once...
        assert await published_replicas(store, configured()) == {
            "ded": 2
        }  # ...and every other one from the store

        wall.advance(60)
        await p.tick()  # within the cool-down: nothing sent
        assert len(got) == 1
        assert p.latest is not None
        assert p.latest["backends"][0]["actuator"]["step"].startswith("cool-down: 60 s")

        wall.advance(60)
        await p.tick()
        assert [orjson.loads(b)["replicas"] for _, b in got] == [2, 3]
        assert fleet.replicas["ded"] == 3
        log = p.latest["decisions"]
        assert [(d["from"], d["to"], d["ok"]) for d in log] == [(1, 2, True), (2, 3, True)]
        assert log[0]["outcome"] == "webhook answered 204"


async def test_a_dry_run_decides_and_logs_but_applies_nothing(
    store: MeterStore, webhook: WebhookSender
) -> None:
    async with receiving() as (port, got):
        actuator = {"kind": "webhook", "url": f"http://127.0.0.1:{port}/", "allow_hosts": ["127.0.0.1"]}
        wall, fleet = FakeClock(T0 + 30), Fleet()
        p = planner(store, [config(actuator)], wall, fleet, webhook)  # dry_run is the default
        await demand(store, T0, 1500)
        await p.tick()
        assert got == []
        assert fleet.replicas["ded"] == 1
        assert await published_replicas(store, configured()) == {}
        assert p.latest is not None
        [entry] = p.latest["decisions"]
        assert (entry["from"], entry["to"], entry["dry_run"], entry["outcome"]) == (
            1,
            3,
            True,
            "dry run: not applied",
        )


SCRIPT = """\
import sys
with open(sys.argv[1], "a") as log:
    log.write(" ".join(sys.argv[2:]) + "\\n")
if sys.argv[3] == "13":
    sys.stderr.write("quota exceeded for 13 replicas")
    sys.exit(3)
"""


async def test_the_command_actuator_runs_the_argv_and_a_failure_changes_nothing(
    store: MeterStore, webhook: WebhookSender, tmp_path: Path
) -> None:
    script, ran = tmp_path / "scale.py", tmp_path / "ran.txt"
    script.write_text(SCRIPT)
    actuator = {
        "kind": "command",
        "command": [sys.executable, str(script), str(ran), "{backend}", "{replicas}"],
        "dry_run": False,
        "max_step": 4,
        "max_replicas": 20,
        "cooldown_s": 0,
    }
    wall, fleet = FakeClock(T0 + 30), Fleet()
    p = planner(store, [config(actuator)], wall, fleet, webhook)
    await demand(store, T0, 2000)  # 4 replicas wanted (3.33)
    await p.tick()
    assert ran.read_text() == "ded 4\n"
    assert fleet.replicas["ded"] == 4

    fleet.replicas["ded"] = 9
    wall.advance(60)
    await demand(store, T0 + 60, 7700)  # 13 wanted: the script refuses
    await p.tick()
    assert ran.read_text().splitlines() == ["ded 4", "ded 13"]
    assert fleet.replicas["ded"] == 9
    assert p.latest is not None
    failed = p.latest["decisions"][-1]
    assert failed["ok"] is False
    assert failed["outcome"] == "failed: exit 3: quota exceeded for 13 replicas"
    assert await published_replicas(store, configured()) == {"ded": 4}


async def test_one_replica_leads_and_the_lead_moves_with_its_log_and_cool_downs(
    store: MeterStore, webhook: WebhookSender, tmp_path: Path
) -> None:
    actuator = {"kind": "command", "command": ["true"], "dry_run": False, "max_step": 1, "cooldown_s": 300}
    cfg, wall = [config(actuator)], FakeClock(T0 + 30)
    a = planner(store, cfg, wall, Fleet(), webhook, replica="replica-a")
    b = planner(store, cfg, wall, Fleet(), webhook, replica="replica-b")
    await demand(store, T0, 1500)
    await a.tick()
    await b.tick()
    assert (a.leader, b.leader) == (True, False)
    assert b.latest == a.latest  # every replica serves the leader's document
    assert b.latest is not None
    assert len(b.latest["decisions"]) == 1

    await store.release_lock("capacity", "replica-a")  # replica a stops
    wall.advance(60)
    await b.tick()
    assert b.leader
    assert b.latest is not None
    assert len(b.latest["decisions"]) == 1  # the log came along
    assert b.latest["backends"][0]["actuator"]["step"].startswith("cool-down: 240 s")  # and the cool-down


class Scaler:
    """A webhook scaler in the test's loop: answers 204, and runs ``during`` while it is being called."""

    def __init__(self, during: Callable[[], Awaitable[None]]) -> None:
        self.during = during
        self.posts: list[tuple[str, dict[str, Any]]] = []

    async def post(self, url: str, payload: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        self.posts.append((url, orjson.loads(payload)))
        await self.during()
        return 204

    async def aclose(self) -> None:
        return None


async def nothing() -> None:
    return None


TOKEN_URL = "https://user:pw@scaler.internal:8443/hooks/s3cr3t?token=s3cr3t"


def webhook_actuator(**settings: Any) -> dict[str, Any]:
    return {
        "kind": "webhook",
        "url": TOKEN_URL,
        "allow_hosts": ["scaler.internal"],
        "dry_run": False,
        "max_step": 1,
        "cooldown_s": 120,
    } | settings


async def test_each_decision_and_its_cool_down_are_stored_before_it_is_applied_and_show_no_secrets(
    store: MeterStore,
) -> None:
    stored_while_applying: list[dict[str, Any] | None] = []

    async def read_the_document() -> None:
        stored_while_applying.append(await read_json_dict(store, DECISIONS_DOC))

    scaler, wall, fleet = Scaler(read_the_document), FakeClock(T0 + 30), Fleet()
    p = planner(store, [config(webhook_actuator())], wall, fleet, scaler)
    await demand(store, T0, 1500)
    await p.tick()
    [(url, sent)] = scaler.posts
    assert (url, sent["replicas"]) == (TOKEN_URL, 2)  # the scaler gets the real URL
    [during] = stored_while_applying
    assert during is not None
    assert during["last_action_at"] == {"ded": T0 + 30}  # a replica taking the lead now would wait
    assert [(d["to"], d["outcome"]) for d in during["decisions"]] == [(2, "pending: being applied")]
    assert p.latest is not None
    assert p.latest["decisions"][-1]["outcome"] == "webhook answered 204"
    for document in (during, p.latest, await read_json_dict(store, DECISIONS_DOC)):
        assert document is not None
        assert document["actuator"]["url"] == "https://scaler.internal:8443"
        assert b"s3cr3t" not in orjson.dumps(document)
        assert b"user:pw" not in orjson.dumps(document)


async def test_a_leader_that_lost_the_lock_while_acting_stops_acting(store: MeterStore) -> None:
    async def another_replica_takes_the_lead() -> None:
        await store.release_lock("capacity", "replica-a")
        assert await store.try_lock("capacity", "replica-b", 90)

    cfg = TokenyardConfig.model_validate(
        {
            "backends": {
                "ded": backend("dedicated", "http://127.0.0.1:9/v1"),
                "ded2": backend("dedicated", "http://127.0.0.1:9/v1"),
                "api": backend("serverless", "http://127.0.0.1:9/v1"),
            },
            "models": {"llama": {"deployments": ["ded", "ded2", "api"]}},
            "capacity": {"window_minutes": 3, "actuator": webhook_actuator()},
        }
    )
    scaler, wall, fleet = Scaler(another_replica_takes_the_lead), FakeClock(T0 + 30), Fleet()
    fleet.replicas["ded2"] = 1
    p = planner(store, [cfg], wall, fleet, scaler)
    await demand(store, T0, 3000)  # 3 replicas wanted on each
    await p.tick()
    assert [sent["backend"] for _, sent in scaler.posts] == ["ded"]  # ded2 was left to the new leader
    assert fleet.replicas == {"ded": 2, "ded2": 1}
    assert not p.leader
    stored = await read_json_dict(store, DECISIONS_DOC)
    assert stored is not None
    assert stored["last_action_at"] == {"ded": T0 + 30}  # the new leader keeps ded's cool-down


class SharedCountLost:
    """The store, but the shared replica count's lock cannot be taken (the store went away for it)."""

    def __init__(self, store: MeterStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        if name == "capacity:replicas":
            raise StoreUnavailable("the store went away")
        return await self._store.try_lock(name, owner, ttl_s)


async def test_an_actuation_the_store_cannot_share_counts_as_failed_and_changes_nothing(
    store: MeterStore,
) -> None:
    wall, fleet = FakeClock(T0 + 30), Fleet()
    p = CapacityPlanner(
        SharedCountLost(store),  # type: ignore[arg-type]  # a PlannerStore by delegation
        lambda: config(webhook_actuator()),
        replica="replica-a",
        capacity=lambda name: PER_REPLICA,
        provisioned=fleet.provisioned,
        apply=fleet.apply,
        advice=lambda: None,
        webhook=Scaler(nothing),
        wall=wall,
    )
    await demand(store, T0, 1500)
    await p.tick()
    assert fleet.replicas["ded"] == 1  # not counted here: the next beat would have reverted it
    assert p.latest is not None
    [entry] = p.latest["decisions"]
    assert entry["ok"] is False
    assert entry["outcome"].startswith("failed: webhook answered 204, but not counted")
    assert await published_replicas(store, configured()) == {}


async def test_a_changed_replicas_in_the_config_file_wins_over_an_older_published_count(
    store: MeterStore,
) -> None:
    wall, fleet = FakeClock(T0 + 30), Fleet()
    p = planner(store, [config(webhook_actuator())], wall, fleet, Scaler(nothing))
    await demand(store, T0, 1500)
    await p.tick()
    assert await published_replicas(store, configured()) == {"ded": 2}  # the file still says 1: it stands
    redeployed = configured() | {"ded": 4}  # the file now says 4: the older count gives way
    assert await published_replicas(store, redeployed) == {}


SECRET_SCRIPT = """\
import sys
sys.stderr.write("denied: " + " ".join(sys.argv[1:]))
sys.exit(1)
"""


async def test_a_command_actuator_shows_its_program_only_and_no_flag_values(
    store: MeterStore, webhook: WebhookSender, tmp_path: Path
) -> None:
    script = tmp_path / "scale.py"
    script.write_text(SECRET_SCRIPT)
    actuator = {
        "kind": "command",
        "command": [sys.executable, str(script), "--token=s3cr3t", "{replicas}"],
        "dry_run": False,
    }
    p = planner(store, [config(actuator)], FakeClock(T0 + 30), Fleet(), webhook)
    await demand(store, T0, 1500)
    await p.tick()
    assert p.latest is not None
    assert p.latest["actuator"]["command"] == [sys.executable]
    assert p.latest["decisions"][-1]["outcome"] == "failed: exit 1: denied: --token=… 3"
    assert b"s3cr3t" not in orjson.dumps(p.latest)


async def test_two_counts_set_at_once_on_one_replica_both_land(store: MeterStore) -> None:
    # An admin PUT and an actuation on the same proxy replica: each holds the lock on its own.
    await asyncio.gather(
        *(
            publish_replicas(store, name, n, config_replicas=1, by="replica-a", source="admin", at=T0)
            for name, n in (("ded", 3), ("ded2", 5), ("ded3", 7))
        )
    )
    assert await published_replicas(store, {"ded": 1, "ded2": 1, "ded3": 1}) == {
        "ded": 3,
        "ded2": 5,
        "ded3": 7,
    }
