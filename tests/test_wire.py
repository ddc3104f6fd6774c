"""The wire module's contracts: the disconnect watcher's one return convention, the one error map, the ids.

The router and the simulator both rely on these; tests here drive them with ASGI ``receive`` callables made
of events, never with sleeps.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import Any

import orjson
import pytest

from tokenyard.errors import CapacityExhausted, ObjectNotFound
from tokenyard.wire import asgi, ids, openai


class Client:
    """An ASGI ``receive`` whose client leaves when the test says so; under tokenyard's own server
    (``told``) the protocol also tells the request's ``Leaving``, and the watch uses that instead."""

    def __init__(self, told: bool) -> None:
        self.gone = asyncio.Event()
        self.leaving = asgi.Leaving() if told else None

    async def receive(self) -> asgi.Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set()
        if self.leaving is not None:
            self.leaving.left()

    async def watch(self, work: Coroutine[Any, Any, None]) -> bool:
        return await asgi.until_client_leaves(self.receive, work, self.leaving)


@pytest.fixture(params=[False, True], ids=["receive", "told"])
def client(request: pytest.FixtureRequest) -> Client:
    return Client(request.param)


async def test_the_watcher_says_false_when_the_work_finished(client: Client) -> None:
    done = []

    async def work() -> None:
        await asyncio.sleep(0)
        done.append(True)

    assert await client.watch(work()) is False
    assert done == [True]


async def test_the_watcher_says_true_and_cancels_the_work_when_the_client_left(client: Client) -> None:
    started, released = asyncio.Event(), []

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never done by itself
        finally:
            released.append(True)  # what the work holds is let go

    async def leave_when_started() -> None:
        await started.wait()
        client.leave()

    leaving = asyncio.create_task(leave_when_started())
    assert await client.watch(work()) is True
    assert released == [True]
    await leaving
    # The hang-up's cancellation was taken back: the task goes on (its finally blocks may await).
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_a_client_gone_before_the_work_began_stops_it_at_its_first_await() -> None:
    client = Client(told=True)
    client.leave()
    reached = []

    async def work() -> None:
        reached.append("before")
        await asyncio.sleep(0)
        reached.append("after")

    assert await client.watch(work()) is True
    assert reached == ["before"]


async def test_errors_from_the_work_reach_the_caller(client: Client) -> None:
    async def work() -> None:
        raise OSError("write to a closed connection")

    with pytest.raises(OSError, match="closed connection"):
        await client.watch(work())


@pytest.mark.parametrize("hang_up_too", [False, True], ids=["shutdown", "shutdown-and-hang-up"])
async def test_a_cancellation_from_outside_stays_a_cancellation(client: Client, hang_up_too: bool) -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    watched = asyncio.create_task(client.watch(work()))
    await started.wait()
    watched.cancel()  # a shutdown …
    if hang_up_too:
        client.leave()  # … that meets the client leaving: still the shutdown's, not taken for a hang-up
    with pytest.raises(asyncio.CancelledError):
        await watched


def test_an_error_maps_to_one_status_headers_and_openai_body() -> None:
    status, headers, body = asgi.error_response_parts(CapacityExhausted("full", retry_after_s=2.4))
    assert status == 429
    assert headers == [(b"content-type", b"application/json"), (b"retry-after", b"2")]
    assert orjson.loads(body) == {
        "error": {"message": "full", "type": "rate_limit_error", "param": None, "code": "capacity_exhausted"}
    }
    assert body == openai.error_body("full", "rate_limit_error", code="capacity_exhausted")
    status, _, body = asgi.error_response_parts(ObjectNotFound("No such File object: f", param="id"))
    assert (status, orjson.loads(body)["error"]["param"]) == (404, "id")


async def test_a_whole_response_says_its_length() -> None:
    sent: list[asgi.Message] = []

    async def send(message: asgi.Message) -> None:
        sent.append(message)

    await asgi.send_json(send, 201, {"a": 1})
    assert sent[0]["status"] == 201
    assert sent[0]["headers"] == [(b"content-type", b"application/json"), (b"content-length", b"7")]
    assert sent[1] == {"type": "http.response.body", "body": b'{"a":1}'}


def test_a_file_page_is_a_cursor_page_of_file_objects() -> None:
    files = [openai.file_object(f"file-{n}", 10, 1_700_000_000, "in.jsonl", "batch", None) for n in (1, 2)]
    page = openai.list_page(files, has_more=True)
    assert (page["object"], page["first_id"], page["last_id"], page["has_more"]) == (
        "list", "file-1", "file-2", True,
    )  # fmt: skip
    assert openai.list_page([], has_more=False)["first_id"] is None
    assert list(files[0]) == [
        "id", "object", "bytes", "created_at", "expires_at", "filename", "purpose",
        "status", "status_details",
    ]  # fmt: skip


def test_ids_have_openai_s_shapes_and_do_not_repeat() -> None:
    request_ids = {ids.new_request_id() for _ in range(1000)}
    assert len(request_ids) == 1000
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", rid) for rid in request_ids)
    assert re.fullmatch(r"batch_req_[0-9a-f]{24}", ids.new_object_id("batch_req_"))
    assert re.fullmatch(r"replica-[0-9a-f]{12}", ids.new_replica_id())
    assert ids.new_replica_id() != ids.new_replica_id()


def _request_id_to(pipe: Any) -> None:
    pipe.send(ids.new_request_id())


def test_a_forked_process_does_not_repeat_its_parent_s_request_ids() -> None:
    # Request ids come from a generator seeded once a process: a fork copies its state, so the child seeds
    # again, or both would hand out the same ids from here on.
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    child = context.Process(target=_request_id_to, args=(theirs,))
    child.start()
    from_child = ours.recv()
    child.join()
    assert re.fullmatch(r"req_[0-9a-f]{24}", from_child)
    assert from_child != ids.new_request_id()
