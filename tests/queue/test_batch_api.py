"""The OpenAI Batch API served by tokenyard, driven by the SDK: files, batches, tenants kept apart."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.async_track import (
    config_for,
    jsonl,
    no_idle_dedicated,
    run_batch,
    sims,
    sqlite_proxy,
    until_final,
    usage,
)
from tests.support.config import OTHER_KEY
from tests.support.polling import eventually
from tests.support.proxy import running_proxy
from tests.support.simulators import FAST_UPSTREAM
from tests.support.stores import sqlite_url
from tokenyard.simulator.config import SimulatorConfig


async def test_a_batch_round_trip_with_the_sdk(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy:
        async with proxy.client() as client:
            upload = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(6))), purpose="batch")
            assert upload.object == "file"
            assert upload.purpose == "batch"
            assert upload.bytes == len(jsonl(6))
            assert (await client.files.content(upload.id)).content == jsonl(6)
            created = await client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"job": "nightly"},
            )  # fmt: skip
            assert created.status == "in_progress"
            assert created.request_counts is not None
            assert created.request_counts.total == 6
            assert created.metadata == {"job": "nightly"}
            done = await until_final(client, created.id)
            assert done.status == "completed"
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
            assert done.error_file_id is None
            assert done.output_file_id is not None
            assert done.completed_at is not None
            output = (await client.files.content(done.output_file_id)).text.splitlines()
            by_id = {line["custom_id"]: line for line in map(json.loads, output)}
            assert set(by_id) == {f"r{i}" for i in range(6)}
            for line in by_id.values():
                assert line["id"].startswith("batch_req_")
                assert line["error"] is None
                assert line["response"]["status_code"] == 200
                openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
            output_file = await client.files.retrieve(done.output_file_id)
            assert output_file.purpose == "batch_output"
            assert output_file.filename == f"{done.id}_output.jsonl"

        async def each_line_billed_once_as_async() -> None:
            rows = (await usage(proxy, group_by="mode"))["data"]
            assert [(r["mode"], r["requests"]) for r in rows] == [("async", 6)]

        await eventually(each_line_billed_once_as_async)


async def test_lists_page_newest_first_and_files_can_be_deleted(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy, proxy.client() as client:
        made = [await run_batch(client, jsonl(1, prefix=f"b{n}-")) for n in range(5)]
        first = await client.batches.list(limit=2)
        assert [b.id for b in first.data] == [made[4].id, made[3].id]
        assert first.has_more
        everything = [b.id async for b in client.batches.list(limit=2)]  # the SDK follows `after`
        assert everything == [b.id for b in reversed(made)]
        files = await client.files.list(purpose="batch")
        assert len(files.data) == 5
        gone = await client.files.delete(files.data[0].id)
        assert gone.deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(files.data[0].id)


async def test_cancel_keeps_what_was_answered_and_closes_the_rest(tmp_path: Path) -> None:
    async with sims() as s:
        # The replica never has a slot for async work (1 × 0.5 rounds down), so the lines wait for it.
        config = config_for(s, store=sqlite_url(tmp_path / "m.sqlite3"), idle_fill_cap=0.5)
        config["backends"]["ded"]["max_concurrency"] = 1
        async with running_proxy(config, tmp_path) as proxy, proxy.client() as client:
            created = await run_batch(client, jsonl(4))
            cancelling = await client.batches.cancel(created.id)
            assert cancelling.status == "cancelling"
            done = await client.batches.retrieve(created.id)
            assert done.status == "cancelled"
            assert done.cancelled_at is not None
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 4)
            assert done.error_file_id is not None
            lines = [
                json.loads(x) for x in (await client.files.content(done.error_file_id)).text.splitlines()
            ]
            assert {x["error"]["code"] for x in lines} == {"batch_cancelled"}
            assert all(x["response"] is None for x in lines)
            with pytest.raises(openai.BadRequestError):
                await client.batches.cancel(created.id)


async def test_invalid_input_fails_the_batch_with_errors_by_line(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy:
        bad = (
            jsonl(1)
            + b"{not json\n"
            + jsonl(1)  # the same custom_id again
            + jsonl(1, prefix="x", model="no-such-model")
            + json.dumps(
                {"custom_id": "y", "method": "GET", "url": "/v1/chat/completions", "body": {}}
            ).encode()
        )
        async with proxy.client() as client:
            failed = await run_batch(client, bad)
            assert failed.status == "failed"
            assert failed.errors is not None
            codes = [(e.line, e.code) for e in failed.errors.data or []]
            assert codes == [
                (2, "invalid_json_line"),
                (3, "duplicate_custom_id"),
                (4, "model_not_found"),
                (5, "invalid_method"),
            ]
            upload = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(1))), purpose="batch")
            with pytest.raises(openai.BadRequestError) as wrong_endpoint:
                await client.batches.create(
                    input_file_id=upload.id,
                    endpoint="/v1/responses",
                    completion_window="24h",  # type: ignore[arg-type]
                )
            assert wrong_endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
            with pytest.raises(openai.NotFoundError):
                await client.batches.create(
                    input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
                )
            with pytest.raises(openai.BadRequestError):
                await client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
            with pytest.raises(openai.BadRequestError) as not_utf8:
                await client.files.create(file=("x.jsonl", io.BytesIO(b'{"a": "\xff"}\n')), purpose="batch")
            assert "byte 7 is not UTF-8" in not_utf8.value.message  # 0-based, as the offset in the file


async def test_tenants_can_neither_see_nor_use_each_others_files_and_batches(tmp_path: Path) -> None:
    async with sims() as s:
        config = config_for(s, store=sqlite_url(tmp_path / "m.sqlite3"))
        config["keys"]["team-b"] = {"key": OTHER_KEY}
        async with (
            running_proxy(config, tmp_path) as proxy,
            proxy.client() as a,
            proxy.client(key=OTHER_KEY) as b,
        ):
            mine = await run_batch(a, jsonl(2))
            for attempt in (
                b.files.retrieve(mine.input_file_id),
                b.files.content(mine.input_file_id),
                b.files.delete(mine.input_file_id),
                b.batches.retrieve(mine.id),
                b.batches.cancel(mine.id),
                b.batches.create(
                    input_file_id=mine.input_file_id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                ),
            ):
                with pytest.raises(openai.NotFoundError):
                    await attempt
            assert (await b.batches.list()).data == []
            assert (await b.files.list()).data == []
            assert (await until_final(a, mine.id)).status == "completed"


async def test_tenants_lines_share_a_provider_batch_but_never_their_results(tmp_path: Path) -> None:
    async with sims(batch=SimulatorConfig(batch_turnaround_s=0.5, **FAST_UPSTREAM)) as s:
        config = no_idle_dedicated(tmp_path, s, sqlite_url(tmp_path / "m.sqlite3"))
        config["keys"]["team-b"] = {"key": OTHER_KEY}
        config["async_track"]["batches"]["max_wait_s"] = 1.0  # both tenants' lines make one gather
        async with running_proxy(config, tmp_path) as proxy:
            async with proxy.client() as a, proxy.client(key=OTHER_KEY) as b:
                batch_a = await run_batch(a, jsonl(3, prefix="a"))
                batch_b = await run_batch(b, jsonl(2, prefix="b"))
                done_a, done_b = await until_final(a, batch_a.id), await until_final(b, batch_b.id)
                ids_a = {
                    json.loads(x)["custom_id"]
                    for x in (await a.files.content(done_a.output_file_id)).text.splitlines()
                }
                ids_b = {
                    json.loads(x)["custom_id"]
                    for x in (await b.files.content(done_b.output_file_id)).text.splitlines()
                }
                assert ids_a == {"a0", "a1", "a2"}
                assert ids_b == {"b0", "b1"}
            async with httpx.AsyncClient() as http:
                provider = (await http.get(f"{s['batch'].base_url}/batches")).json()["data"]
            assert [p["request_counts"]["total"] for p in provider] == [5], (
                "one provider batch for both tenants"
            )
