"""A job's result in every store: whatever its upstream answered — any bytes, any content type — comes
back exactly, with who served it and its request id (the ``JobStore`` contract, on every store)."""

from __future__ import annotations

from tests.support.clocks import T0
from tests.support.jobs import job
from tokenyard.queue.model import JobResult
from tokenyard.queue.store import JobStore

SERVED_BY = [("x-tokenyard-backend", "ded"), ("x-tokenyard-backend-kind", "dedicated")]


async def test_any_answer_round_trips_with_its_content_type(queue: JobStore) -> None:
    answers = {
        "html": (413, b"<html><h1>413 Request Entity Too Large</h1></html>", "text/html"),
        "latin-1": (502, "Passerelle ferm\u00e9e".encode("latin-1"), "text/plain; charset=iso-8859-1"),
        "binary": (500, bytes(range(256)), "application/octet-stream"),
        "empty": (502, b"", "text/plain"),
    }
    stored = {}
    for name, (status, body, content_type) in answers.items():
        original = job(id=f"job_{name}")
        await queue.enqueue(original)
        result = JobResult(
            original.id, status, body, "realtime", float(T0 + 60), content_type, SERVED_BY, "req_1"
        )
        assert await queue.complete(result)
        stored[original.id] = result
        assert await queue.result(original.id) == result
    assert await queue.results_of(list(stored)) == stored
