"""Budget round trips shared under load: calls made while one is on its way go together in the next, an
idle call goes at once, and a failed trip tells exactly its callers; a gate whose store is away serves
or refuses as ``budgets.when_store_down`` says; and async work is refused only by a budget that rejects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.stores import opened_meter_store
from tokenyard.admission.auth import Principal
from tokenyard.config import TokenyardConfig
from tokenyard.errors import StoreUnavailable
from tokenyard.live import LiveConfig
from tokenyard.meter.redis_store import RedisMeterStore
from tokenyard.proxy.spend import Admitted, Coalesced, DedicatedRates, OverBudget, SpendGate


async def settle_loop() -> None:
    """Let every task that can run, run (a few turns of the loop; no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Trips:
    """A send that records each trip's arguments and waits until the test lets it answer."""

    def __init__(self) -> None:
        self.trips: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_next = False

    async def send(self, arguments: list[int]) -> list[int]:
        self.trips.append(arguments)
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("the store is away")
        return [argument * 10 for argument in arguments]


async def test_calls_made_during_a_trip_share_the_next_one() -> None:
    trips = Trips()
    coalesced: Coalesced[int, int] = Coalesced(trips.send)
    first = asyncio.ensure_future(coalesced.call(1))
    await settle_loop()  # the first trip is on its way, alone
    assert trips.trips == [[1]]
    later = [asyncio.ensure_future(coalesced.call(n)) for n in (2, 3, 4)]
    await settle_loop()
    assert trips.trips == [[1]], "they wait for the trip on its way"
    trips.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert trips.trips == [[1], [2, 3, 4]]
    assert await coalesced.call(5) == 50, "idle again: the next call goes at once"
    assert trips.trips[-1] == [5]


async def test_a_failed_trip_tells_its_callers_and_the_next_trip_goes_on() -> None:
    trips = Trips()
    coalesced: Coalesced[int, int] = Coalesced(trips.send)
    trips.fail_next = True
    first = asyncio.ensure_future(coalesced.call(1))
    await settle_loop()
    second = asyncio.ensure_future(coalesced.call(2))
    trips.gate.set()
    with pytest.raises(StoreUnavailable):
        await first
    assert await second == 20


async def test_a_caller_that_leaves_does_not_disturb_the_others() -> None:
    trips = Trips()
    coalesced: Coalesced[int, int] = Coalesced(trips.send)
    first = asyncio.ensure_future(coalesced.call(1))
    await settle_loop()
    leaving, staying = asyncio.ensure_future(coalesced.call(2)), asyncio.ensure_future(coalesced.call(3))
    await settle_loop()
    leaving.cancel()
    trips.gate.set()
    assert await first == 10
    assert await staying == 30
    assert leaving.cancelled()


# -- a gate whose store is away ---------------------------------------------------------------------------


def gate_over_an_unreachable_store(when_store_down: str) -> SpendGate:
    config = TokenyardConfig.model_validate(
        {
            "backends": {"api": {"kind": "serverless", "base_url": "http://127.0.0.1:9"}},
            "models": {"m": {"deployments": ["api"]}},
            "budgets": {"tenants": {"acme": [{"limit_usd": 1}]}, "when_store_down": when_store_down},
        }
    )
    store = RedisMeterStore(
        f"redis://127.0.0.1:{free_port()}/0", prefix="nobody", retention_s=60, records_max=1
    )
    live = LiveConfig(config, async_track_runs=False)
    return SpendGate(store, live, {}, DedicatedRates(None, {}, wall=time.time), wall=time.time)


async def test_with_the_store_away_budgeted_requests_are_served_uncounted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = gate_over_an_unreachable_store("serve")
    lines = gate.lines(Principal("acme", None, "k"))
    assert lines
    for n in range(3):
        admitted = await gate.admit(lines, f"req_{n}", 1000)
        assert isinstance(admitted, Admitted)
        assert (admitted.holds, admitted.headers) == ((), []), "nothing held, nothing said about budgets"
    assert [r.getMessage() for r in caplog.records if r.name == "tokenyard.budgets"] == [
        caplog.records[0].getMessage()
    ], "one warning for the outage, not one a request"
    assert "not checked while the store is away" in caplog.records[0].getMessage()
    assert gate.store is not None
    await gate.store.aclose()


async def test_with_the_store_away_budgets_that_say_refuse_answer_503() -> None:
    gate = gate_over_an_unreachable_store("refuse")
    with pytest.raises(StoreUnavailable, match="Budgets cannot be checked now") as raised:
        await gate.admit(gate.lines(Principal("acme", None, "k")), "req_1", 1000)
    assert raised.value.status_code == 503
    assert gate.store is not None
    await gate.store.aclose()


# -- async work -------------------------------------------------------------------------------------------


async def test_async_work_is_refused_only_by_a_budget_that_rejects_and_counted_by_one_that_says_async(
    tmp_path: Path,
) -> None:
    """A tenant's $1 budget that sends its refused requests down the async track cannot refuse async work:
    it counts it, past its limit if need be. The team's $2 budget that rejects refuses it."""
    config = TokenyardConfig.model_validate(
        {
            "backends": {"api": {"kind": "serverless", "base_url": "http://127.0.0.1:9"}},
            "models": {"m": {"deployments": ["api"]}},
            "budgets": {
                "tenants": {"acme": [{"limit_usd": 1, "on_exceeded": "async"}]},
                "teams": {"search": [{"limit_usd": 2}]},
            },
        }
    )
    async with opened_meter_store("sqlite", tmp_path) as store:
        live = LiveConfig(config, async_track_runs=False)
        gate = SpendGate(store, live, {}, DedicatedRates(None, {}, wall=time.time), wall=time.time)
        lines = gate.lines(Principal("acme", None, "k", team="search"))
        usd = 10**12  # pico-USD
        queued = await gate.admit(lines, "job-1", 3 * usd // 2, lasts_s=60, queued=True)
        assert isinstance(queued, Admitted), "past the tenant's $1, which only counts async work"
        assert await store.counted(queued.holds, time.time()) == [1_500_000_000] * 2
        realtime = await gate.admit(lines, "req-1", usd // 10)
        assert isinstance(realtime, OverBudget)
        assert (realtime.line.holder, realtime.line.budget.on_exceeded) == ("tenant acme", "async")
        refused = await gate.admit(lines, "job-2", usd, lasts_s=60, queued=True)
        assert isinstance(refused, OverBudget)
        assert refused.line.holder == "team search"
        assert "less than this request may cost ($1.00)" in refused.error().message
