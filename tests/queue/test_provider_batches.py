"""The provider-batch lifecycle on its own: jobs from a real job store go to the simulator's Batch API through
the real adapter, and come back through the ``answered`` callback — or back into the queue when the
provider failed their lines, or when a batch runs late and is cancelled. Every clock is a fake one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.clocks import FakeClock
from tests.support.net import free_port
from tests.support.simulators import set_faults
from tokenyard.adapters.base import BatchUpstream
from tokenyard.adapters.openai_batch import OpenAIBatchUpstream
from tokenyard.config import BackendConfig
from tokenyard.meter.model import UsageRecord
from tokenyard.queue.model import Job, JobResult, new_job_id
from tokenyard.queue.provider_batches import ProviderBatches
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.queue.sqlite_queue import SqliteJobStore
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

T0 = 1_800_000_000.0
CHAT = "/v1/chat/completions"
TRACK = AsyncTrackConfig(realtime_margin_s=60, batches={"max_wait_s": 30, "max_requests": 1000, "poll_s": 10})


class Closed:
    """A circuit breaker that lets everything through."""

    def available(self, now: float) -> bool:
        return True


@dataclass
class BatchBackendHere:
    """A batch backend as the lifecycle reads one (the proxy's ``Backend`` in the service)."""

    name: str
    config: BackendConfig
    batch_api: BatchUpstream | None
    breaker: Closed = field(default_factory=Closed)


@dataclass
class Lifecycle:
    batches: ProviderBatches
    store: SqliteJobStore
    clock: FakeClock  # the lifecycle's wall and monotonic clock
    provider_clock: FakeClock
    provider: SimulatorServer
    answered: list[tuple[Job, JobResult, UsageRecord]]
    usage_asked: list[tuple[str, str, str, int]]

    async def answer(self, job: Job, result: JobResult, usage: UsageRecord) -> None:
        """What the dispatcher does with an answer, as far as the queue sees it: stores it."""
        self.answered.append((job, result, usage))
        await self.store.complete(result)

    async def queue(self, count: int, *, deadline_s: float = 86_400.0, model: str = "llama") -> list[Job]:
        """Jobs enqueued and claimed, as the dispatcher has them when it places them."""
        for n in range(count):
            body = orjson.dumps({"model": "llama", "messages": [{"role": "user", "content": f"hi {n}"}]})
            job = Job(new_job_id(), "team-a", model, CHAT, body, self.clock(), self.clock() + deadline_s)
            job.request_id = f"req_{n}"
            await self.store.enqueue(job)
        return await self.store.claim("dispatcher-test", count, stale_after_s=300)


@pytest.fixture
async def lifecycle(tmp_path: Path) -> AsyncIterator[Lifecycle]:
    provider_clock = FakeClock()
    config = SimulatorConfig(ttft_ms=0, ttft_jitter=0, batch_turnaround_s=100, seed=3)
    async with SimulatorServer(config, clock=provider_clock) as provider:
        api = OpenAIBatchUpstream(provider.base_url, api_key="sk-sim")
        clock = FakeClock(T0)
        store = SqliteJobStore(tmp_path / "q.sqlite3", clock=clock)
        backend = BatchBackendHere("prov", BackendConfig(kind="batch", base_url=provider.base_url), api)
        nowhere = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens: every call is refused
        unreachable = OpenAIBatchUpstream(nowhere, api_key="sk-sim")
        gone = BatchBackendHere("gone", BackendConfig(kind="batch", base_url=nowhere), unreachable)
        usage_asked: list[tuple[str, str, str, int]] = []

        def usage(job: Job, name: str, request_id: str, status: int, body: bytes) -> UsageRecord:
            usage_asked.append((job.id, name, request_id, status))
            return UsageRecord(
                clock(), request_id, job.tenant, job.model, name, "batch", "async", "provider_batch", status
            )

        batches = ProviderBatches(
            store,
            {"prov": backend, "gone": gone},
            {"llama": "prov", "unreachable": "gone"},
            settings=lambda: TRACK,
            body_for=lambda job, name: job.body.replace(b'"llama"', f'"{name}-llama"'.encode()),
            usage=usage,
            wall=clock,
            clock=clock,
        )
        here = Lifecycle(batches, store, clock, provider_clock, provider, [], usage_asked)
        try:
            yield here
        finally:
            await store.aclose()
            await api.aclose()
            await unreachable.aclose()


async def provider_batches(provider: SimulatorServer) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as http:
        data: list[dict[str, object]] = (await http.get(f"{provider.base_url}/batches")).json()["data"]
        return data


async def test_jobs_gather_until_the_wait_is_over_then_go_as_one_batch(lifecycle: Lifecycle) -> None:
    jobs = await lifecycle.queue(5)
    assert lifecycle.batches.backend_for("llama", CHAT) is not None
    assert lifecycle.batches.backend_for("other-model", CHAT) is None
    assert lifecycle.batches.backend_for("llama", "/v1/messages") is None  # OpenAI batches take no Messages
    for job in jobs:
        lifecycle.batches.gather(job, T0)
    assert await lifecycle.batches.submit_due(T0 + 29) == []
    assert await provider_batches(lifecycle.provider) == []  # still gathering
    assert await lifecycle.batches.submit_due(T0 + 30) == []
    [batch] = await provider_batches(lifecycle.provider)
    assert batch["endpoint"] == CHAT
    async with httpx.AsyncClient() as http:
        lines = (
            await http.get(f"{lifecycle.provider.base_url}/files/{batch['input_file_id']}/content")
        ).content
    assert [orjson.loads(line)["custom_id"] for line in lines.splitlines()] == [job.id for job in jobs]
    assert {orjson.loads(line)["body"]["model"] for line in lines.splitlines()} == {
        "prov-llama"
    }  # body_for's
    assert list((await lifecycle.store.open_batches()).values()) == [[job.id for job in jobs]]


async def test_answered_lines_are_reported_and_failed_ones_go_back_to_the_queue(lifecycle: Lifecycle) -> None:
    await set_faults(lifecycle.provider, batch_error_rate=0.5, error_status=500)
    jobs = await lifecycle.queue(10)
    for job in jobs:
        lifecycle.batches.gather(job, T0)
    await lifecycle.batches.submit_due(T0 + 30)
    await lifecycle.batches.poll_if_due(lifecycle.answer)
    assert lifecycle.answered == []  # the provider is not done yet
    lifecycle.provider_clock.advance(101)  # done at the provider
    await lifecycle.batches.poll_if_due(lifecycle.answer)
    assert lifecycle.answered == [], "not polled again before batches.poll_s"
    lifecycle.clock.advance(10)
    await lifecycle.batches.poll_if_due(lifecycle.answer)

    answered = {job.id for job, _, _ in lifecycle.answered}
    back = {job.id for job in await lifecycle.store.claim("dispatcher-test", 20, stale_after_s=300)}
    assert answered, "seed 3 fails some lines, not all"
    assert back, "seed 3 fails some lines, not all"
    assert answered | back == {job.id for job in jobs}
    assert not answered & back
    for job, result, usage in lifecycle.answered:
        assert (result.job_id, result.status, result.path) == (job.id, 200, "provider_batch")
        assert result.request_id == job.request_id == usage.request_id
        assert dict(result.served_by) == {"x-tokenyard-backend": "prov", "x-tokenyard-backend-kind": "batch"}
        assert orjson.loads(result.body)["object"] == "chat.completion"
    assert sorted(lifecycle.usage_asked) == sorted(
        (j.id, "prov", j.request_id, 200) for j, _, _ in lifecycle.answered
    )
    assert await lifecycle.store.open_batches() == {}


async def test_a_batch_still_open_near_its_jobs_deadline_is_cancelled_and_its_jobs_come_back(
    lifecycle: Lifecycle,
) -> None:
    jobs = await lifecycle.queue(3, deadline_s=200)
    for job in jobs:
        lifecycle.batches.gather(job, T0)
    await lifecycle.batches.submit_due(T0 + 30)
    lifecycle.clock.elapsed_s = 130  # the deadline is 70 s away: more than realtime_margin_s
    await lifecycle.batches.poll_if_due(lifecycle.answer)
    assert [b["status"] for b in await provider_batches(lifecycle.provider)] != ["cancelling"]
    lifecycle.clock.elapsed_s = 140  # within the margin: cancel it
    await lifecycle.batches.poll_if_due(lifecycle.answer)
    assert [b["status"] for b in await provider_batches(lifecycle.provider)] in (
        ["cancelling"],
        ["cancelled"],
    )
    lifecycle.provider_clock.advance(1)
    lifecycle.clock.advance(10)
    await lifecycle.batches.poll_if_due(lifecycle.answer)
    assert lifecycle.answered == []
    back = await lifecycle.store.claim("dispatcher-test", 20, stale_after_s=300)
    assert {job.id for job in back} == {job.id for job in jobs}


async def test_a_submission_the_provider_refuses_hands_the_jobs_back(lifecycle: Lifecycle) -> None:
    jobs = await lifecycle.queue(2, model="unreachable")
    for job in jobs:
        lifecycle.batches.gather(job, T0)
    assert [job.id for job in await lifecycle.batches.submit_due(T0 + 30)] == [job.id for job in jobs]
    assert await lifecycle.store.open_batches() == {}
