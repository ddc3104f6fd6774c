"""``/v1/responses/{id}`` after the fact: retrieve, delete, cancel and list the input items of a response.

Two kinds of response ids reach here:

- a **background response** tokenyard ran on its async track: its id is its job's, and the job store
  answers (tenant-scoped like every async job; see ``background.py``);
- a response a backend **stored** (the Responses API keeps them unless ``store: false``): the request is
  relayed to the backend that created it. Which one that was is remembered as its answer passes through,
  in this process and, with a job store, beside the jobs for every replica (written off the request path).

An id neither knows is answered 404, as OpenAI answers an unknown one; so is another tenant's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final

import orjson

from tokenyard.errors import ObjectNotFound, StoreError
from tokenyard.proxy import background
from tokenyard.proxy.backends import Backend
from tokenyard.queue.model import Job, StoredObject
from tokenyard.queue.store import JobsAndObjects
from tokenyard.wire import asgi as wire

log = logging.getLogger("tokenyard.proxy")

KIND: Final = "response_owner"  # the stored object that says which backend created a response
_REMEMBERED: Final = 100_000  # ids this process keeps in memory (the store keeps the rest)
_FIRST_ID: Final = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')


def response_id(answer: bytes) -> str | None:
    """The id of a response in its whole body or its stream's first event (``response.created``): the first
    ``"id"`` either carries is the response's own."""
    found = _FIRST_ID.search(answer)
    return found[1].decode("utf-8", "replace") if found else None


class ResponseOwners:
    """Which backend created which stored response, and for which tenant."""

    def __init__(self, objects: JobsAndObjects | None, wall: Callable[[], float]) -> None:
        self._objects = objects
        self._wall = wall
        self._known: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id → (tenant, backend)
        self._writing: set[asyncio.Task[None]] = set()

    def remember(self, response_id: str, tenant: str, backend: str) -> None:
        """Note that ``backend`` created ``response_id`` for ``tenant`` (the store is written in the
        background: the request path never waits for it)."""
        self._known[response_id] = (tenant, backend)
        if len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)
        if self._objects is not None:
            task = asyncio.create_task(self._store(response_id, tenant, backend), name="response owner")
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _store(self, response_id: str, tenant: str, backend: str) -> None:
        assert self._objects is not None
        try:
            await self._objects.put_object(
                StoredObject(KIND, response_id, tenant, self._wall(), backend.encode())
            )
        except StoreError as exc:  # this replica still knows it; others will answer 404 for it
            log.warning("responses: could not note who stored %s: %s", response_id, exc)

    async def owner(self, response_id: str, tenant: str) -> str | None:
        """The backend that created ``response_id`` for ``tenant``, if it is known."""
        known = self._known.get(response_id)
        if known is None and self._objects is not None:
            stored = await self._objects.get_object(KIND, response_id)
            if stored is not None:
                known = (stored.tenant, stored.body.decode())
        if known is None or known[0] != tenant:
            return None
        return known[1]

    async def forget(self, response_id: str) -> None:
        """A deleted response: nobody asks its backend for it again."""
        self._known.pop(response_id, None)
        if self._objects is not None:
            await self._objects.delete_object(KIND, response_id)


class StoredResponses:
    """Serves ``GET``/``DELETE /v1/responses/{id}``, ``POST …/cancel`` and ``GET …/input_items``."""

    def __init__(
        self,
        owners: ResponseOwners,
        backends: Mapping[str, Backend],
        jobs: JobsAndObjects | None,
        wall: Callable[[], float],
        let_go: Callable[[str, str], None] | None = None,
    ) -> None:
        self.owners = owners
        self.backends = backends
        self.jobs = jobs  # None: no async track, so no background responses
        self.wall = wall
        self.let_go = let_go  # let go of a job's budget reservation (key, reservation); None: no budgets

    async def retrieve(self, send: wire.Send, tenant: str, response_id: str, query: bytes) -> None:
        """The response: a background one as its job stands, a stored one from its backend."""
        job = await self._job(response_id, tenant)
        if job is not None:
            await wire.send_json(send, 200, await self._as_response(job))
            return
        await self._relay(send, "GET", tenant, response_id, "", query)

    async def delete(self, send: wire.Send, tenant: str, response_id: str, query: bytes = b"") -> None:
        """Delete a stored response at its backend (a background one is not deletable: it is a job)."""
        if await self._job(response_id, tenant) is not None:
            raise ObjectNotFound(
                f"Response '{response_id}' ran in the background on tokenyard's async track: it is kept "
                "with its job for the store's retention and cannot be deleted.",
                param="response_id",
            )
        status = await self._relay(send, "DELETE", tenant, response_id, "", b"")
        if status == 200:
            await self.owners.forget(response_id)

    async def cancel(self, send: wire.Send, tenant: str, response_id: str, query: bytes = b"") -> None:
        """Cancel a background response that has not run yet; one that has is answered as it stands."""
        job = await self._job(response_id, tenant)
        if job is None:
            await self._relay(send, "POST", tenant, response_id, "/cancel", b"")
            return
        assert self.jobs is not None
        # The first result wins: if it is this one, nothing answered the job, so nothing would settle its
        # reservation (made under the request's id) before its time; if it is running, its answer is still
        # charged when it comes.
        first = await self.jobs.complete(background.cancelled_result(job, self.wall()))
        if first and self.let_go is not None and job.request_id:
            self.let_go(job.key_id, job.request_id)
        await wire.send_json(send, 200, await self._as_response(job))

    async def input_items(self, send: wire.Send, tenant: str, response_id: str, query: bytes) -> None:
        """The input items of a stored response (a background one's, from its job's body)."""
        job = await self._job(response_id, tenant)
        if job is None:
            await self._relay(send, "GET", tenant, response_id, "/input_items", query)
            return
        await wire.send_json(send, 200, _input_items(job))

    async def _job(self, response_id: str, tenant: str) -> Job | None:
        if self.jobs is None or not response_id.startswith("resp_"):
            return None
        job = await self.jobs.get(response_id)
        return job if job is not None and job.tenant == tenant else None

    async def _as_response(self, job: Job) -> dict[str, object]:
        assert self.jobs is not None
        result = await self.jobs.result(job.id)
        if result is None:
            return background.response_of(job, "queued")
        return background.answered(job, result)

    async def _relay(
        self, send: wire.Send, method: str, tenant: str, response_id: str, suffix: str, query: bytes
    ) -> int:
        """Ask the backend that created the response; its answer as it came. The status answered."""
        name = await self.owners.owner(response_id, tenant)
        backend = self.backends.get(name) if name is not None else None
        if backend is None:
            raise ObjectNotFound(f"Response with id '{response_id}' not found.", param="response_id")
        path = f"/responses/{response_id}{suffix}" + (f"?{query.decode('latin-1')}" if query else "")
        resp, payload = await backend.ask(method, path, b"", f"for response '{response_id}'")
        content_type = resp.content_type.encode("latin-1")
        headers = [(b"content-type", content_type), (wire.H_BACKEND, backend.name.encode())]
        await wire.send_bytes(send, resp.status, payload, headers)
        return resp.status


def _input_items(job: Job) -> dict[str, object]:
    """A background job's input as the ``input_items`` list page (message items, oldest first)."""
    try:
        request = orjson.loads(job.body)
    except orjson.JSONDecodeError:
        request = {}
    given = request.get("input")
    if isinstance(given, str):
        items: list[object] = [{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                               "text": given}]}]  # fmt: skip
    else:
        items = list(given) if isinstance(given, list) else []
    data = [
        {"id": f"{job.id}_in_{i}", **item} if isinstance(item, dict) and "id" not in item else item
        for i, item in enumerate(items)
    ]
    first = data[0].get("id") if data and isinstance(data[0], dict) else None
    last = data[-1].get("id") if data and isinstance(data[-1], dict) else None
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": False}
