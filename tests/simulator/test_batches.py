"""The Batch API over real HTTP, through the official ``openai`` SDK, on a fake clock the tests advance.

Most tests share one simulator (reset before each) with ``batch_turnaround_s=100``: validating until t=10,
in progress until t=90 (N lines finishing evenly, the last at 90), finalizing until t=100. No test waits
for real time except the one that checks the real clock drives batches too."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types import Batch, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion

from tests.support.clocks import FakeClock
from tests.support.simulators import fast_config
from tokenyard.simulator.cli import add_arguments, config_from_args
from tokenyard.simulator.server import SimulatorServer

TURNAROUND_S = 100.0
DAY_S = 86_400.0
CHAT = "/v1/chat/completions"


Sim = tuple[openai.AsyncOpenAI, FakeClock]
OpenSim = Callable[..., contextlib.AbstractAsyncContextManager[Sim]]


@pytest.fixture(scope="module")
async def shared_batch_server() -> AsyncIterator[tuple[SimulatorServer, FakeClock]]:
    clock = FakeClock()
    async with SimulatorServer(fast_config(batch_turnaround_s=TURNAROUND_S), clock=clock) as server:
        yield server, clock


@pytest.fixture
def batch_sim(shared_batch_server: tuple[SimulatorServer, FakeClock]) -> OpenSim:
    """Opens the SDK on a simulator with a fake clock: the module's shared one, reset (files, batches and
    faults), or — given config ``overrides`` — a fresh one, which takes a little longer to start and stop."""

    @contextlib.asynccontextmanager
    async def open_sim(**overrides: Any) -> AsyncIterator[Sim]:
        async with contextlib.AsyncExitStack() as stack:
            server, clock = shared_batch_server
            if overrides:
                clock = FakeClock()
                config = fast_config(**{"batch_turnaround_s": TURNAROUND_S, **overrides})
                server = await stack.enter_async_context(SimulatorServer(config, clock=clock))
            else:
                server.app.state.reset()
                clock.elapsed_s = 0.0  # whole seconds, so the integer *_at stamps are exact
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            yield await stack.enter_async_context(client), clock

    return open_sim


async def set_faults(client: openai.AsyncOpenAI, **faults: Any) -> None:
    async with raw_http(client) as http:
        response = await http.post("/sim/faults", json=faults)
    assert response.status_code == 200, response.text


def raw_http(client: openai.AsyncOpenAI) -> httpx.AsyncClient:
    """A plain HTTP client rooted where ``client`` points (``/v1/...`` and ``/sim/...`` paths)."""
    return httpx.AsyncClient(base_url=str(client.base_url).removesuffix("/v1/"))


def chat_line(custom_id: str, text: str = "hello there", **fields: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **fields}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


async def start_batch(
    client: openai.AsyncOpenAI, lines: list[dict[str, Any]] | bytes, endpoint: str = CHAT
) -> Batch:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    uploaded = await client.files.create(file=("requests.jsonl", content), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )


async def at(client: openai.AsyncOpenAI, clock: FakeClock, batch: Batch, elapsed_s: float) -> Batch:
    """The batch as seen when ``elapsed_s`` have passed since it was created."""
    clock.elapsed_s = batch.created_at - clock.start + elapsed_s
    return await client.batches.retrieve(batch.id)


async def file_lines(client: openai.AsyncOpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A batch output or error file's lines, by custom_id."""
    assert file_id is not None
    content = (await client.files.content(file_id)).content
    return {line["custom_id"]: line for line in map(orjson.loads, content.splitlines())}


def counts(batch: Batch) -> tuple[int, int, int]:
    assert batch.request_counts is not None
    return batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed


async def test_a_batch_goes_validating_in_progress_finalizing_completed(batch_sim: OpenSim) -> None:
    async with batch_sim() as (client, clock):
        uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"job": "nightly"}
        )
        assert created.id.startswith("batch_")
        assert (created.object, created.status, created.model) == ("batch", "validating", "m")
        assert (created.input_file_id, created.endpoint, created.completion_window) == (
            uploaded.id,
            CHAT,
            "24h",
        )
        assert created.metadata == {"job": "nightly"}
        assert created.expires_at == created.created_at + DAY_S
        assert counts(created) == (0, 0, 0)
        assert created.in_progress_at is created.output_file_id is created.errors is None

        seen = [await at(client, clock, created, elapsed_s) for elapsed_s in (9.9, 10, 89.9, 90, 99.9, 100)]

    assert [b.status for b in seen] == [
        "validating", "in_progress", "in_progress", "finalizing", "finalizing", "completed"
    ]  # fmt: skip
    done = seen[-1]
    assert (done.in_progress_at, done.finalizing_at, done.completed_at) == tuple(
        created.created_at + offset for offset in (10, 90, 100)
    )
    assert done.failed_at is done.expired_at is done.cancelling_at is done.cancelled_at is None
    assert (done.error_file_id, done.errors) == (None, None)  # nothing failed: no error file at all
    assert counts(done) == (1, 1, 0)


async def test_output_lines_carry_chat_completions_with_usage_summed_on_the_batch(batch_sim: OpenSim) -> None:
    lines = [chat_line(f"req-{n}", "word " * (n + 1)) for n in range(4)]
    async with batch_sim() as (client, clock):
        batch = await start_batch(client, lines)
        partway = await at(client, clock, batch, 50)  # lines finish at 30, 50, 70 and 90
        done = await at(client, clock, batch, TURNAROUND_S)
        output = await file_lines(client, done.output_file_id)
        output_file = await client.files.retrieve(done.output_file_id or "")

    assert counts(partway) == (4, 2, 0)
    assert counts(done) == (4, 4, 0)
    assert (output_file.purpose, output_file.filename) == ("batch_output", f"{batch.id}_output.jsonl")
    assert sorted(output) == [f"req-{n}" for n in range(4)]
    for n in range(4):
        line = output[f"req-{n}"]
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (n + 1, 4)
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (10, 16, 26)


@pytest.mark.parametrize(
    ("endpoint", "body", "model_type"),
    [
        (
            CHAT,
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            ChatCompletion,
        ),
        ("/v1/completions", {"model": "m", "prompt": ["one", "two"], "n": 2}, Completion),
        ("/v1/embeddings", {"model": "e", "input": ["a b", "c"], "dimensions": 4}, CreateEmbeddingResponse),
    ],
)
async def test_a_line_gets_the_answer_the_real_time_endpoint_gives_the_same_body(
    batch_sim: OpenSim, endpoint: str, body: dict[str, Any], model_type: type[Any]
) -> None:
    line = {"custom_id": "only", "method": "POST", "url": endpoint, "body": body}
    async with batch_sim() as (client, clock):
        batch = await start_batch(client, [line], endpoint)
        done = await at(client, clock, batch, TURNAROUND_S)
        [output_line] = (await file_lines(client, done.output_file_id)).values()
        batch_answer = output_line["response"]["body"]
        # The same bytes as the batch line's body, since those bytes key the generated text.
        async with raw_http(client) as http:
            realtime_answer = (await http.post(endpoint, content=orjson.dumps(body))).json()

    model_type.model_validate(batch_answer)
    for answer in (batch_answer, realtime_answer):  # ids and times differ by nature
        answer.pop("id", None)
        answer.pop("created", None)
    assert batch_answer == realtime_answer


async def test_list_pages_newest_first_as_openai_pages(batch_sim: OpenSim) -> None:
    async with batch_sim() as (client, _clock):
        ids = [(await start_batch(client, [chat_line("a")])).id for _ in range(5)]
        newest_first = ids[::-1]

        first = await client.batches.list(limit=2)
        second = await client.batches.list(limit=2, after=first.data[-1].id)
        last = await client.batches.list(limit=2, after=second.data[-1].id)
        everything = [batch.id async for batch in client.batches.list(limit=2)]
        raw = await client.get("/batches", options={"params": {"limit": 2}}, cast_to=httpx.Response)

    assert ([b.id for b in first.data], first.has_more) == (newest_first[:2], True)
    assert ([b.id for b in second.data], second.has_more) == (newest_first[2:4], True)
    assert ([b.id for b in last.data], last.has_more) == (newest_first[4:], False)
    assert everything == newest_first
    page = raw.json()
    assert (page["object"], page["first_id"], page["last_id"]) == ("list", newest_first[0], newest_first[1])


@pytest.mark.parametrize("limit", [0, 101, "many"])
async def test_list_limit_must_be_1_to_100(batch_sim: OpenSim, limit: object) -> None:
    async with batch_sim() as (client, _clock):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.batches.list(limit=limit)  # type: ignore[arg-type]
    assert caught.value.param == "limit"


async def test_cancel_keeps_what_ran_and_reports_the_rest_as_batch_cancelled(batch_sim: OpenSim) -> None:
    lines = [chat_line(f"req-{n}") for n in range(4)]
    async with batch_sim() as (client, clock):
        batch = await start_batch(client, lines)
        await at(client, clock, batch, 55)  # req-0 and req-1 have run
        cancelling = await client.batches.cancel(batch.id)
        cancelled = await client.batches.retrieve(batch.id)
        output = await file_lines(client, cancelled.output_file_id)
        errors = await file_lines(client, cancelled.error_file_id)
        with pytest.raises(openai.ConflictError) as caught:
            await client.batches.cancel(batch.id)

    assert (cancelling.status, cancelling.cancelling_at) == ("cancelling", batch.created_at + 55)
    assert (cancelled.status, cancelled.cancelled_at) == ("cancelled", batch.created_at + 55)
    assert counts(cancelled) == (4, 2, 2)
    assert sorted(output) == ["req-0", "req-1"]
    assert sorted(errors) == ["req-2", "req-3"]
    assert errors["req-2"]["response"] is None
    assert errors["req-2"]["error"]["code"] == "batch_cancelled"
    assert caught.value.body == {
        "message": "Cannot cancel a batch with status 'cancelled'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_cancelling_lasts_batch_cancelling_s_and_a_second_cancel_changes_nothing(
    batch_sim: OpenSim,
) -> None:
    async with batch_sim(batch_cancelling_s=5.0) as (client, clock):
        batch = await start_batch(client, [chat_line("a")])
        await client.batches.cancel(batch.id)  # still validating: nothing will run
        again = await client.batches.cancel(batch.id)
        still = await at(client, clock, batch, 4.9)
        cancelled = await at(client, clock, batch, 5)
        errors = await file_lines(client, cancelled.error_file_id)

    assert (again.status, again.cancelling_at, still.status) == ("cancelling", batch.created_at, "cancelling")
    assert (cancelled.status, cancelled.cancelled_at) == ("cancelled", batch.created_at + 5)
    assert (counts(cancelled), cancelled.output_file_id, cancelled.in_progress_at) == ((1, 0, 1), None, None)
    assert errors["a"]["error"]["code"] == "batch_cancelled"


async def test_injected_line_failures_fill_the_error_file_and_the_counts_match(batch_sim: OpenSim) -> None:
    lines = [chat_line(f"req-{n}") for n in range(20)]

    async def run() -> tuple[set[str], set[str], Batch]:
        async with batch_sim() as (client, clock):
            await set_faults(client, batch_error_rate=0.3, error_status=503)
            done = await at(client, clock, await start_batch(client, lines), TURNAROUND_S)
            output = await file_lines(client, done.output_file_id)
            errors = await file_lines(client, done.error_file_id)
        for line in errors.values():
            assert line["error"] is None
            assert line["response"]["status_code"] == 503
            assert line["response"]["body"]["error"]["type"] == "server_error"
        return set(output), set(errors), done

    output, errors, done = await run()

    assert done.status == "completed"
    assert counts(done) == (20, len(output), len(errors))
    assert output
    assert errors
    assert not output & errors
    assert output | errors == {line["custom_id"] for line in lines}
    assert (await run())[1] == errors  # after a reset, the same seed fails the same lines


async def test_live_faults_apply_to_batches_created_after_them(batch_sim: OpenSim) -> None:
    async with batch_sim() as (client, clock):
        before = await start_batch(client, [chat_line("a")])
        await set_faults(client, batch_error_rate=1.0)
        after = await start_batch(client, [chat_line("a")])
        assert counts(await at(client, clock, before, TURNAROUND_S)) == (1, 1, 0)
        assert counts(await at(client, clock, after, TURNAROUND_S)) == (1, 0, 1)


async def test_lines_the_endpoint_rejects_are_answered_with_its_error(batch_sim: OpenSim) -> None:
    lines = [
        chat_line("ok"),
        {**chat_line("no-messages"), "body": {"model": "llama"}},
        {**chat_line("bad-cap"), "body": {**chat_line("x")["body"], "model": "llama", "max_tokens": 0}},
    ]
    lines[0]["body"]["model"] = "llama"
    async with batch_sim(models=["llama"]) as (client, clock):
        done = await at(client, clock, await start_batch(client, lines), TURNAROUND_S)
        errors = await file_lines(client, done.error_file_id)
        unknown = await at(
            client, clock, await start_batch(client, [chat_line("a")]), TURNAROUND_S
        )  # model "m" is not served
        unknown_errors = await file_lines(client, unknown.error_file_id)

    assert counts(done) == (3, 1, 2)
    assert {cid: line["response"]["status_code"] for cid, line in errors.items()} == {
        "no-messages": 400,
        "bad-cap": 400,
    }
    assert errors["bad-cap"]["response"]["body"]["error"]["param"] == "max_tokens"
    assert (counts(unknown), unknown.output_file_id) == ((1, 0, 1), None)
    assert unknown_errors["a"]["response"]["status_code"] == 404
    assert unknown_errors["a"]["response"]["body"]["error"]["code"] == "model_not_found"


async def test_invalid_input_fails_the_batch_with_every_problem_and_its_line(batch_sim: OpenSim) -> None:
    lines = [
        jsonl([chat_line("a")]),
        b"{not json\n",
        jsonl([chat_line("a")]),
        jsonl([chat_line("b", url="/v1/embeddings")]),
        jsonl([chat_line("c", method="GET")]),
        jsonl([{**chat_line("d"), "body": {"messages": []}}]),
        jsonl([{**chat_line("e"), "body": {**chat_line("x")["body"], "model": "other"}}]),
        jsonl([{"method": "POST", "url": CHAT, "body": {"model": "m"}}]),
    ]
    async with batch_sim() as (client, clock):
        batch = await start_batch(client, b"".join(lines))
        failed = await at(client, clock, batch, 10)

    assert (failed.status, failed.failed_at, failed.in_progress_at) == ("failed", batch.created_at + 10, None)
    assert (counts(failed), failed.output_file_id, failed.error_file_id) == ((0, 0, 0), None, None)
    assert failed.errors is not None
    assert failed.errors.object == "list"
    assert [(e.line, e.code, e.param) for e in failed.errors.data or []] == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "url_mismatch", "url"),
        (5, "invalid_method", "method"),
        (6, "missing_required_parameter", "body.model"),
        (7, "model_mismatch", "body.model"),
        (8, "missing_required_parameter", "custom_id"),
    ]
    assert all(error.message for error in failed.errors.data or [])


@pytest.mark.parametrize(
    ("overrides", "content", "code"),
    [
        ({}, b"", "empty_file"),
        ({"batch_max_lines": 2}, jsonl([chat_line("a"), chat_line("b"), chat_line("c")]), "too_many_tasks"),
        # 62 lines of 16,384 tokens ask for 1,015,808: past what one batch may enqueue. Answered at creation,
        # inside the loop a quick-start proxy shares, unbounded batches could stall it for as long as asked.
        (
            {},
            jsonl(
                [
                    {**chat_line(f"l{i}"), "body": {**chat_line("x")["body"], "max_tokens": 16_384}}
                    for i in range(62)
                ]
            ),
            "token_limit_exceeded",
        ),
    ],
)
async def test_empty_and_oversized_inputs_fail(
    batch_sim: OpenSim, overrides: dict[str, Any], content: bytes, code: str
) -> None:
    async with batch_sim(**overrides) as (client, clock):
        failed = await at(client, clock, await start_batch(client, content), 10)
    assert failed.status == "failed"
    assert failed.errors is not None
    assert [(e.code, e.line) for e in failed.errors.data or []] == [(code, None)]


async def test_a_turnaround_past_the_24h_window_expires_with_partial_results(batch_sim: OpenSim) -> None:
    lines = [chat_line(f"req-{n}") for n in range(4)]
    # Validating until 20,000 s; lines finish at 60,000, 100,000, 140,000 and 180,000 s.
    async with batch_sim(batch_turnaround_s=200_000.0) as (client, clock):
        batch = await start_batch(client, lines)
        running = await at(client, clock, batch, DAY_S - 1)
        expired = await at(client, clock, batch, DAY_S)
        output = await file_lines(client, expired.output_file_id)
        errors = await file_lines(client, expired.error_file_id)

    assert (running.status, expired.status) == ("in_progress", "expired")
    assert expired.expired_at == expired.expires_at == batch.created_at + DAY_S
    assert counts(expired) == (4, 1, 3)
    assert sorted(output) == ["req-0"]
    assert {line["error"]["code"] for line in errors.values()} == {"batch_expired"}
    assert all(line["response"] is None for line in errors.values())


async def test_forced_expiry_expires_batches_at_the_configured_time(batch_sim: OpenSim) -> None:
    async with batch_sim() as (client, _clock):
        await set_faults(client, batch_expire_after_s=0.0)
        batch = await start_batch(client, [chat_line("a"), chat_line("b")])
        expired = await client.batches.retrieve(batch.id)
        errors = await file_lines(client, expired.error_file_id)

    assert batch.expires_at == batch.created_at
    assert (expired.status, expired.expired_at, expired.output_file_id) == ("expired", batch.created_at, None)
    assert counts(expired) == (2, 0, 2)
    assert sorted(errors) == ["a", "b"]


async def test_unknown_ids_are_404_in_openai_error_shape(batch_sim: OpenSim) -> None:
    async with batch_sim() as (client, _clock):
        for call in (client.batches.retrieve, client.batches.cancel):
            with pytest.raises(openai.NotFoundError) as caught:
                await call("batch_missing")
            assert caught.value.body == {
                "message": "No batch found with id 'batch_missing'.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        with pytest.raises(openai.NotFoundError) as missing_file:
            await client.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    assert missing_file.value.param == "input_file_id"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"endpoint": "/v1/responses"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {str(n): "v" for n in range(17)}}, "metadata"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
async def test_create_refuses_bad_fields_at_once(
    batch_sim: OpenSim, fields: dict[str, Any], param: str
) -> None:
    async with batch_sim() as (client, _clock):
        uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
        body = {"input_file_id": uploaded.id, "endpoint": CHAT, "completion_window": "24h", **fields}
        with pytest.raises(openai.BadRequestError) as caught:
            await client.post(
                "/batches", body={k: v for k, v in body.items() if v is not None}, cast_to=Batch
            )
    assert caught.value.param == param


async def test_an_input_file_must_have_purpose_batch(batch_sim: OpenSim) -> None:
    async with batch_sim() as (client, _clock):
        uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="user_data")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    assert caught.value.param == "input_file_id"


async def test_the_real_clock_drives_batches_too() -> None:
    async with (
        SimulatorServer(fast_config(batch_turnaround_s=0.05)) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        batch = await start_batch(client, [chat_line("a")])
        for _ in range(100):
            batch = await client.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
            await asyncio.sleep(0.01)
    assert (batch.status, counts(batch)) == ("completed", (1, 1, 0))


async def test_reset_forgets_files_and_batches(http: httpx.AsyncClient, sim: SimulatorServer) -> None:
    async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
        await start_batch(client, [chat_line("a")])
        assert (await client.batches.list()).data

        await http.post("/sim/reset")

        assert (await client.batches.list()).data == []
        assert (await client.files.list()).data == []


def test_batch_knobs_are_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--batch-turnaround-s",
            "0.5",
            "--batch-cancelling-s",
            "1",
            "--batch-max-lines",
            "10",
            "--batch-error-rate",
            "0.25",
            "--batch-expire-after-s",
            "60",
        ]
    )
    config = config_from_args(args)
    assert (config.batch_turnaround_s, config.batch_cancelling_s, config.batch_max_lines) == (0.5, 1.0, 10)
    assert (config.faults.batch_error_rate, config.faults.batch_expire_after_s) == (0.25, 60.0)
