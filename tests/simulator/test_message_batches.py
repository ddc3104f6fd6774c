"""The simulator's Message Batches API, driven by the official ``anthropic`` SDK on a fake clock: a batch
processes until its turnaround, ends with Messages answers, and its faults error, expire and cancel requests
as Anthropic's do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import Message

from tests.support.clocks import FakeClock
from tests.support.simulators import fast_config, root_url, set_faults
from tokenyard.simulator.server import SimulatorServer

T0 = 1_800_000_000.0


def requests(count: int, **params: Any) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{n}",
            "params": {
                "model": "sim-model",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": f"hi {n}"}],
            }
            | params,
        }
        for n in range(count)
    ]


@pytest.fixture
async def provider() -> AsyncIterator[tuple[anthropic.AsyncAnthropic, SimulatorServer, FakeClock]]:
    clock = FakeClock(T0)
    async with SimulatorServer(fast_config(batch_turnaround_s=60, seed=5), clock=clock) as server:
        client = anthropic.AsyncAnthropic(base_url=root_url(server), api_key="sk-ant-sim", max_retries=0)
        try:
            yield client, server, clock
        finally:
            await client.close()


async def results_of(client: anthropic.AsyncAnthropic, batch_id: str) -> dict[str, Any]:
    return {entry.custom_id: entry.result async for entry in await client.messages.batches.results(batch_id)}


async def test_a_batch_processes_until_its_turnaround_then_ends_with_messages_answers(
    provider: tuple[anthropic.AsyncAnthropic, SimulatorServer, FakeClock],
) -> None:
    client, _, clock = provider
    batch = await client.messages.batches.create(requests=requests(3))  # type: ignore[arg-type]
    assert (batch.type, batch.processing_status, batch.results_url) == ("message_batch", "in_progress", None)
    assert batch.request_counts.processing == 3
    assert batch.id.startswith("msgbatch_")
    clock.advance(59)
    assert (await client.messages.batches.retrieve(batch.id)).processing_status == "in_progress"
    clock.advance(1)
    ended = await client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.ended_at is not None
    assert ended.results_url is not None
    assert (ended.request_counts.succeeded, ended.request_counts.processing) == (3, 0)
    results = await results_of(client, batch.id)
    assert sorted(results) == ["req-0", "req-1", "req-2"]
    for result in results.values():
        assert result.type == "succeeded"
        assert (result.message.type, result.message.role, result.message.stop_reason) in {
            ("message", "assistant", "max_tokens"),
            ("message", "assistant", "end_turn"),
        }
        assert result.message.usage.input_tokens > 0
        assert result.message.usage.cache_read_input_tokens == 0
    listed = await client.messages.batches.list()
    assert [b.id for b in listed.data] == [batch.id]


async def test_faults_error_some_requests_with_the_error_type_of_their_status(
    provider: tuple[anthropic.AsyncAnthropic, SimulatorServer, FakeClock],
) -> None:
    client, server, clock = provider
    await set_faults(server, batch_error_rate=0.5, error_status=529)
    batch = await client.messages.batches.create(requests=requests(10))  # type: ignore[arg-type]
    clock.advance(60)
    counts = (await client.messages.batches.retrieve(batch.id)).request_counts
    assert counts.errored > 0
    assert counts.succeeded > 0
    assert counts.errored + counts.succeeded == 10
    errored = [r for r in (await results_of(client, batch.id)).values() if r.type == "errored"]
    assert len(errored) == counts.errored
    assert {r.error.error.type for r in errored} == {"overloaded_error"}


async def test_an_expired_or_cancelled_batch_keeps_what_ran_and_the_rest_never_runs(
    provider: tuple[anthropic.AsyncAnthropic, SimulatorServer, FakeClock],
) -> None:
    client, server, clock = provider
    await set_faults(server, batch_expire_after_s=30)  # half of the 60 s turnaround
    expiring = await client.messages.batches.create(requests=requests(4))  # type: ignore[arg-type]
    await set_faults(server, batch_expire_after_s=None)
    cancelled = await client.messages.batches.create(requests=requests(4))  # type: ignore[arg-type]
    clock.advance(30)
    canceling = await client.messages.batches.cancel(cancelled.id)
    assert canceling.cancel_initiated_at is not None
    ended = await client.messages.batches.retrieve(expiring.id)
    assert (ended.processing_status, ended.request_counts.succeeded, ended.request_counts.expired) == (
        "ended",
        2,
        2,
    )
    assert sorted(r.type for r in (await results_of(client, expiring.id)).values()) == [
        "expired",
        "expired",
        "succeeded",
        "succeeded",
    ]
    assert sorted(r.type for r in (await results_of(client, cancelled.id)).values()) == [
        "canceled",
        "canceled",
        "succeeded",
        "succeeded",
    ]


async def test_what_anthropic_refuses_at_once_is_refused_in_its_shape(
    provider: tuple[anthropic.AsyncAnthropic, SimulatorServer, FakeClock],
) -> None:
    client, _, clock = provider
    twice = requests(1) + requests(1)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.batches.create(requests=twice)  # type: ignore[arg-type]
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "requests.1.custom_id: 'req-0' is not unique in the batch",
        },
    }
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.create(requests=[{**requests(1)[0], "custom_id": "has space"}])  # type: ignore[arg-type, list-item]
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve("msgbatch_nope")
    batch = await client.messages.batches.create(requests=requests(1))  # type: ignore[arg-type]
    clock.advance(60)
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.cancel(batch.id)  # it has ended


async def test_a_batch_answer_is_the_message_the_messages_api_gives_the_same_params(
    provider: tuple[anthropic.AsyncAnthropic, SimulatorServer, FakeClock],
) -> None:
    client, _, clock = provider
    system: Any = [{"type": "text", "text": "a stable prompt " * 5, "cache_control": {"type": "ephemeral"}}]
    tools: Any = [
        {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
    ]
    asked = requests(1, system=system, tools=tools, tool_choice={"type": "any"})
    batch = await client.messages.batches.create(requests=asked)  # type: ignore[arg-type]
    clock.advance(60)
    ended = await client.messages.batches.retrieve(batch.id)
    assert ended.results_url is not None
    async with httpx.AsyncClient() as http:
        line = (await http.get(ended.results_url)).content.splitlines()[0]
    message = Message.model_validate(orjson.loads(line)["result"]["message"])
    [block] = message.content
    assert (block.type, message.stop_reason) == ("tool_use", "tool_use")
    # A batch has no cache to read: its marked prefix is written, as a first request's is.
    direct = await client.messages.create(**asked[0]["params"])
    assert message.usage == direct.usage
    assert message.usage.cache_creation_input_tokens == 16  # the tool's JSON (one word), the system's 15
