"""Anthropic's Message Batches as a provider batch path: the adapter's formats (pure), the adapter against the
simulator's Message Batches API, and async Messages jobs from a real job store carried through it — answered
once with the Messages answer, put back when the provider errored or expired them, resumed by a restarted
leader. Every clock is a fake one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.clocks import FakeClock
from tests.support.simulators import set_faults, sim_requests
from tokenyard.adapters.anthropic_batch import AnthropicBatchUpstream, batch_state, create_bodies, results
from tokenyard.adapters.base import BatchLine, BatchUpstream
from tokenyard.config import BackendConfig
from tokenyard.meter.model import UsageRecord
from tokenyard.queue.model import Job, JobResult, new_job_id
from tokenyard.queue.provider_batches import ProviderBatches
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.queue.sqlite_queue import SqliteJobStore
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

T0 = 1_800_000_000.0
MESSAGES = "/v1/messages"
KEY = "sk-ant-test-secret-key"


def line(n: int, text: str = "hi") -> BatchLine:
    body = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": f"{text} {n}"}]}
    return BatchLine(f"job_{n}", MESSAGES, orjson.dumps(body))


# -- formats ------------------------------------------------------------------------------------------------


def test_a_create_body_embeds_each_client_body_as_params_byte_for_byte() -> None:
    pretty = BatchLine("job_1", MESSAGES, b'{\n  "model": "claude", "max_tokens": 8,\n  "messages": []\n}')
    [(body, ids)] = create_bodies([pretty, line(2)])
    assert ids == ["job_1", "job_2"]
    assert body.startswith(b'{"requests":[{"custom_id":"job_1","params":{\n  "model"')
    parsed = orjson.loads(body)
    assert [r["custom_id"] for r in parsed["requests"]] == ["job_1", "job_2"]
    assert parsed["requests"][0]["params"] == {"model": "claude", "max_tokens": 8, "messages": []}


def test_batches_split_at_the_request_limit_and_the_byte_limit_in_order() -> None:
    lines = [line(n) for n in range(5)]
    assert [ids for _, ids in create_bodies(lines, max_requests=2)] == [
        ["job_0", "job_1"],
        ["job_2", "job_3"],
        ["job_4"],
    ]
    one = len(next(create_bodies(lines[:1]))[0])
    for body, ids in create_bodies(lines, max_bytes=2 * one):
        assert len(body) <= 2 * one
        assert len(orjson.loads(body)["requests"]) == len(ids)
    assert [i for _, ids in create_bodies(lines, max_bytes=2 * one) for i in ids] == [
        each.custom_id for each in lines
    ]
    with pytest.raises(ValueError, match="job_0"):
        list(create_bodies(lines[:1], max_bytes=one - 1))


def test_results_become_the_messages_answer_or_its_error_and_unrun_requests_have_none() -> None:
    message = {"id": "msg_1", "type": "message", "usage": {"input_tokens": 3, "output_tokens": 2}}
    invalid = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
        "request_id": None,
    }
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    content = (
        b"\n".join(
            orjson.dumps(item)
            for item in (
                {"custom_id": "b", "result": {"type": "errored", "error": invalid}},
                {"custom_id": "a", "result": {"type": "succeeded", "message": message}},
                {"custom_id": "c", "result": {"type": "errored", "error": overloaded}},
                {"custom_id": "d", "result": {"type": "expired"}},
                {"custom_id": "e", "result": {"type": "canceled"}},
            )
        )
        + b"\nnot json\n"
    )
    got = results(content)
    assert sorted(got) == ["a", "b", "c"]
    assert (got["a"].status, orjson.loads(got["a"].body)) == (200, message)
    assert (got["b"].status, orjson.loads(got["b"].body)) == (400, invalid)
    assert got["c"].status == 529


def test_a_message_batch_reads_in_openai_words() -> None:
    counts = {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 1}
    ended = batch_state({"id": "msgbatch_1", "processing_status": "ended", "request_counts": counts})
    assert (ended.status, ended.terminal, ended.total, ended.completed, ended.failed) == (
        "completed",
        True,
        4,
        2,
        2,
    )
    canceling = batch_state({"id": "m", "processing_status": "canceling", "request_counts": counts})
    assert (canceling.status, canceling.terminal) == ("cancelling", False)
    running = {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    assert batch_state({"id": "m", "processing_status": "in_progress", "request_counts": running}).total == 3


# -- the adapter against the simulator -------------------------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[tuple[SimulatorServer, FakeClock]]:
    clock = FakeClock(T0)
    config = SimulatorConfig(ttft_ms=0, ttft_jitter=0, batch_turnaround_s=100, seed=3)
    async with SimulatorServer(config, clock=clock) as server:
        yield server, clock


async def test_the_adapter_creates_polls_reads_and_cancels_message_batches(
    provider: tuple[SimulatorServer, FakeClock],
) -> None:
    server, clock = provider
    api = AnthropicBatchUpstream(server.base_url, api_key=KEY)
    try:
        assert api.endpoints == frozenset({MESSAGES})
        [(body, ids)] = list(api.input_files([line(n) for n in range(3)]))
        state = await api.submit(body, MESSAGES)
        assert (state.status, state.total, state.terminal) == ("in_progress", 3, False)
        clock.advance(101)
        done = await api.retrieve(state.id)
        assert (done.status, done.completed, done.terminal) == ("completed", 3, True)
        answers = await api.outcomes(done)
        assert sorted(answers) == sorted(ids)
        for answer in answers.values():
            message = orjson.loads(answer.body)
            assert (answer.status, message["type"], message["role"]) == (200, "message", "assistant")
            assert message["usage"]["input_tokens"] > 0

        other = await api.submit(next(iter(api.input_files([line(9)])))[0], MESSAGES)
        assert (await api.cancel(other.id)).status == "cancelled"  # batch_cancelling_s is 0: ended at once
        assert await api.outcomes(await api.retrieve(other.id)) == {}  # canceled before it ran

        for seen in await sim_requests(server):
            headers = seen["headers"]
            assert isinstance(headers, dict)
            assert (headers["x-api-key"], headers["anthropic-version"]) == (KEY, "2023-06-01")
            assert "authorization" not in headers
        assert {str(r["path"]).split("/msgbatch_")[0] for r in await sim_requests(server)} == {
            "/v1/messages/batches"
        }
    finally:
        await api.aclose()


# -- async Messages jobs through the provider-batch lifecycle -------------------------------------------


class Closed:
    """A circuit breaker that lets everything through."""

    def available(self, now: float) -> bool:
        return True


@dataclass
class AnthropicBackend:
    """A batch backend as the lifecycle reads one (the proxy's ``Backend`` in the service)."""

    name: str
    config: BackendConfig
    batch_api: BatchUpstream | None
    breaker: Closed = field(default_factory=Closed)


@dataclass
class Leader:
    """The dispatcher's side of provider batches, as one leader runs them, with what it answered (and so
    bills: the dispatcher settles each answer with its usage record)."""

    batches: ProviderBatches
    store: SqliteJobStore
    clock: FakeClock
    answered: list[tuple[Job, JobResult, UsageRecord]]

    async def answer(self, job: Job, result: JobResult, usage: UsageRecord) -> None:
        if await self.store.complete(result):
            self.answered.append((job, result, usage))

    async def poll(self, after_s: float = 10) -> None:
        self.clock.advance(after_s)
        await self.batches.poll_if_due(self.answer)


TRACK = AsyncTrackConfig(realtime_margin_s=60, batches={"max_wait_s": 30, "max_requests": 1000, "poll_s": 10})


def leader_of(store: SqliteJobStore, api: BatchUpstream, clock: FakeClock) -> Leader:
    backend = AnthropicBackend(
        "claude-batch", BackendConfig(kind="batch", provider="anthropic", base_url="http://x/v1"), api
    )

    def usage(job: Job, name: str, request_id: str, status: int, body: bytes) -> UsageRecord:
        return UsageRecord(
            clock(), request_id, job.tenant, job.model, name, "batch", "async", "provider_batch", status
        )

    batches = ProviderBatches(
        store,
        {"claude-batch": backend},
        {"claude": "claude-batch"},
        settings=lambda: TRACK,
        body_for=lambda job, name: job.body,
        usage=usage,
        wall=clock,
        clock=clock,
    )
    return Leader(batches, store, clock, [])


@dataclass
class Track:
    store: SqliteJobStore
    api: AnthropicBatchUpstream
    clock: FakeClock
    provider: SimulatorServer
    provider_clock: FakeClock

    async def messages_jobs(self, count: int, *, deadline_s: float = 86_400.0, **extra: object) -> list[Job]:
        """Async Messages jobs enqueued and claimed, as the dispatcher holds them when it places them."""
        for n in range(count):
            body = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": f"q{n}"}]}
            job = Job(
                new_job_id(), "team-a", "claude", MESSAGES, orjson.dumps({**body, **extra}), self.clock(),
                self.clock() + deadline_s, request_id=f"req_{n}",
            )  # fmt: skip
            await self.store.enqueue(job)
        return await self.store.claim("leader-1", count, stale_after_s=300)

    async def back_in_queue(self) -> set[str]:
        return {job.id for job in await self.store.claim("leader-test", 100, stale_after_s=300)}


@pytest.fixture
async def track(tmp_path: Path, provider: tuple[SimulatorServer, FakeClock]) -> AsyncIterator[Track]:
    server, provider_clock = provider
    clock = FakeClock(T0)
    store = SqliteJobStore(tmp_path / "q.sqlite3", clock=clock)
    api = AnthropicBatchUpstream(server.base_url, api_key=KEY)
    try:
        yield Track(store, api, clock, server, provider_clock)
    finally:
        await store.aclose()
        await api.aclose()


async def test_async_messages_jobs_are_answered_with_the_messages_answer_once(track: Track) -> None:
    leader = leader_of(track.store, track.api, track.clock)
    assert leader.batches.backend_for("claude", MESSAGES) is not None
    assert (
        leader.batches.backend_for("claude", "/v1/chat/completions") is None
    )  # Anthropic takes Messages only
    jobs = await track.messages_jobs(4)
    for job in jobs:
        leader.batches.gather(job, T0)
    assert await leader.batches.submit_due(T0 + 30) == []
    assert list((await track.store.open_batches()).values()) == [[job.id for job in jobs]]
    await leader.poll()
    assert leader.answered == []  # still in progress at the provider
    track.provider_clock.advance(101)
    await leader.poll()
    assert sorted(job.id for job, _, _ in leader.answered) == sorted(job.id for job in jobs)
    for job, result, usage in leader.answered:
        message = orjson.loads(result.body)
        assert (result.status, result.path, message["type"]) == (200, "provider_batch", "message")
        assert dict(result.served_by) == {
            "x-tokenyard-backend": "claude-batch",
            "x-tokenyard-backend-kind": "batch",
        }
        assert result.request_id == job.request_id == usage.request_id
    await leader.poll()
    assert len(leader.answered) == 4, "answered once"
    assert await track.store.open_batches() == {}
    assert await track.back_in_queue() == set()


async def test_requests_the_provider_errored_go_back_and_the_requests_own_errors_are_answers(
    track: Track,
) -> None:
    leader = leader_of(track.store, track.api, track.clock)
    await set_faults(track.provider, batch_error_rate=0.5, error_status=529)
    overloaded = await track.messages_jobs(8)
    for job in overloaded:
        leader.batches.gather(job, T0)
    await leader.batches.submit_due(T0 + 30)
    track.provider_clock.advance(101)
    await leader.poll()
    answered, back = {job.id for job, _, _ in leader.answered}, await track.back_in_queue()
    assert answered, "seed 3 errors some requests, not all"
    assert back, "seed 3 errors some requests, not all"
    assert answered | back == {job.id for job in overloaded}
    assert not answered & back

    await set_faults(track.provider, batch_error_rate=0.0)
    leader.answered.clear()
    [invalid] = await track.messages_jobs(1, max_tokens="many")  # the request's own fault
    leader.batches.gather(invalid, track.clock())
    await leader.batches.submit_due(track.clock() + 30)
    track.provider_clock.advance(101)
    await leader.poll()
    [(job, result, _)] = leader.answered
    assert (job.id, result.status) == (invalid.id, 400)
    assert orjson.loads(result.body)["error"]["type"] == "invalid_request_error"
    assert await track.back_in_queue() == set()


async def test_expired_requests_go_another_way_before_their_deadline(track: Track) -> None:
    leader = leader_of(track.store, track.api, track.clock)
    await set_faults(track.provider, batch_expire_after_s=30)  # ends at 30 s with nothing done
    jobs = await track.messages_jobs(3)
    for job in jobs:
        leader.batches.gather(job, T0)
    await leader.batches.submit_due(T0 + 30)
    track.provider_clock.advance(31)
    await leader.poll()
    assert leader.answered == []
    assert await track.back_in_queue() == {job.id for job in jobs}
    assert await track.store.open_batches() == {}


async def test_a_batch_still_running_near_its_jobs_deadline_is_cancelled_and_its_jobs_come_back(
    track: Track,
) -> None:
    leader = leader_of(track.store, track.api, track.clock)
    jobs = await track.messages_jobs(2, deadline_s=200)
    for job in jobs:
        leader.batches.gather(job, T0)
    await leader.batches.submit_due(T0 + 30)
    track.clock.elapsed_s = 140  # the deadline is 60 s away: within realtime_margin_s
    await leader.batches.poll_if_due(leader.answer)
    await leader.poll()  # the cancel has settled (batch_cancelling_s 0): nothing ran
    assert leader.answered == []
    assert await track.back_in_queue() == {job.id for job in jobs}


async def test_a_restarted_leader_resumes_polling_the_batch_and_answers_each_job_once(track: Track) -> None:
    first = leader_of(track.store, track.api, track.clock)
    jobs = await track.messages_jobs(5)
    for job in jobs:
        first.batches.gather(job, T0)
    await first.batches.submit_due(T0 + 30)
    await first.poll()  # still in progress; then the leader is gone (killed: nothing released, no memory)
    del first

    track.provider_clock.advance(101)
    second = leader_of(track.store, track.api, track.clock)  # knows the batch only from the store
    await second.poll()
    assert sorted(job.id for job, _, _ in second.answered) == sorted(job.id for job in jobs)
    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{track.provider.base_url}/messages/batches")).json()["data"]
    assert len(listed) == 1, "the batch was resumed, not submitted again"
    await second.poll()
    assert len(second.answered) == 5, "each job answered (and billed) once"
