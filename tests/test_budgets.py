"""Budgets that hold: a hard budget under concurrent load over three replicas on one Redis is never passed
by more than the documented bound; a dedicated backend's GPU cost counts; a spent budget answers OpenAI's
``insufficient_quota``, or sends requests down the async track at batch prices; and async requests
reserve their worst case too (batches: ``test_budget_async.py``). Proxies are real processes, clients the
official ``openai`` SDK, upstreams the simulator.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, backend
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy, start_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, simulators
from tests.support.stores import fresh_prefix, sqlite_url
from tokenyard.simulator.config import SimulatorConfig

MODEL = "llama"
INPUT_PER_1M, OUTPUT_PER_1M = 1.0, 2.0
MAX_TOKENS = 100
HEADER_LEFT, HEADER_RESET = "x-tokenyard-budget-remaining-usd", "x-tokenyard-budget-reset"


def config(sims: dict[str, Any], store: str, prefix: str = "tokenyard", **budgets: Any) -> dict[str, Any]:
    """A serverless backend at $1/$2 per 1M tokens, a batch backend at half that; ``team-a``'s key has
    ``budgets["key"]``, ``team-b``'s none, and the ``budgets:`` section is the rest."""
    prices = {"input_per_1m": INPUT_PER_1M, "output_per_1m": OUTPUT_PER_1M}
    half = {"input_per_1m": INPUT_PER_1M / 2, "output_per_1m": OUTPUT_PER_1M / 2}
    return {
        "server": {"admin_key": ADMIN_KEY},
        "meter": {"store": store, "redis_prefix": prefix, "flush_interval_s": 0.2},
        "backends": {
            "api": backend("serverless", sims["api"].base_url, prices=prices),
            "prov": backend("batch", sims["batch"].base_url, prices=half),
        },
        "models": {MODEL: {"deployments": ["api"], "batch": "prov"}},
        "keys": {
            "team-a": {"key": CLIENT_KEY, "budgets": budgets.pop("key", [])},
            "team-b": {"key": OTHER_KEY},
        },
        "budgets": budgets,
        "async_track": {
            "realtime_margin_s": 2,
            "batches": {"max_wait_s": 0.2, "poll_s": 0.2, "expected_turnaround_s": 1},
        },
    }


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, Any]]:
    async with simulators(
        api=SimulatorConfig(**FAST_UPSTREAM),
        batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM),
        ded=SimulatorConfig(mode="dedicated", max_concurrency=8, **FAST_UPSTREAM),
    ) as running:
        yield running


def cost_usd(usage: Any, *, per: float = 1.0) -> float:
    return per * (usage.prompt_tokens * INPUT_PER_1M + usage.completion_tokens * OUTPUT_PER_1M) / 1e6


async def ask(proxy: ProxyProcess, key: str = CLIENT_KEY, **extra: Any) -> Any:
    async with proxy.client(key=key) as client:
        return await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count these five words please"}],
            max_tokens=MAX_TOKENS,
            **extra,
        )


async def refused(proxy: ProxyProcess, key: str = CLIENT_KEY) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as raised:
        await ask(proxy, key)
    return raised.value


async def test_a_hard_budget_under_load_over_three_replicas_is_never_passed(
    sims: dict[str, Any], tmp_path: Path
) -> None:
    """Each request's worst case (its prompt at ~4 bytes a token, its max_tokens) is reserved before it runs,
    and the simulator never answers more than that, so the bound on spend past the limit — what admitted
    requests spend beyond what they reserved — is 0 here: the test computes it from what each request used."""
    limit = 0.005  # about 23 requests of ~$0.000215
    prefix = fresh_prefix()
    cfg = config(sims, REDIS_URL, prefix, key=[{"limit_usd": limit, "window": "day"}])
    fleet = [await start_proxy(cfg, tmp_path) for _ in range(3)]
    try:
        answered: list[Any] = []
        refusals: list[openai.RateLimitError] = []

        async def one(proxy: ProxyProcess) -> None:
            try:
                answered.append(await ask(proxy))
            except openai.RateLimitError as exc:
                refusals.append(exc)

        replicas = itertools.cycle(fleet)
        for _ in range(3):  # waves of 24 at once, 8 per replica, until the budget is gone
            await asyncio.gather(*(one(next(replicas)) for _ in range(24)))
        assert refusals, "the budget never ran out"
        spent = sum(cost_usd(r.parse().usage) for r in answered)
        body_bytes = len(answered[0].http_request.content)
        beyond_reserved = sum(
            max(
                0.0,
                cost_usd(r.parse().usage)
                - ((body_bytes // 4 + 1) * INPUT_PER_1M + MAX_TOKENS * OUTPUT_PER_1M) / 1e6,
            )
            for r in answered
        )
        assert beyond_reserved == 0
        assert spent <= limit + beyond_reserved, f"spent ${spent:.6f} of ${limit}"
        assert spent > limit - 24 * cost_usd(answered[0].parse().usage), "refused long before it was spent"
        error = refusals[0]
        assert (error.status_code, error.body["code"], error.body["type"]) == (  # type: ignore[index]
            429,
            "insufficient_quota",
            "insufficient_quota",
        )
        assert "key team-a's day budget of $0.005000 has $0.0" in error.message
        assert "left (requests in flight included), less than this request may cost ($0.000" in error.message
        assert "it resets at" in error.message
        assert float(error.response.headers[HEADER_LEFT]) < 0.000215
        assert error.response.headers[HEADER_RESET].endswith("T00:00:00Z")
        other = await ask(fleet[1], OTHER_KEY)  # a key with no budget is untouched, and told nothing
        assert HEADER_LEFT not in other.headers
    finally:
        for proxy in fleet:
            proxy.stop()
        await delete_prefix(prefix)


async def test_every_answer_to_a_budgeted_key_says_what_is_left(sims: dict[str, Any], tmp_path: Path) -> None:
    cfg = config(
        sims,
        sqlite_url(tmp_path / "m.sqlite3"),
        key=[{"limit_usd": 10, "window": "30d"}],
        tenants={"team-a": [{"limit_usd": 1, "window": "month", "time_zone": "Pacific/Auckland"}]},
    )
    async with running_proxy(cfg, tmp_path) as proxy:
        first = await ask(proxy)
        assert float(first.headers[HEADER_LEFT]) == 1.0, "the tightest budget: the tenant's $1"
        assert first.headers[HEADER_RESET].endswith(("T11:00:00Z", "T12:00:00Z")), "Auckland's midnight"
        used = cost_usd(first.parse().usage)

        async def settled() -> None:
            left = float((await ask(proxy)).headers[HEADER_LEFT])
            assert left < 1.0 - used + 1e-9

        await eventually(settled)
        async with proxy.client() as client:
            stream = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=5
            )
            assert float(stream.headers[HEADER_LEFT]) < 1.0
            async for _ in stream.parse():
                pass


async def test_a_tenant_on_a_dedicated_backend_reaches_its_budget_through_its_gpu_share(
    sims: dict[str, Any], tmp_path: Path
) -> None:
    """Dedicated tokens cost nothing per token, but the GPU time they hold does: with no hour of history
    yet, a request is charged its slot — its time at one max_concurrency share of the replica's price."""
    cfg = config(
        sims, sqlite_url(tmp_path / "m.sqlite3"), tenants={"team-a": [{"limit_usd": 0.001, "window": "1d"}]}
    )
    cfg["backends"]["ded"] = backend("dedicated", sims["ded"].base_url, max_concurrency=1)
    cfg["backends"]["ded"].update(gpu_hour_price=30.0)  # ~$0.0083 a second for the replica's one slot
    cfg["models"][MODEL]["deployments"] = ["ded"]
    async with running_proxy(cfg, tmp_path) as proxy:
        served, error = 0, None
        while error is None and served < 200:
            try:
                await ask(proxy)
                served += 1
            except openai.RateLimitError as exc:
                error = exc
        assert error is not None, "200 requests of GPU time and the budget still held"
        assert served >= 1
        assert "tenant team-a's 1d budget of $0.001000 is spent" in error.message

        async def metered_without_per_token_cost() -> None:
            rows = (await proxy.admin("/admin/usage", group_by="backend", start="1h"))["data"]
            assert {row["backend"]: (row["requests"], row["token_cost_usd"]) for row in rows} == {
                "ded": (served, 0.0)
            }

        await eventually(metered_without_per_token_cost)


async def test_a_spent_budget_that_says_async_sends_requests_down_the_async_track(
    sims: dict[str, Any], tmp_path: Path
) -> None:
    """Past the budget a waiting client is held and answered from the async track; one that polls gets a
    job, which a provider batch answers at batch prices. A stream cannot wait in a queue: it is refused."""
    limit = 0.0005
    cfg = config(sims, sqlite_url(tmp_path / "m.sqlite3"), key=[{"limit_usd": limit, "on_exceeded": "async"}])
    async with running_proxy(cfg, tmp_path) as proxy:
        spent_realtime = 0.0
        for _ in range(10):
            answer = await ask(proxy)
            if answer.headers.get("x-tokenyard-mode") == "async":
                break
            spent_realtime += cost_usd(answer.parse().usage)
        else:
            pytest.fail("the budget never sent a request down the async track")
        assert answer.status_code == 200
        assert answer.parse().choices[0].message.content
        assert answer.headers["x-tokenyard-mode-reason"] == "budget: key team-a's 30d budget is spent"
        assert float(answer.headers["x-tokenyard-budget-remaining-usd"]) < limit  # a held answer says it too
        assert spent_realtime <= limit
        with pytest.raises(openai.RateLimitError, match="budget"):
            await ask(proxy, stream=True)
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as http:
            queued = await http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
                headers={"Prefer": "respond-async"},
            )
            assert queued.status_code == 202

            async def answered() -> None:
                done = await http.get(f"{proxy.url}{queued.headers['location']}")
                assert done.status_code == 200, done.text
                assert done.headers["x-tokenyard-path"] == "provider_batch"
                assert done.json()["object"] == "chat.completion"

            await eventually(answered, timeout_s=30)

        async def billed() -> None:
            rows = (await proxy.admin("/admin/usage", group_by="mode,backend", start="1h"))["data"]
            by_path = {(row["mode"], row["backend"]): row["requests"] for row in rows}
            assert by_path.pop(("realtime", "api")) >= 2
            assert by_path == {("async", "api"): 1, ("async", "prov"): 1}

        await eventually(billed)


async def test_async_requests_reserve_their_worst_case_and_are_refused_once_a_rejecting_budget_cannot_hold_it(
    sims: dict[str, Any], tmp_path: Path
) -> None:
    """An async request reserves its worst case (~$0.000222 here) when it is queued, replaced by what it cost
    (~$0.000215) when it is answered: two fit in $0.0005 one after the other, a third does not, whether or
    not the second's charge has landed (it counts at least its cost either way)."""
    cfg = config(sims, sqlite_url(tmp_path / "m.sqlite3"), key=[{"limit_usd": 0.0005}])
    async with running_proxy(cfg, tmp_path) as proxy:
        for _ in range(2):
            held = await ask(proxy, extra_headers={"x-tokenyard-mode": "async"})
            assert held.headers["x-tokenyard-mode"] == "async"
        with pytest.raises(openai.RateLimitError) as raised:
            await ask(proxy, extra_headers={"x-tokenyard-mode": "async"})
        assert "key team-a's 30d budget of $0.000500 has $0.0000" in raised.value.message
        assert "less than this request may cost" in raised.value.message
        assert "less than this request may cost" in (await refused(proxy)).message
