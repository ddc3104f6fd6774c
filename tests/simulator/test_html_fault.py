"""The ``error_html`` fault: injected errors come as a gateway's HTML page, not OpenAI's JSON."""

from __future__ import annotations

import httpx

from tests.support.simulators import set_faults
from tokenyard.simulator.server import SimulatorServer


async def test_injected_errors_can_be_a_gateways_html_page(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    await set_faults(sim, fail_next=1, error_status=413, error_html=True)
    page = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert page.status_code == 413
    assert page.headers["content-type"] == "text/html"
    assert "<title>413 Request Entity Too Large</title>" in page.text
    after = await http.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert after.status_code == 200  # only the next one
