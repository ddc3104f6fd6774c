"""Anthropic's Message Batches API served by tokenyard, driven by the anthropic SDK: each request runs down
the async track, results come back by custom_id, billed once as async; tenants kept apart; errors in
Anthropic's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import pytest_asyncio

from tests.support.async_track import MODEL, config_for, sims, usage
from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, UPSTREAM_SECRET
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, sim_requests
from tests.support.stores import fresh_prefix, sqlite_url
from tokenyard.simulator.config import SimulatorConfig

REDIS_URL = "redis://127.0.0.1:6379/0"


def request(i: int, model: str = MODEL, **params: Any) -> dict[str, Any]:
    return {
        "custom_id": f"r-{i}",
        "params": {
            "model": model,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": f"request number {i}"}],
            **params,
        },
    }


@pytest_asyncio.fixture(params=["sqlite", "redis"])
async def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    store = sqlite_url(tmp_path / "m.sqlite3") if request.param == "sqlite" else REDIS_URL
    async with sims() as s:
        config = config_for(s, store=store, prefix=fresh_prefix())
        config["keys"]["team-b"] = {"key": OTHER_KEY}
        async with running_proxy(config, tmp_path) as running:
            yield running


def claude(proxy: ProxyProcess, key: str = CLIENT_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key=key, max_retries=0, timeout=30)


async def until_ended(client: anthropic.AsyncAnthropic, batch_id: str, timeout_s: float = 30) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            batch = await client.messages.batches.retrieve(batch_id)
            if batch.processing_status == "ended":
                return batch
            await asyncio.sleep(0.1)


async def test_a_message_batch_round_trip_with_the_sdk(proxy: ProxyProcess) -> None:
    async with claude(proxy) as client:
        created = await client.messages.batches.create(requests=[request(i) for i in range(5)])  # type: ignore[misc]
        assert created.type == "message_batch"
        assert created.processing_status == "in_progress"
        assert created.request_counts.processing == 5
        assert created.results_url is None
        done = await until_ended(client, created.id)
        assert done.request_counts.succeeded == 5
        assert done.request_counts.processing == 0
        assert done.ended_at is not None
        assert done.results_url == f"{proxy.url}/v1/messages/batches/{created.id}/results"
        # Behind a TLS-terminating proxy on loopback, which is trusted to say the scheme by default
        # (FORWARDED_ALLOW_IPS), the URL is the one the client reached.
        behind_tls = client.with_options(default_headers={"X-Forwarded-Proto": "https"})
        again = await behind_tls.messages.batches.retrieve(created.id)
        assert again.results_url == done.results_url.replace("http://", "https://", 1)
        results = {
            line.custom_id: line.result async for line in await client.messages.batches.results(created.id)
        }
    assert set(results) == {f"r-{i}" for i in range(5)}
    output = 0
    for result in results.values():
        assert result.type == "succeeded"
        assert result.message.content[0].type == "text"
        output += result.message.usage.output_tokens

    async def billed_once_as_async() -> None:  # once the meter has flushed the last of them
        metered = await usage(proxy, group_by="mode")
        [async_row] = [row for row in metered["data"] if row["mode"] == "async"]
        assert async_row["requests"] == 5
        assert async_row["completion_tokens"] == output

    await eventually(billed_once_as_async)


async def test_list_is_newest_first_and_pages(proxy: ProxyProcess) -> None:
    async with claude(proxy) as client:
        made = [(await client.messages.batches.create(requests=[request(i)])).id for i in range(3)]  # type: ignore[misc]
        first = await client.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == made[::-1][:2]
        assert first.has_more is True
        every = [batch.id async for batch in client.messages.batches.list(limit=2)]
    assert every == made[::-1]


async def test_cancel_before_the_requests_run_marks_them_canceled(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        # The dedicated replica scaled to none: nothing takes the jobs, which wait for it (24 h deadline).
        scaled = await http.put(f"{proxy.url}/admin/backends/ded/replicas", json={"replicas": 0})
        assert scaled.status_code == 200, scaled.text
    async with claude(proxy) as client:
        created = await client.messages.batches.create(requests=[request(i) for i in range(3)])  # type: ignore[misc]
        canceling = await client.messages.batches.cancel(created.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        done = await until_ended(client, created.id)
        assert done.request_counts.canceled == 3
        kinds = [line.result.type async for line in await client.messages.batches.results(created.id)]
        assert kinds == ["canceled"] * 3
        deleted = await client.messages.batches.delete(created.id)
        assert deleted.type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(created.id)


async def test_bad_batches_are_refused_in_anthropics_shape_and_nothing_runs(proxy: ProxyProcess) -> None:
    bad: list[Any] = [
        [],
        [request(1), request(1)],
        [{**request(1), "custom_id": "has spaces"}],
        [request(1, stream=True)],
        [{"custom_id": "x", "params": {"model": MODEL, "messages": []}}],
        [request(1, model="no-such-model")],
    ]
    async with claude(proxy) as client:
        for requests in bad:
            with pytest.raises(anthropic.BadRequestError) as refused:
                await client.messages.batches.create(requests=requests)
            assert refused.value.body["type"] == "error"
            assert refused.value.body["error"]["type"] == "invalid_request_error"
    async with httpx.AsyncClient(headers={"x-api-key": CLIENT_KEY}) as http:
        listed = await http.get(f"{proxy.url}/v1/messages/batches")
    assert listed.json()["data"] == []  # nothing was made of the refused batches


async def test_results_and_delete_wait_for_the_batch_to_end(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        await http.put(f"{proxy.url}/admin/backends/ded/replicas", json={"replicas": 0})
    async with claude(proxy) as client:
        created = await client.messages.batches.create(requests=[request(1)])  # type: ignore[misc]
        with pytest.raises(anthropic.BadRequestError) as not_yet:
            await client.messages.batches.delete(created.id)
    assert "cancel it first" in not_yet.value.message
    async with httpx.AsyncClient(headers={"x-api-key": CLIENT_KEY}) as http:
        results = await http.get(f"{proxy.url}/v1/messages/batches/{created.id}/results")
    assert results.status_code == 400
    assert results.json()["error"]["type"] == "invalid_request_error"


async def test_another_tenants_batch_is_not_found(proxy: ProxyProcess) -> None:
    async with claude(proxy) as mine, claude(proxy, OTHER_KEY) as theirs:
        created = await mine.messages.batches.create(requests=[request(1)])  # type: ignore[misc]
        with pytest.raises(anthropic.NotFoundError) as missing:
            await theirs.messages.batches.retrieve(created.id)
        assert missing.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.AuthenticationError):
            async with claude(proxy, "sk-nobody") as stranger:
                await stranger.messages.batches.list()


async def test_a_message_batch_runs_on_anthropics_batch_api_when_the_model_has_one(tmp_path: Path) -> None:
    """Client → tokenyard's Message Batches → the async track → a ``kind: batch, provider: anthropic``
    backend's own Message Batches API: the provider gets one batch of the requests, with its own key, and
    the client gets the provider's answers, billed once as async at the batch price."""
    provider_sim = SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM)
    async with sims(batch=provider_sim) as s:
        config = config_for(s, store=sqlite_url(tmp_path / "m.sqlite3"), realtime_margin_s=2)
        config["backends"]["prov"].update(provider="anthropic", api_key=UPSTREAM_SECRET)
        config["models"][MODEL]["deployments"] = ["api"]  # no idle dedicated capacity: the batch is cheapest
        del config["backends"]["ded"]
        async with running_proxy(config, tmp_path) as proxy, claude(proxy) as client:
            created = await client.messages.batches.create(requests=[request(i) for i in range(3)])  # type: ignore[misc]
            done = await until_ended(client, created.id)
            results = {
                line.custom_id: line.result
                async for line in await client.messages.batches.results(created.id)
            }
            assert done.request_counts.succeeded == 3

            async def billed_once_as_async() -> None:
                rows = (await usage(proxy, group_by="backend"))["data"]
                assert [(row["backend"], row["requests"]) for row in rows] == [("prov", 3)]

            await eventually(billed_once_as_async)
        seen = [r for r in await sim_requests(s["batch"]) if r["path"] == "/v1/messages/batches"]
    assert {result.type for result in results.values()} == {"succeeded"}
    [submitted] = [r for r in seen if r["method"] == "POST"]
    assert submitted["headers"]["x-api-key"] == UPSTREAM_SECRET
    assert len(submitted["body"]["requests"]) == 3
