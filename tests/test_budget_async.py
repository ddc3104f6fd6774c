"""Budgets hold async work too: a queued request reserves its worst case when it is accepted and its answer
replaces that with what it cost; a batch (the Batch API's, a Message Batch) reserves its lines' worst case
at creation — refused with ``insufficient_quota`` when a hard budget cannot hold it — each answered line
draws that down, and the rest is let go when the batch ends. Proxies are real processes on SQLite and on
Redis, clients the official SDKs, upstreams the simulator; jobs are kept waiting by taking their capacity
away (a dedicated backend scaled to 0, an upstream answering 429), never by the clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.support.async_track import MODEL, config_for, jsonl, run_batch, sims, until_final
from tests.support.config import ADMIN_KEY, CLIENT_KEY
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, set_faults, sim_stats
from tests.support.stores import PROXY_STORES, ProxyStore, open_proxy_store
from tokenyard.simulator.config import SimulatorConfig

# The serverless API's prices in config_for ($1 / $2 per 1M tokens) and the provider batch's (half), in
# nano-USD a token: what a budget counts.
API_IN_NUSD, API_OUT_NUSD = 1_000, 2_000
BATCH_IN_NUSD, BATCH_OUT_NUSD = 500, 1_000
MAX_TOKENS = 50


@pytest.fixture(params=PROXY_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProxyStore]:
    async with open_proxy_store(request.param, tmp_path) as opened:
        yield opened


def worst_nusd(body: dict[str, Any]) -> int:
    """What a request reserves: its body at ~4 bytes a prompt token, its output cap, at the dearest price
    of the paths it may take (the serverless API here)."""
    return (len(orjson.dumps(body)) // 4 + 1) * API_IN_NUSD + body["max_tokens"] * API_OUT_NUSD


def line_bodies(n: int) -> list[dict[str, Any]]:
    """The request bodies of ``jsonl(n, max_tokens=MAX_TOKENS)``, as the proxy keeps them."""
    return [orjson.loads(line)["body"] for line in jsonl(n, max_tokens=MAX_TOKENS).splitlines()]


def with_budget(config: dict[str, Any], limit_nusd: int) -> dict[str, Any]:
    """``config`` with a hard budget on team-a's key that rejects past ``limit_nusd``."""
    config["keys"]["team-a"]["budgets"] = [{"limit_usd": limit_nusd / 1e9, "window": "30d"}]
    return config


async def counted_nusd(proxy: ProxyProcess) -> int:
    """What team-a's key budget counts now: settled spend plus every reservation held."""
    budgets = (await proxy.admin("/admin/budgets", fresh="1"))["data"]
    [budget] = [b for b in budgets if b["holder"] == {"kind": "key", "name": "team-a"}]
    return round(budget["counted_usd"] * 1e9)


async def until_counted(proxy: ProxyProcess, nusd: int) -> None:
    """Wait until team-a's key budget counts ``nusd``: a charge or a release is sent just after the answer
    that made it, off the request path."""

    async def counted() -> None:
        assert await counted_nusd(proxy) == nusd

    await eventually(counted)


async def scale_dedicated(proxy: ProxyProcess, replicas: int) -> None:
    """With no dedicated replica the jobs wait for one (their 24 h deadline is far): nothing runs them."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        scaled = await http.put(f"{proxy.url}/admin/backends/ded/replicas", json={"replicas": replicas})
        assert scaled.status_code == 200, scaled.text


async def test_a_batch_is_refused_when_its_worst_case_does_not_fit_beside_one_already_held(
    store: ProxyStore, tmp_path: Path
) -> None:
    """The budget holds one batch's worst case but not two: the second, made right after the first, is
    refused whatever the timing (nothing runs, so the first holds all of it); cancelling the first lets its
    hold go, and a batch fits again."""
    one_batch = sum(worst_nusd(body) for body in line_bodies(3))
    async with sims() as s:
        config = with_budget(config_for(s, store=store.url, prefix=store.prefix), one_batch * 3 // 2)
        async with running_proxy(config, tmp_path) as proxy, proxy.client() as client:
            await scale_dedicated(proxy, 0)
            first = await run_batch(client, jsonl(3, max_tokens=MAX_TOKENS))
            assert first.status == "in_progress"
            assert await counted_nusd(proxy) == one_batch, "held from the moment it was accepted"
            with pytest.raises(openai.RateLimitError) as refused:
                await run_batch(client, jsonl(3, max_tokens=MAX_TOKENS))
            assert refused.value.status_code == 429
            assert refused.value.body["code"] == "insufficient_quota"  # type: ignore[index]
            assert "key team-a's 30d budget" in refused.value.message
            assert "less than this batch may cost" in refused.value.message
            assert len((await client.batches.list()).data) == 1, "the refused batch was not kept"

            cancelling = await client.batches.cancel(first.id)
            assert cancelling.status == "cancelling"
            await until_counted(proxy, 0)  # cancelled before any line ran: nothing held, nothing spent
            assert (await until_final(client, first.id)).status == "cancelled"
            assert (await run_batch(client, jsonl(3, max_tokens=MAX_TOKENS))).status == "in_progress"
            assert await counted_nusd(proxy) == one_batch


async def test_a_message_batch_holds_its_worst_case_and_a_cancelled_one_lets_it_go(
    store: ProxyStore, tmp_path: Path
) -> None:
    params = [
        {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": f"request {i}"}]}
        for i in range(2)
    ]
    requests = [{"custom_id": f"r-{i}", "params": p} for i, p in enumerate(params)]
    one_batch = sum(worst_nusd(p) for p in params)
    async with sims() as s:
        config = with_budget(config_for(s, store=store.url, prefix=store.prefix), one_batch * 3 // 2)
        async with (
            running_proxy(config, tmp_path) as proxy,
            anthropic.AsyncAnthropic(base_url=proxy.url, api_key=CLIENT_KEY, max_retries=0) as client,
        ):
            await scale_dedicated(proxy, 0)
            first = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            assert await counted_nusd(proxy) == one_batch
            with pytest.raises(anthropic.RateLimitError, match="key team-a's 30d budget"):
                await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            assert (await client.messages.batches.cancel(first.id)).processing_status == "canceling"
            await until_counted(proxy, 0)


async def test_once_a_batch_completes_its_budget_counts_exactly_what_its_lines_cost(
    store: ProxyStore, tmp_path: Path
) -> None:
    """Each line's answer (at the provider batch's prices) is charged and takes as much off the batch's hold;
    when the batch is final the rest of the hold is gone and the count is what the lines cost, to the
    nano-dollar."""
    async with sims(batch=SimulatorConfig(batch_turnaround_s=0.2, **FAST_UPSTREAM)) as s:
        config = config_for(s, store=store.url, prefix=store.prefix)
        config["models"][MODEL]["deployments"] = ["api"]  # no idle GPU: the lines go to the provider batch
        del config["backends"]["ded"]
        async with (
            running_proxy(with_budget(config, 10**9), tmp_path) as proxy,
            proxy.client() as client,
        ):
            batch = await run_batch(client, jsonl(4, max_tokens=MAX_TOKENS))
            held = sum(worst_nusd(body) for body in line_bodies(4))
            assert await counted_nusd(proxy) <= held
            done = await until_final(client, batch.id)
            assert (done.status, done.request_counts.completed) == ("completed", 4)
            output = (await client.files.content(done.output_file_id)).content
            lines = [orjson.loads(line) for line in output.splitlines()]
            usages = [line["response"]["body"]["usage"] for line in lines]
            cost = sum(
                u["prompt_tokens"] * BATCH_IN_NUSD + u["completion_tokens"] * BATCH_OUT_NUSD for u in usages
            )
            assert 0 < cost < held
            await until_counted(proxy, cost)


async def test_a_queued_request_holds_its_worst_case_while_it_waits_then_counts_what_it_cost(
    store: ProxyStore, tmp_path: Path
) -> None:
    """A job's reservation (under the id of the request that queued it) shows in the count while the only
    upstream answers 429 (no capacity: the job is tried again later, its reservation untouched); once the
    upstream answers, the job's charge replaces the reservation with what it cost."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "wait for me"}],
        "max_tokens": MAX_TOKENS,
    }
    async with sims() as s:
        config = config_for(s, store=store.url, prefix=store.prefix)
        config["models"][MODEL]["deployments"] = ["api"]
        del config["backends"]["ded"]
        async with (
            running_proxy(with_budget(config, 10**9), tmp_path) as proxy,
            httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as http,
        ):
            await set_faults(s["api"], error_rate=1.0, error_status=429, retry_after_s=0)
            queued = await http.post(
                f"{proxy.base_url}/chat/completions",
                content=orjson.dumps(body),
                headers={"Prefer": "respond-async", "content-type": "application/json"},
            )
            assert queued.status_code == 202, queued.text
            assert await counted_nusd(proxy) == worst_nusd(body), "held from the moment it was accepted"
            # What the 202 says was left when it was admitted: all of it (no other work was counted).
            assert queued.headers["x-tokenyard-budget-remaining-usd"] == "1.000000"
            assert "x-tokenyard-budget-reset" in queued.headers

            async def tried_and_put_back() -> None:
                assert (await sim_stats(s["api"]))["errors_injected"] >= 2
                assert (await http.get(proxy.url + queued.headers["location"])).status_code == 202

            await eventually(tried_and_put_back)
            assert await counted_nusd(proxy) == worst_nusd(body), "a failed try settles nothing: still held"
            await set_faults(s["api"])
            answer: dict[str, Any] = {}

            async def answered() -> None:
                got = await http.get(proxy.url + queued.headers["location"])
                assert got.status_code == 200, got.text
                answer.update(got.json())

            await eventually(answered, timeout_s=30)
            usage = answer["usage"]
            cost = usage["prompt_tokens"] * API_IN_NUSD + usage["completion_tokens"] * API_OUT_NUSD
            assert cost < worst_nusd(body)
            await until_counted(proxy, cost)


async def test_an_async_request_a_rejecting_budget_cannot_hold_is_refused(tmp_path: Path) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "too dear"}], "max_tokens": MAX_TOKENS}
    async with sims() as s, open_proxy_store("sqlite", tmp_path) as store:
        config = with_budget(config_for(s, store=store.url), worst_nusd(body) - 1)
        async with running_proxy(config, tmp_path) as proxy, proxy.client() as client:
            with pytest.raises(openai.RateLimitError, match="less than this request may cost") as refused:
                await client.chat.completions.create(**body, extra_headers={"x-tokenyard-mode": "async"})
            assert refused.value.body["code"] == "insufficient_quota"  # type: ignore[index]
            assert "x-tokenyard-budget-remaining-usd" in refused.value.response.headers
            assert await counted_nusd(proxy) == 0, "it took nothing"


async def test_a_background_response_cancelled_before_it_ran_lets_its_reservation_go(
    store: ProxyStore, tmp_path: Path
) -> None:
    async with sims() as s:
        config = with_budget(config_for(s, store=store.url, prefix=store.prefix), 10**9)
        async with running_proxy(config, tmp_path) as proxy, proxy.client() as client:
            await scale_dedicated(proxy, 0)
            queued = await client.responses.create(
                model=MODEL, input="never mind", background=True, max_output_tokens=MAX_TOKENS
            )
            assert queued.status == "queued"
            assert await counted_nusd(proxy) >= MAX_TOKENS * API_OUT_NUSD, "held while it waits"
            assert (await client.responses.cancel(queued.id)).status == "cancelled"
            await until_counted(proxy, 0)
