"""The Batch API adapter's file formats: input files within the provider's limits, results by custom_id."""

from __future__ import annotations

import orjson
import pytest

from tokenyard.adapters.openai_batch import BatchLine, BatchState, LineResult, input_files, results

BODY = b'{"model":"m","messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9 \\"quoted\\""}]}'


def line(n: int, body: bytes = BODY) -> BatchLine:
    return BatchLine(f"job_{n}", "/v1/chat/completions", body)


def test_a_line_embeds_the_client_body_byte_for_byte() -> None:
    encoded = line(1).encode()
    assert encoded.endswith(b"\n")
    parsed = orjson.loads(encoded)
    assert parsed == {
        "custom_id": "job_1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": orjson.loads(BODY),
    }
    assert BODY in encoded


def test_input_files_split_at_the_request_limit_and_the_byte_limit_in_order() -> None:
    lines = [line(n) for n in range(7)]
    by_count = list(input_files(lines, max_requests=3))
    assert [ids for _, ids in by_count] == [
        ["job_0", "job_1", "job_2"],
        ["job_3", "job_4", "job_5"],
        ["job_6"],
    ]
    assert b"".join(content for content, _ in by_count) == b"".join(x.encode() for x in lines)
    size = len(lines[0].encode())
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
    state = BatchState.of(
        {"id": "batch_1", "object": "batch", "status": "completed", "output_file_id": "file-o",
         "error_file_id": None, "request_counts": {"total": 3, "completed": 2, "failed": 1}}
    )  # fmt: skip
    assert state == BatchState("batch_1", "completed", "file-o", None, 3, 2, 1)
    assert state.terminal
    assert not BatchState.of({"id": "b", "status": "finalizing"}).terminal
