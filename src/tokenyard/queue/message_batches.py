"""Anthropic's Message Batches API, served by tokenyard: ``/v1/messages/batches``, as Anthropic shapes it.

``client.messages.batches.create(requests=[{"custom_id", "params"}])`` of the anthropic SDK works unchanged.
Each request becomes an async job of ``/v1/messages`` with the batch's 24 h deadline, so it goes down the
async track like any other (idle dedicated capacity, a provider batch, or real time) and is billed once, as
async, at the price of the path it took. As Anthropic says, request counts move out of ``processing`` only
when the whole batch has ended: when every request has an answer, or the batch expired or was cancelled (the
requests still open are then closed as ``expired`` / ``canceled`` so no dispatcher runs them after). A
budgeted key's batch holds its requests' worst case on the key's budgets from the moment it is accepted
(429 if a hard budget that rejects cannot hold it); each answer draws it down, and the rest is let go when
the batch ends.

Batches belong to the tenant whose key made them: another tenant's are "not found". Errors are Anthropic's
(``{"type": "error", "error": {"type", "message"}}``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs

import orjson

from tokenyard.admission.auth import Principal
from tokenyard.errors import InvalidRequest, ObjectNotFound, TokenyardError
from tokenyard.queue.batch_budgets import BatchBudgets
from tokenyard.queue.model import Job, JobResult, StoredObject
from tokenyard.queue.store import JobsAndObjects
from tokenyard.wire import anthropic
from tokenyard.wire import asgi as wire
from tokenyard.wire.ids import new_object_id

WINDOW_S: Final = 86_400
KIND: Final = "message_batch"
MAX_REQUESTS: Final = 100_000
MAX_BYTES: Final = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CLOSED = {"expired": "expired", "cancelled": "canceled"}  # a job's result path → the request's result type

Handler = Callable[["MessageBatchApi", wire.Scope, wire.Receive, wire.Send, Principal], Awaitable[None]]


def _rfc3339(unix_s: float | None) -> str | None:
    if unix_s is None:
        return None
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MessageBatchApi:
    """Handlers for ``/v1/messages/batches…`` on a job store."""

    def __init__(
        self,
        store: JobsAndObjects,
        *,
        may_use: Callable[[Principal, str], bool],
        wake: Callable[[], None],
        budgets: BatchBudgets | None = None,
        wall: Callable[[], float] = time.time,
        max_requests: int = MAX_REQUESTS,
    ) -> None:
        self.store = store
        self.may_use = may_use  # whether a key may call a model (and the model exists)
        self.budgets = budgets  # where a batch's worst case is held (None: no budgets to count it in)
        self.wake = wake
        self.wall = wall
        self.max_requests = max_requests

    # -- the HTTP handlers (authenticated by the edge: ``who``) -----------------------------------------

    async def create_batch(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``POST /v1/messages/batches``."""
        body = await wire.read_body(scope, receive, MAX_BYTES)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body is not valid JSON.") from None
        await wire.send_json(send, 200, self._public(await self.create(who, request), scope))

    async def list_batches(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/messages/batches``: newest first; ``limit`` 1–1000 (20), ``after_id`` / ``before_id``."""
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise InvalidRequest("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit: Input should be between 1 and 1000")
        page, has_more = await self._page(who.tenant, limit, query.get("after_id"), query.get("before_id"))
        data = [self._public(await self.refresh(who.tenant, batch), scope) for batch in page]
        first = data[0]["id"] if data else None
        last = data[-1]["id"] if data else None
        await wire.send_json(
            send, 200, {"data": data, "has_more": has_more, "first_id": first, "last_id": last}
        )

    async def retrieve_batch(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/messages/batches/{batch_id}``."""
        batch = await self.refresh(who.tenant, await self._batch(who, scope["path_params"]["batch_id"]))
        await wire.send_json(send, 200, self._public(batch, scope))

    async def cancel_batch(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``POST /v1/messages/batches/{batch_id}/cancel``."""
        await wire.send_json(
            send, 200, self._public(await self.cancel(who, scope["path_params"]["batch_id"]), scope)
        )

    async def delete_batch(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``DELETE /v1/messages/batches/{batch_id}``: only once it has ended."""
        batch_id = scope["path_params"]["batch_id"]
        batch = await self.refresh(who.tenant, await self._batch(who, batch_id))
        if batch["ended_at"] is None:
            raise InvalidRequest(f"Message Batch {batch_id} cannot be deleted while it is in progress; "
                                 "cancel it first.")  # fmt: skip
        await self.store.delete_object(KIND, batch_id)
        await wire.send_json(send, 200, {"id": batch_id, "type": "message_batch_deleted"})

    async def batch_results(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/messages/batches/{batch_id}/results``: JSONL, one line per request (once ended)."""
        batch_id = scope["path_params"]["batch_id"]
        batch = await self.refresh(who.tenant, await self._batch(who, batch_id))
        if batch["ended_at"] is None:
            raise InvalidRequest(f"Message Batch {batch_id} has not yet ended; its results are not ready.")
        job_ids = [job_id for _, job_id in batch["requests"]]
        answered = await self.store.results_of(job_ids)
        lines = [
            orjson.dumps(_result_line(custom_id, answered.get(job_id)))
            for custom_id, job_id in batch["requests"]
        ]
        content = b"\n".join(lines) + b"\n" if lines else b""
        await wire.send_bytes(send, 200, content, [(b"content-type", b"application/binary")])

    # -- the work ---------------------------------------------------------------------------------------

    async def create(self, who: Principal, request: Any) -> dict[str, Any]:
        """Validate the requests, hold their worst case on the key's budgets, queue a job per request, keep
        the batch."""
        requests = request.get("requests") if isinstance(request, dict) else None
        if not isinstance(requests, list) or not requests:
            raise InvalidRequest("requests: a Message Batch needs at least one request.", param="requests")
        if len(requests) > self.max_requests:
            raise InvalidRequest(f"requests: a Message Batch takes at most {self.max_requests:,} requests.",
                                 param="requests")  # fmt: skip
        checked = [self._checked(who, index, item) for index, item in enumerate(requests)]
        seen: set[str] = set()
        for index, (custom_id, _, _) in enumerate(checked):
            if custom_id in seen:
                raise InvalidRequest(f"requests.{index}.custom_id: '{custom_id}' is used more than once in "
                                     "this batch; custom_id must be unique.", param="requests")  # fmt: skip
            seen.add(custom_id)
        now = self.wall()
        batch_id = new_object_id("msgbatch_")
        batch: dict[str, Any] = {"id": batch_id, "created": now, "expires": now + WINDOW_S, "ended_at": None,
                                 "cancel_initiated_at": None, "requests": [], "counts": None,
                                 "key": who.key_name, "budget_hold": ""}  # fmt: skip
        if self.budgets is not None:  # refused (429) here if a hard budget cannot hold its worst case
            worst = [(model, body) for _, model, body in checked]
            batch["budget_hold"] = await self.budgets.hold_batch(who, batch_id, worst, batch["expires"])
        try:
            for index, (custom_id, model, body) in enumerate(checked):
                job_id = f"job_{batch_id}_{index}"
                job = Job(job_id, who.tenant, model, anthropic.MESSAGES_PATH, body, now, now + WINDOW_S,
                          reason="message batch", key_id=who.key_name, team=who.team or "",
                          budget_hold=batch["budget_hold"])  # fmt: skip
                await self.store.enqueue(job)
                batch["requests"].append([custom_id, job_id])
            await self._save(who.tenant, batch)
        except Exception:  # not taken: the requests queued already are charged when answered, unreserved
            self._release(batch)
            raise
        self.wake()
        return batch

    def _checked(self, who: Principal, index: int, item: Any) -> tuple[str, str, bytes]:
        """One request as (custom_id, model, params JSON); ``InvalidRequest`` naming what is wrong."""
        where = f"requests.{index}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: Input should be an object", param="requests")
        custom_id, params = item.get("custom_id"), item.get("params")
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise InvalidRequest(f"{where}.custom_id: must be 1 to 64 letters, digits, '_' or '-'",
                                 param="requests")  # fmt: skip
        if not isinstance(params, dict):
            raise InvalidRequest(f"{where}.params: Field required", param="requests")
        model, max_tokens, messages = params.get("model"), params.get("max_tokens"), params.get("messages")
        if not isinstance(model, str) or not model:
            raise InvalidRequest(f"{where}.params.model: Field required", param="requests")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest(f"{where}.params.max_tokens: Field required (a positive integer)",
                                 param="requests")  # fmt: skip
        if not isinstance(messages, list):
            raise InvalidRequest(f"{where}.params.messages: Field required", param="requests")
        if params.get("stream"):
            raise InvalidRequest(f"{where}.params.stream: batch requests cannot stream", param="requests")
        if not self.may_use(who, model):
            raise InvalidRequest(f"{where}.params.model: the model `{model}` does not exist or you do not "
                                 "have access to it", param="requests")  # fmt: skip
        return custom_id, model, orjson.dumps(params)

    async def _batch(self, who: Principal, batch_id: str) -> dict[str, Any]:
        found = await self.store.get_object(KIND, batch_id)
        if found is None or found.tenant != who.tenant:
            raise ObjectNotFound(f"Message Batch {batch_id} not found.")
        value: dict[str, Any] = orjson.loads(found.body)
        return value

    async def _save(self, tenant: str, batch: dict[str, Any]) -> None:
        await self.store.put_object(
            StoredObject(KIND, batch["id"], tenant, batch["created"], orjson.dumps(batch))
        )

    async def _page(
        self, tenant: str, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the tenant's batches, newest first: after ``after_id``, or just before ``before_id``."""
        if before_id is None:
            found = await self.store.list_objects(KIND, tenant, after=after_id, limit=limit + 1)
            return [orjson.loads(o.body) for o in found[:limit]], len(found) > limit
        newer: list[dict[str, Any]] = []
        after = None
        while True:  # the batches newer than before_id, walked from the newest
            found = await self.store.list_objects(KIND, tenant, after=after, limit=1000)
            for obj in found:
                if obj.id == before_id:
                    return newer[-limit:], len(newer) > limit
                newer.append(orjson.loads(obj.body))
            if len(found) < 1000:
                return [], False
            after = found[-1].id

    async def refresh(self, tenant: str, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its progress read from its jobs; ended once every request has an answer (or the
        window passed: the rest expire)."""
        if batch["ended_at"] is not None:
            return batch
        job_ids = [job_id for _, job_id in batch["requests"]]
        answered = await self.store.results_of(job_ids)
        now = self.wall()
        if len(answered) < len(job_ids) and now >= batch["expires"]:
            await self._close(job_ids, answered, "expired", now)
            answered = await self.store.results_of(job_ids)
        if len(answered) == len(job_ids):
            counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
            for result in answered.values():
                counts[_result_line("", result)["result"]["type"]] += 1
            batch.update(ended_at=now, counts=counts)
            await self._save(tenant, batch)
            self._release(batch)  # every request is answered (and charged): what is left of its hold goes
        return batch

    def _release(self, batch: dict[str, Any]) -> None:
        """Let go of what is left of the batch's budget hold, if it has one (a replica of another version,
        or no budget, made none)."""
        hold = batch.get("budget_hold")
        if hold and self.budgets is not None:
            self.budgets.let_go(batch.get("key", ""), hold)

    async def _close(self, job_ids: list[str], answered: dict[str, JobResult], why: str, now: float) -> None:
        """Give the requests still open a result, so no dispatcher runs them (the first answer wins)."""
        body = anthropic.error_body(f"The batch was {why} before this request ran.", "invalid_request_error")
        for job_id in job_ids:
            if job_id not in answered:
                await self.store.complete(JobResult(job_id, 499, body, why, now))

    async def cancel(self, who: Principal, batch_id: str) -> dict[str, Any]:
        """Requests not yet answered are not run (``canceled``); answered ones are kept."""
        batch = await self.refresh(who.tenant, await self._batch(who, batch_id))
        if batch["ended_at"] is not None:
            raise InvalidRequest(f"Message Batch {batch_id} has already ended and cannot be canceled.")
        now = self.wall()
        batch["cancel_initiated_at"] = now
        job_ids = [job_id for _, job_id in batch["requests"]]
        await self._close(job_ids, await self.store.results_of(job_ids), "cancelled", now)
        await self._save(who.tenant, batch)
        self._release(batch)  # nothing more of it runs (requests running now are charged when they end)
        return batch  # canceling: the next read finds every request answered and says ended

    @staticmethod
    def _public(batch: dict[str, Any], scope: wire.Scope) -> dict[str, Any]:
        """The ``MessageBatch`` object as Anthropic shows it."""
        total = len(batch["requests"])
        ended = batch["ended_at"] is not None
        counts = batch["counts"] or {"processing": total, "succeeded": 0, "errored": 0, "canceled": 0,
                                     "expired": 0}  # fmt: skip
        if ended:
            status = "ended"
        else:
            status = "canceling" if batch["cancel_initiated_at"] is not None else "in_progress"
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _rfc3339(batch["ended_at"]),
            "created_at": _rfc3339(batch["created"]),
            "expires_at": _rfc3339(batch["expires"]),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch["cancel_initiated_at"]),
            "results_url": f"{_origin(scope)}{anthropic.MESSAGE_BATCHES_PATH}/{batch['id']}/results"
            if ended
            else None,
        }


def _origin(scope: wire.Scope) -> str:
    """This service's scheme and host as the client reached it (where ``results_url`` points)."""
    host = wire.header(scope, b"host")
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}".encode()
    return f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}"


def _result_line(custom_id: str, result: JobResult | None) -> dict[str, Any]:
    """One line of a batch's results: succeeded (the message), errored (the error), canceled, expired."""
    if result is None or result.path in _CLOSED:
        closed = _CLOSED.get(result.path, "expired") if result is not None else "expired"
        return {"custom_id": custom_id, "result": {"type": closed}}
    body = result.json_object()
    if result.status == 200 and body is not None and body.get("type") == "message":
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": body}}
    if body is None or body.get("type") != "error" or not isinstance(body.get("error"), dict):
        error = body.get("error") if body is not None else None
        message = error.get("message") if isinstance(error, dict) else None
        text = message if isinstance(message, str) else result.describe()
        body = anthropic.error_payload(text, anthropic.error_type_for(result.status))
    return {"custom_id": custom_id, "result": {"type": "errored", "error": body}}


async def answering_errors(
    api: MessageBatchApi,
    serve: Handler,
    authenticate: Callable[[wire.Scope], Principal],
    scope: wire.Scope,
    receive: wire.Receive,
    send: wire.Send,
) -> None:
    """Authenticate and run a handler, answering any tokenyard error in Anthropic's shape."""
    try:
        await serve(api, scope, receive, send, authenticate(scope))
    except TokenyardError as exc:
        _, headers, _ = wire.error_response_parts(exc)
        await wire.send_bytes(send, anthropic.status_for(exc), anthropic.error_body_for(exc), headers)
