"""The Batch API adapter's file formats: input files within the provider's limits, results by custom_id."""

from __future__ import annotations

import orjson
import pytest

from tests.support.clocks import FakeClock
from tests.support.simulators import set_faults
from tokenyard.adapters.base import BatchLine, BatchState, LineResult
from tokenyard.adapters.openai_batch import (
    OpenAIBatchUpstream,
    batch_state,
    encode_line,
    input_files,
    results,
)
from tokenyard.errors import UpstreamStatusError
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

BODY = b'{"model":"m","messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9 \\"quoted\\""}]}'


def line(n: int, body: bytes = BODY) -> BatchLine:
    return BatchLine(f"job_{n}", "/v1/chat/completions", body)


def test_a_line_embeds_the_client_body_byte_for_byte() -> None:
    encoded = encode_line(line(1))
    assert encoded.endswith(b"\n")
    parsed = orjson.loads(encoded)
    assert parsed == {
        "custom_id": "job_1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": orjson.loads(BODY),
    }
    assert BODY in encoded


def test_a_pretty_printed_body_stays_on_its_one_line() -> None:
    pretty = b'{\r\n  "model": "m",\n  "messages": [{"role": "user", "content": "two\\nlines"}]\n}'
    encoded = encode_line(line(1, pretty))
    assert encoded.count(b"\n") == 1
    assert encoded.endswith(b"\n")
    assert orjson.loads(encoded)["body"] == orjson.loads(pretty)  # the escaped \n in the string is kept


def test_input_files_split_at_the_request_limit_and_the_byte_limit_in_order() -> None:
    lines = [line(n) for n in range(7)]
    by_count = list(input_files(lines, max_requests=3))
    assert [ids for _, ids in by_count] == [
        ["job_0", "job_1", "job_2"],
        ["job_3", "job_4", "job_5"],
        ["job_6"],
    ]
    assert b"".join(content for content, _ in by_count) == b"".join(encode_line(x) for x in lines)
    size = len(encode_line(lines[0]))
    by_bytes = list(input_files(lines, max_bytes=2 * size + 1))
    assert [len(ids) for _, ids in by_bytes] == [2, 2, 2, 1]
    assert all(len(content) <= 2 * size + 1 for content, _ in by_bytes)


def test_a_request_larger_than_a_file_may_be_is_refused() -> None:
    with pytest.raises(ValueError, match="job_0 alone is larger"):
        list(input_files([line(0)], max_bytes=10))


def test_results_map_output_and_error_lines_back_by_custom_id() -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    output = orjson.dumps(
        {"id": "batch_req_1", "custom_id": "job_1", "response": {"status_code": 200, "request_id": "r1",
         "body": answer}, "error": None}
    ) + b"\n"  # fmt: skip
    failed_status = {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    errors = b"\n".join(
        [
            orjson.dumps({"id": "batch_req_2", "custom_id": "job_2",
                          "response": {"status_code": 400, "request_id": "r2", "body": failed_status},
                          "error": None}),
            orjson.dumps({"id": "batch_req_3", "custom_id": "job_3", "response": None,
                          "error": {"code": "batch_expired", "message": "not executed in time"}}),
            b"",
        ]
    )  # fmt: skip
    got = results(output, errors)
    assert got["job_1"] == LineResult(200, orjson.dumps(answer))
    assert got["job_2"] == LineResult(400, orjson.dumps(failed_status))
    assert got["job_3"].status == 500
    assert orjson.loads(got["job_3"].body)["error"]["code"] == "batch_expired"
    assert set(got) == {"job_1", "job_2", "job_3"}


def test_batch_state_reads_openai_batch_objects() -> None:
    state = batch_state(
        {"id": "batch_1", "object": "batch", "status": "completed", "output_file_id": "file-o",
         "error_file_id": None, "request_counts": {"total": 3, "completed": 2, "failed": 1}}
    )  # fmt: skip
    assert state == BatchState("batch_1", "completed", "file-o", None, 3, 2, 1)
    assert state.terminal
    assert not batch_state({"id": "b", "status": "finalizing"}).terminal


async def test_a_round_trip_through_the_simulators_batch_api_with_partial_failure() -> None:
    clock = FakeClock()
    config = SimulatorConfig(ttft_ms=0, ttft_jitter=0, batch_turnaround_s=10, seed=3)
    async with SimulatorServer(config, clock=clock) as sim:
        api = OpenAIBatchUpstream(sim.base_url, api_key="sk-sim")
        try:
            await set_faults(sim, batch_error_rate=0.5, error_status=500)
            lines = [BatchLine(f"job_{n}", "/v1/chat/completions", BODY) for n in range(20)]
            [(content, ids)] = list(input_files(lines))
            file_id = await api.upload(content)
            state = await api.create(file_id, "/v1/chat/completions", metadata={"source": "test"})
            assert state.status == "validating"
            assert not state.terminal
            clock.elapsed_s += 11
            done = await api.retrieve(state.id)
            assert done.status == "completed"
            assert done.total == 20
            assert 0 < done.failed < 20
            assert done.completed + done.failed == 20
            output = await api.content(done.output_file_id) if done.output_file_id else b""
            errors = await api.content(done.error_file_id) if done.error_file_id else b""
            got = results(output, errors)
            assert set(got) == set(ids)
            assert sum(r.status == 200 for r in got.values()) == done.completed
            assert all(r.status == 500 for r in got.values() if r.status != 200)
            ok = next(r for r in got.values() if r.status == 200)
            assert orjson.loads(ok.body)["object"] == "chat.completion"
        finally:
            await api.aclose()


async def test_cancel_and_unknown_ids_through_the_adapter() -> None:
    clock = FakeClock()
    async with SimulatorServer(SimulatorConfig(batch_turnaround_s=100), clock=clock) as sim:
        api = OpenAIBatchUpstream(sim.base_url, api_key="sk-sim")
        try:
            file_id = await api.upload(encode_line(BatchLine("a", "/v1/chat/completions", BODY)))
            state = await api.create(file_id, "/v1/chat/completions")
            cancelling = await api.cancel(state.id)
            assert cancelling.status in ("cancelling", "cancelled")
            clock.elapsed_s += 1
            assert (await api.retrieve(state.id)).status == "cancelled"
            with pytest.raises(UpstreamStatusError) as missing:
                await api.retrieve("batch_nope")
            assert missing.value.status == 404
        finally:
            await api.aclose()
