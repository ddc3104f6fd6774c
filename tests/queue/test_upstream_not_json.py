"""An upstream that answers something other than JSON (an HTML 413 from a load balancer in front of it).

Its answer is a job's answer like any other: kept with its own content type, relayed as it was said on the
poll endpoint and to a held connection, POSTed to a callback, and in a Batch API batch an error line —
while listing, retrieving and cancelling batches keep working. Results stored before the content type
was kept are still served.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.async_track import (
    HELLO,
    MODEL,
    config_for,
    jsonl,
    poll,
    post,
    run_batch,
    sims,
    sqlite_proxy,
    until_final,
)
from tests.support.config import CLIENT_KEY
from tests.support.polling import eventually
from tests.support.proxy import running_proxy, start_proxy
from tests.support.redis_servers import REDIS_URL
from tests.support.simulators import set_faults
from tests.support.stores import sqlite_url
from tokenyard.queue.sqlite_queue import SqliteJobStore
from tokenyard.simulator.server import SimulatorServer

HTML_413 = {"error_rate": 1.0, "error_status": 413, "error_html": True}


async def html_everywhere(s: dict[str, SimulatorServer]) -> None:
    """Every inference request to either simulator is answered by a gateway's HTML 413 page."""
    for name in ("ded", "api"):
        await set_faults(s[name], **HTML_413)


async def test_a_polled_job_answered_in_html_is_relayed_as_html_and_called_back(
    tmp_path: Path, receiver: tuple[int, list[tuple[dict[str, str], bytes]]]
) -> None:
    port, got = receiver
    async with sims() as s:
        await html_everywhere(s)
        config = config_for(
            s, store=sqlite_url(tmp_path / "m.sqlite3"), callbacks={"allow_hosts": ["127.0.0.1"]}
        )
        async with running_proxy(config, tmp_path) as proxy:
            accepted = await post(
                proxy,
                {"model": MODEL, "messages": HELLO},
                Prefer="respond-async",
                **{"x-tokenyard-callback": f"http://127.0.0.1:{port}/hook"},
            )
            assert accepted.status_code == 202
            done = await poll(proxy, accepted.headers["location"])
            assert done.status_code == 413
            assert done.headers["content-type"] == "text/html"
            assert done.text.startswith("<html>")
            assert "413 Request Entity Too Large" in done.text
            again = await poll(proxy, accepted.headers["location"])  # served from the store as it was
            assert (again.status_code, again.content) == (413, done.content)

            async def called_back() -> None:
                assert len(got) == 1

            await eventually(called_back)
            payload = json.loads(got[0][1])
            assert payload["id"] == accepted.json()["id"]
            assert payload["status_code"] == 413
            assert payload["content_type"] == "text/html"
            assert payload["body"] == done.text  # what the upstream said, as text
            assert "Task exception was never retrieved" not in proxy.log()


async def test_a_held_request_answered_in_html_gets_it_with_its_content_type(tmp_path: Path) -> None:
    async with sims() as s:
        await html_everywhere(s)
        async with running_proxy(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3")), tmp_path) as proxy:
            held = await post(proxy, {"model": MODEL, "messages": HELLO, "service_tier": "flex"})
            assert held.status_code == 413
            assert held.headers["content-type"] == "text/html"
            assert held.headers["x-tokenyard-mode"] == "async"
            assert "413 Request Entity Too Large" in held.text


async def test_batch_lines_answered_in_html_are_error_lines_and_the_batch_api_keeps_working(
    tmp_path: Path,
) -> None:
    async with sims() as s:
        await html_everywhere(s)
        async with (
            running_proxy(config_for(s, store=sqlite_url(tmp_path / "m.sqlite3")), tmp_path) as proxy,
            proxy.client() as client,
        ):
            created = await run_batch(client, jsonl(2))
            done = await until_final(client, created.id)
            assert done.status == "completed"
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)
            assert done.output_file_id is None
            assert done.error_file_id is not None
            lines = [
                json.loads(x) for x in (await client.files.content(done.error_file_id)).text.splitlines()
            ]
            assert sorted(line["custom_id"] for line in lines) == ["r0", "r1"]
            for line in lines:
                assert line["id"].startswith("batch_req_")
                assert set(line) == {"id", "custom_id", "response", "error"}
                assert line["response"]["status_code"] == 413
                assert line["error"]["code"] == "upstream_response_not_json"
                assert "text/html" in line["error"]["message"]
                assert "413 Request Entity Too Large" in line["error"]["message"]
                # The body is a JSON object, as the line format has it: an OpenAI error saying the same.
                error = line["response"]["body"]["error"]
                assert (error["code"], error["message"]) == (
                    line["error"]["code"],
                    line["error"]["message"],
                )
                assert error["type"] == "invalid_request_error"
            # Every other Batch API call still answers.
            listed = await client.batches.list()
            assert [b.id for b in listed.data] == [created.id]
            assert (await client.batches.retrieve(created.id)).status == "completed"
            with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status"):
                await client.batches.cancel(created.id)


# -- results stored before the content type was kept ----------------------------------------------------

LEGACY_JOB = {
    "tenant": "team-a", "model": MODEL, "endpoint": "/v1/chat/completions",
    "body": json.dumps({"model": MODEL, "messages": HELLO}), "created_at": 1.0, "deadline": 2.0,
    "reason": "Prefer: respond-async", "delivery": "poll", "callback": None,
}  # fmt: skip
LEGACY_ANSWERS = {
    "job_legacy_json": (200, json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": []})),
    "job_legacy_html": (413, "<html><body><h1>413 Request Entity Too Large</h1></body></html>"),
}


def legacy_rows(job_id: str) -> tuple[str, str]:
    """A job and its result exactly as the stores kept them before results had a content type."""
    status, body = LEGACY_ANSWERS[job_id]
    job = json.dumps({"id": job_id, **LEGACY_JOB})
    result = json.dumps(
        {"job_id": job_id, "status": status, "body": body, "path": "idle_dedicated", "finished_at": 1.5}
    )
    return job, result


async def check_legacy_results_are_served(proxy: Any) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        as_json = await http.get(f"{proxy.url}/v1/async/jobs/job_legacy_json", headers=auth)
        assert as_json.status_code == 200
        assert as_json.headers["content-type"] == "application/json"
        assert as_json.json()["id"] == "chatcmpl-1"
        assert as_json.headers["x-tokenyard-path"] == "idle_dedicated"
        as_html = await http.get(f"{proxy.url}/v1/async/jobs/job_legacy_html", headers=auth)
        assert as_html.status_code == 413
        assert as_html.headers["content-type"] != "application/json"  # it is not: no false label
        assert as_html.text == LEGACY_ANSWERS["job_legacy_html"][1]


async def test_results_stored_by_the_previous_version_are_still_served_sqlite(tmp_path: Path) -> None:
    async with sqlite_proxy(tmp_path) as proxy:
        store = SqliteJobStore(tmp_path / "m.sqlite3")  # its tables exist once a store has been used
        await store.stats()
        await store.aclose()
        with sqlite3.connect(tmp_path / "m.sqlite3") as db:
            for job_id in LEGACY_ANSWERS:
                job, result = legacy_rows(job_id)
                db.execute(
                    "INSERT INTO jobs (id, json, created_at, state) VALUES (?, ?, 1.0, 'done')", (job_id, job)
                )
                db.execute("INSERT INTO results (id, json, finished_at) VALUES (?, ?, 1.5)", (job_id, result))
        await check_legacy_results_are_served(proxy)


async def test_results_stored_by_the_previous_version_are_still_served_redis(
    tmp_path: Path, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis

    prefix = redis_prefix
    async with sims() as s:
        proxy = await start_proxy(config_for(s, store=REDIS_URL, prefix=prefix), tmp_path)
        redis = aioredis.from_url(REDIS_URL)
        try:
            for job_id in LEGACY_ANSWERS:
                job, result = legacy_rows(job_id)
                await redis.set(f"{{{prefix}}}:q:job:{job_id}", job, ex=600)
                await redis.set(f"{{{prefix}}}:q:result:{job_id}", result, ex=600)
            await check_legacy_results_are_served(proxy)
        finally:
            proxy.stop()
            await redis.aclose()
