"""The ``/sim/`` control endpoints, and the app used in-process with a fake clock."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.clocks import FakeClock
from tests.support.simulators import USER_HELLO, fast_config
from tokenyard.simulator.app import build_app
from tokenyard.simulator.server import SimulatorServer


async def test_recent_requests_echo_what_was_forwarded(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(
        model="m",
        messages=USER_HELLO,
        extra_body={"x_vendor_field": {"keep": [1, 2]}},
        extra_headers={"X-Trace-Id": "abc"},
    )

    [record] = (await http.get("/sim/requests")).json()
    assert (record["method"], record["path"]) == ("POST", "/v1/chat/completions")
    assert record["headers"]["authorization"] == "Bearer x"
    assert record["headers"]["x-trace-id"] == "abc"
    assert record["body"]["x_vendor_field"] == {"keep": [1, 2]}
    assert record["body"]["model"] == "m"


async def test_recent_requests_are_limited_newest_last_and_skip_control_calls(
    http: httpx.AsyncClient,
) -> None:
    await http.post("/v1/embeddings", content=b"not json")
    for word in ("one", "two", "three"):
        await http.post("/v1/embeddings", json={"model": "e", "input": word})
    await http.get("/sim/stats")

    records = (await http.get("/sim/requests", params={"limit": 2})).json()
    assert [r["body"]["input"] for r in records] == ["two", "three"]
    everything = (await http.get("/sim/requests")).json()
    assert len(everything) == 4
    assert everything[0]["body"] is None
    assert (await http.get("/sim/requests", params={"limit": "x"})).status_code == 400


async def test_stats_count_requests_by_path(http: httpx.AsyncClient) -> None:
    await http.get("/v1/models")
    await http.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    await http.post("/v1/completions", json={"model": "m", "prompt": "hi", "stream": True})

    stats = (await http.get("/sim/stats")).json()
    assert (stats["name"], stats["mode"]) == ("shared", "serverless")
    assert stats["requests_total"] == 3
    assert stats["by_path"] == {"/v1/models": 1, "/v1/completions": 2}
    assert (stats["requests_completed"], stats["streams_completed"], stats["in_flight"]) == (1, 1, 0)


async def test_reset_zeroes_stats_clears_the_log_and_restores_faults(
    http: httpx.AsyncClient, sim: SimulatorServer
) -> None:
    await http.post("/sim/faults", json={"fail_next": 5})
    await http.post("/v1/embeddings", json={"model": "e", "input": "x"})

    stats = (await http.post("/sim/reset")).json()

    assert stats["requests_total"] == stats["errors_injected"] == 0
    assert (await http.get("/sim/requests")).json() == []
    assert (await http.get("/sim/faults")).json() == sim.config.faults.model_dump()


async def test_in_process_app_with_a_fake_clock_never_sleeps_for_real() -> None:
    clock = FakeClock()
    app = build_app(fast_config(ttft_ms=2000, tokens_per_s=10), clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": USER_HELLO})

    assert response.json()["usage"]["completion_tokens"] == 4
    assert response.json()["created"] == 1_700_000_000  # stamped when generation starts
    assert sum(clock.slept_s) == pytest.approx(2.0 + 3 * 0.1)  # ttft, then 3 more tokens at 10/s
    assert app.state.stats()["requests_completed"] == 1
