"""Several ``tokenyard serve`` replicas on one Redis — the docker-compose topology, on loopback.

Meter totals stay exact under load spread over the replicas, a job is answered once whichever replica
took it or is polled, and when the dispatcher's leader is killed with -9 mid-batch another replica takes
the lead, resumes the provider batch and nothing is lost or billed twice. The same holds on a Redis
Cluster, whose failover (a master killed, its replica promoted) loses no usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.clocks import FakeClock
from tests.support.config import ADMIN_KEY, CLIENT_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy, start_proxy
from tests.support.redis_servers import REDIS_URL, RedisClusterServers, delete_prefix, redis_url_for
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import fresh_prefix
from tokenyard.config import load_config
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

MODEL = "llama"
REPO = Path(__file__).parent.parent


def config(
    sims: dict[str, Any], prefix: str, *, dedicated: bool = True, store: str = REDIS_URL
) -> dict[str, Any]:
    backends: dict[str, Any] = {
        "api": backend(
            "serverless", sims["api"].base_url, prices={"input_per_1m": 1.0, "output_per_1m": 2.0}
        ),
        "prov": backend("batch", sims["batch"].base_url, prices={"input_per_1m": 0.5, "output_per_1m": 1.0}),
    }
    deployments = ["api"]
    if dedicated:
        backends["ded"] = backend("dedicated", sims["ded"].base_url, max_concurrency=4)
        deployments = ["ded", "api"]
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": backends,
        "models": {MODEL: {"deployments": deployments, "batch": "prov"}},
        "keys": {"team-a": {"key": CLIENT_KEY}},
        "async_track": {
            "realtime_margin_s": 2,
            "batches": {"max_wait_s": 0.2, "poll_s": 0.2, "expected_turnaround_s": 1},
        },
    }


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, Any]]:
    async with simulators(
        ded=SimulatorConfig(mode="dedicated", max_concurrency=8, **FAST_UPSTREAM),
        api=SimulatorConfig(**FAST_UPSTREAM),
        batch=SimulatorConfig(batch_turnaround_s=3, **FAST_UPSTREAM),
    ) as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return fresh_prefix()


Launch = Callable[..., Awaitable[list[ProxyProcess]]]


@pytest.fixture
async def launch(prefix: str, tmp_path: Path) -> AsyncIterator[Launch]:
    """``await launch(cfg, n=3)`` starts n replicas of a config; at the end of the test every replica
    launched is stopped and the prefix's keys on the machine's Redis are deleted."""
    started: list[ProxyProcess] = []

    async def start(cfg: dict[str, Any], n: int = 3) -> list[ProxyProcess]:
        fleet = []
        for _ in range(n):
            fleet.append(await start_proxy(cfg, tmp_path))
            started.append(fleet[-1])
        return fleet

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
        await delete_prefix(prefix)


async def chat(proxy: ProxyProcess, http: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await http.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "count these five words please"}]},
        headers={"Authorization": f"Bearer {CLIENT_KEY}", **headers},
    )


async def usage(proxy: ProxyProcess, http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    got = await http.get(
        f"{proxy.url}/admin/usage",
        params={"start": "1h", "granularity": "total", **params},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    result: dict[str, Any] = got.json()
    return result


@pytest.mark.parametrize("on", ["redis", "redis-cluster"])
async def test_totals_are_exact_and_jobs_answered_once_across_three_replicas(
    sims: dict[str, Any], prefix: str, launch: Launch, on: str, request: pytest.FixtureRequest
) -> None:
    fleet = await launch(config(sims, prefix, store=redis_url_for(on, request)))
    async with httpx.AsyncClient(timeout=30) as http:
        answers = await asyncio.gather(*(chat(fleet[i % 3], http) for i in range(60)))
        assert [a.status_code for a in answers] == [200] * 60
        completion = sum(a.json()["usage"]["completion_tokens"] for a in answers)
        accepted = [await chat(fleet[i % 3], http, Prefer="respond-async") for i in range(9)]

        async def every_job_answered_polling_another_replica() -> None:
            for i, a in enumerate(accepted):
                got = await http.get(
                    fleet[(i + 1) % 3].url + a.headers["location"],
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                )
                assert got.status_code == 200

        await eventually(every_job_answered_polling_another_replica, timeout_s=20)

        async def counted_once_on_every_replica() -> None:
            for proxy in fleet:
                rows = (await usage(proxy, http, group_by="mode"))["data"]
                # Compared whole: before the first flush a mode has no row yet, and that must be retried.
                assert {r["mode"]: r["requests"] for r in rows} == {"realtime": 60, "async": 9}
                assert [r["completion_tokens"] for r in rows if r["mode"] == "realtime"] == [completion]

        await eventually(counted_once_on_every_replica)


async def test_the_dispatcher_lead_moves_when_its_replica_is_killed_mid_batch(
    sims: dict[str, Any], prefix: str, launch: Launch
) -> None:
    # The provider's batches move only when the test advances its clock: still open when the leader dies.
    provider_clock = FakeClock()
    provider = SimulatorServer(
        SimulatorConfig(name="batch", batch_turnaround_s=3, **FAST_UPSTREAM), clock=provider_clock
    )
    async with provider, httpx.AsyncClient(timeout=30) as http:
        cfg = config({**sims, "batch": provider}, prefix, dedicated=False)
        # The gather is submitted when it holds the five jobs, not when a time window closes.
        cfg["async_track"]["batches"].update(max_requests=5, max_wait_s=3600)
        fleet = await launch(cfg)

        async def leader(among: list[ProxyProcess]) -> ProxyProcess:
            for proxy in among:
                queue = (
                    await http.get(
                        f"{proxy.url}/admin/queue", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                    )
                ).json()
                if queue.get("leader"):
                    return proxy
            raise AssertionError("no leader yet")

        first: list[ProxyProcess] = []

        async def found() -> None:
            first[:] = [await leader(fleet)]

        await eventually(found)
        accepted = [await chat(fleet[i % 3], http, Prefer="respond-async") for i in range(5)]

        async def batches() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = (await http.get(f"{provider.base_url}/batches")).json()["data"]
            return listed

        async def in_a_provider_batch() -> None:
            assert len(await batches()) == 1

        await eventually(in_a_provider_batch, timeout_s=30)
        provider_clock.elapsed_s += 1  # past validating (0.3 s), not done (3 s): its lines are counted
        assert [(b["request_counts"]["total"], b["status"]) for b in await batches()] == [(5, "in_progress")]
        first[0].stop(signal.SIGKILL)
        provider_clock.elapsed_s += 3  # past its turnaround: the batch completes
        survivors = [p for p in fleet if p is not first[0]]

        async def all_answered() -> None:
            for a in accepted:
                got = await http.get(
                    survivors[0].url + a.headers["location"],
                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                )
                assert got.status_code == 200
                assert got.headers["x-tokenyard-path"] == "provider_batch"

        await eventually(all_answered, timeout_s=60)  # the lock hands over within 10 s
        assert await leader(survivors) in survivors  # the lead moved to a live replica
        assert len(await batches()) == 1, "resumed, not submitted again"

        async def billed_once() -> None:
            rows = (await usage(survivors[1], http, group_by="mode"))["data"]
            assert [(r["mode"], r["requests"]) for r in rows] == [("async", 5)]

        await eventually(billed_once)


async def test_a_dedicated_backends_cap_holds_across_the_replicas(
    sims: dict[str, Any], prefix: str, launch: Launch
) -> None:
    slow = SimulatorConfig(
        mode="dedicated", max_concurrency=16, ttft_ms=1, ttft_jitter=0, tokens_per_s=40, default_max_tokens=20
    )
    async with simulators(slow_ded=slow) as extra:
        cfg = config(sims, prefix)
        cfg["backends"]["ded"] = backend("dedicated", extra["slow_ded"].base_url, max_concurrency=3)
        cfg["backends"]["api"]["rpm"] = 600
        fleet = await launch(cfg)
        async with httpx.AsyncClient(timeout=30) as http:

            async def shares(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
                state = (
                    await http.get(
                        f"{proxy.url}/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                    )
                ).json()
                return {b["name"]: b for b in state["data"]}

            def shared_by(live: list[ProxyProcess], n: int) -> Callable[[], Awaitable[None]]:
                async def check() -> None:
                    for proxy in live:
                        state = await shares(proxy)
                        assert state["ded"]["proxy_replicas"] == n
                        assert state["ded"]["max_concurrency"] == max(1, 3 // n)
                        assert state["api"]["rpm"] == 600 // n

                return check

            await eventually(shared_by(fleet, 3))  # a cap of 3 split over 3 replicas: 1 each
            answers = await asyncio.gather(*(chat(fleet[i % 3], http) for i in range(12)))
            assert [a.status_code for a in answers] == [200] * 12
            routes = [a.headers["x-tokenyard-backend"] for a in answers]
            assert routes.count("ded") >= 3
            assert "api" in routes  # the rest spilled over
            stats = (await http.get(f"{extra['slow_ded'].base_url.removesuffix('/v1')}/sim/stats")).json()
            assert stats["max_in_flight"] <= 3, "never more in flight on the backend than its cap"
            # A graceful stop leaves the live set at once: the others take the caps back.
            fleet[0].stop()
            await eventually(shared_by(fleet[1:], 2))
            fleet[1].stop()
            await eventually(shared_by(fleet[2:], 1))


async def test_a_rolling_restart_under_load_fails_no_request(
    sims: dict[str, Any], prefix: str, launch: Launch
) -> None:
    """An emulated load balancer sends only to replicas whose /health/ready is 200 (checked every 0.1 s);
    each replica in turn gets SIGTERM — unready first, then a drain — and is replaced by a new process."""
    cfg = config(sims, prefix)
    # Unready this long before the listener closes: many rounds of the balancer's checks (0.1 s apart),
    # even when a loaded machine makes each round slow.
    cfg["server"]["unready_s"] = 2.0
    fleet = await launch(cfg)
    ready: list[ProxyProcess] = list(fleet)
    failures: list[str] = []
    served = 0
    done = asyncio.Event()

    async def balancer() -> None:
        async with httpx.AsyncClient(timeout=2) as http:
            while not done.is_set():
                alive = []
                for proxy in list(fleet):
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{proxy.url}/health/ready")).status_code == 200:
                            alive.append(proxy)
                ready[:] = alive
                await asyncio.sleep(0.1)

    async def client(n: int) -> None:
        nonlocal served
        async with httpx.AsyncClient(timeout=30) as http:
            i = n
            while not done.is_set():
                if not ready:
                    await asyncio.sleep(0.05)
                    continue
                proxy = ready[i % len(ready)]
                i += 1
                try:
                    got = await chat(proxy, http)
                    if got.status_code != 200:
                        failures.append(f"{got.status_code} {got.text[:80]}")
                    else:
                        served += 1
                except httpx.TransportError as exc:
                    failures.append(type(exc).__name__)

    watcher = asyncio.create_task(balancer())
    clients = [asyncio.create_task(client(n)) for n in range(4)]
    try:
        await asyncio.sleep(1)
        for old in list(fleet):
            old.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(old.proc.wait, 30)
            fleet.remove(old)
            fleet += await launch(cfg, n=1)
        await asyncio.sleep(1)
    finally:
        done.set()
        await asyncio.gather(watcher, *clients)
    assert served > 50
    assert failures == [], f"{len(failures)} failed of {served + len(failures)}: {failures[:3]}"


async def test_sigterm_turns_readiness_off_before_the_listener_closes(
    sims: dict[str, Any], prefix: str, launch: Launch
) -> None:
    cfg = config(sims, prefix)
    cfg["server"]["unready_s"] = 4  # far longer than it takes to see the 503 and send one request
    [proxy] = await launch(cfg, n=1)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{proxy.url}/health/ready")).status_code == 200
        proxy.proc.send_signal(signal.SIGTERM)

        async def unready() -> None:
            assert (await http.get(f"{proxy.url}/health/ready")).status_code == 503

        await eventually(unready)
        assert (await http.get(f"{proxy.url}/health/live")).status_code == 200
        assert (await chat(proxy, http)).status_code == 200, "still serving while unready"
    assert await asyncio.to_thread(proxy.proc.wait, 30) in (0, -signal.SIGTERM)


def test_the_compose_files_describe_a_valid_topology() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert {"redis", "lb", "tokenyard-1", "tokenyard-2", "tokenyard-3"} <= set(compose["services"])
    nginx = (REPO / "deploy" / "nginx.conf").read_text()
    assert all(f"server tokenyard-{i}:8080" in nginx for i in (1, 2, 3))
    cfg = load_config(
        REPO / "deploy" / "compose.yaml",
        env={"TOKENYARD_ADMIN_KEY": "sk-admin-1", "TEAM_A_KEY": "sk-team-a-1"},
    )
    assert cfg.meter.store.startswith("redis://")


async def test_keys_reload_on_every_replica_without_a_restart(
    sims: dict[str, Any], prefix: str, launch: Launch
) -> None:
    new_key = "sk-team-new-0123456789"
    fleet = await launch(config(sims, prefix), n=2)
    async with httpx.AsyncClient(timeout=30) as http:

        async def answers(proxy: ProxyProcess, key: str) -> int:
            got = await http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            return got.status_code

        assert await answers(fleet[0], new_key) == 401
        # Each replica's file gains the key; then one reload call, on one replica.
        for proxy in fleet:
            assert proxy.config_path is not None
            text = yaml.safe_load(proxy.config_path.read_text())
            text["keys"]["team-new"] = {"key": new_key, "mode": "async"}
            text["backends"]["api"]["prices"]["input_per_1m"] = 9.0  # needs a restart: said, not applied
            proxy.config_path.write_text(yaml.safe_dump(text))
        reloaded = await http.post(
            f"{fleet[0].url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert reloaded.json() == {"reloaded": True, "needs_restart": ["backends"]}
        assert await answers(fleet[0], new_key) == 200

        async def reached_the_other_replica() -> None:
            assert await answers(fleet[1], new_key) == 200

        await eventually(reached_the_other_replica, timeout_s=10)  # at its next beat (2 s)
        assert await answers(fleet[1], CLIENT_KEY) == 200

        # An invalid file is refused with its problems, and the running config stays.
        assert fleet[1].config_path is not None
        fleet[1].config_path.write_text("keys: [not, a, mapping]\n")
        refused = await http.post(
            f"{fleet[1].url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert refused.json()["reloaded"] is False
        assert refused.json()["problems"]
        assert await answers(fleet[1], new_key) == 200
        # SIGHUP reloads one replica from its own file.
        assert fleet[0].config_path is not None
        text = yaml.safe_load(fleet[0].config_path.read_text())
        del text["keys"]["team-new"]
        text["server"]["admin_key"] = new_admin = "sk-admin-rotated-0123456789"
        fleet[0].config_path.write_text(yaml.safe_dump(text))
        fleet[0].proc.send_signal(signal.SIGHUP)

        async def key_gone() -> None:
            assert await answers(fleet[0], new_key) == 401

        await eventually(key_gone)
        # The rotated admin key signs in to the dashboard; the old one no longer does.
        for admin_key, status in ((ADMIN_KEY, 401), (new_admin, 303)):
            login = await http.post(f"{fleet[0].url}/dashboard/login", data={"key": admin_key})
            assert login.status_code == status


async def test_a_redis_cluster_failover_loses_no_usage(
    sims: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = RedisClusterServers(folder, masters=3, replicas=1)
    cluster.start()
    try:
        async with (
            running_proxy(config(sims, prefix, store=cluster.url, dedicated=False), tmp_path) as proxy,
            httpx.AsyncClient(timeout=30) as http,
        ):

            def counted(n: int) -> Callable[[], Awaitable[None]]:
                async def check() -> None:
                    got = await usage(proxy, http)
                    assert "data" in got, got  # an error body while the store fails over
                    assert sum(row["requests"] for row in got["data"]) == n

                return check

            assert [(await chat(proxy, http)).status_code for _ in range(10)] == [200] * 10
            await eventually(counted(10))
            master = cluster.master_of("{" + prefix + "}")  # the master of the prefix's slot
            written, _ = cluster.replication_offsets(master)

            async def replicated() -> None:  # replication is asynchronous: the replica has it all
                _, acked = cluster.replication_offsets(master)
                assert acked
                assert min(acked) >= written

            await eventually(replicated)
            cluster.kill(master)
            # Served all along: the meter holds what it cannot write while the replica takes over.
            assert [(await chat(proxy, http)).status_code for _ in range(10)] == [200] * 10
            await eventually(counted(20), timeout_s=30)
            log = proxy.log()
            assert "meter store unavailable, holding usage in memory" in log  # the kill was felt
            assert "meter store is back: held usage written" in log
    finally:
        cluster.stop()
