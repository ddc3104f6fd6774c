"""The OpenAI Batch API, served by tokenyard: ``/v1/files`` and ``/v1/batches``, as OpenAI shapes them.

``client.files.create(file=..., purpose="batch")`` and ``client.batches.create(...)`` work unchanged.
Each line of a batch becomes an async job with the batch's 24 h deadline, so it goes down the async
track like any other (idle dedicated capacity, a provider batch — merged with other tenants' lines for
the same model — or real time); its answer is billed as async at the price of the path it took. A
batch's progress is read from its jobs' results when it is asked for; once every line has an answer
(or the batch expired or was cancelled) its output and error files are written and it is final.

A batch of a budgeted key reserves its lines' worst case when it is accepted (refused with a 429 if a hard
budget that rejects cannot hold it); each answer is charged and draws that hold down, and what is left of
it is let go when the batch ends (if nobody does, it lapses after the window and
``budgets.reservation_ttl_s``).

Files and batches belong to the tenant whose key made them: another tenant's are "not found".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from tokenyard.admission.auth import Principal
from tokenyard.errors import InvalidRequest, ObjectNotFound
from tokenyard.queue.batch_budgets import BatchBudgets
from tokenyard.queue.model import JSON_TYPE, Job, JobResult, StoredObject
from tokenyard.queue.store import JobsAndObjects
from tokenyard.wire import asgi as wire
from tokenyard.wire import openai
from tokenyard.wire.ids import new_object_id, new_request_id
from tokenyard.wire.multipart import parse_form

WINDOW_S: Final = 86_400
FILE, CONTENT, BATCH = "file", "file_content", "batch"


def file_object(meta: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's FileObject for a stored file's metadata (tokenyard's files do not expire)."""
    return openai.file_object(
        meta["id"], meta["bytes"], meta["created_at"], meta["filename"], meta["purpose"], None
    )


class BatchApi:
    """Handlers for ``/v1/files…`` and ``/v1/batches…`` on a job store."""

    def __init__(
        self,
        store: JobsAndObjects,
        *,
        may_use: Callable[[Principal, str], bool],
        wake: Callable[[], None],
        budgets: BatchBudgets | None = None,
        max_body_bytes: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.may_use = may_use  # whether a key may call a model (and the model exists)
        self.budgets = budgets  # where a batch's worst case is held (None: no budgets to count it in)
        self.wake = wake
        self.max_body_bytes = max_body_bytes
        self.wall = wall

    # -- the HTTP handlers (the edge routes to them, authenticated: ``who``; path parameters in
    # ``scope["path_params"]``) ---------------------------------------------------------------------------

    async def files_create(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``POST /v1/files``."""
        body = await wire.read_body(scope, receive, self.max_body_bytes)
        content_type = (wire.header(scope, b"content-type") or b"").decode("latin-1")
        await wire.send_json(send, 200, await self.upload(who, content_type, body))

    async def files_list(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/files``."""
        await wire.send_json(send, 200, await self._list(FILE, who, wire.query(scope), file_object))

    async def files_retrieve(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/files/{file_id}``."""
        await wire.send_json(send, 200, file_object(await self._meta(who, scope["path_params"]["file_id"])))

    async def files_delete(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``DELETE /v1/files/{file_id}``."""
        await wire.send_json(send, 200, await self.delete_file(who, scope["path_params"]["file_id"]))

    async def files_content(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/files/{file_id}/content``."""
        file_id = scope["path_params"]["file_id"]
        await self._meta(who, file_id)
        content = await self.store.get_object(CONTENT, file_id)
        await wire.send_bytes(
            send, 200, content.body if content else b"", [(b"content-type", b"application/jsonl")]
        )

    async def batches_create(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``POST /v1/batches``."""
        request = _json_object(await wire.read_body(scope, receive, 1 << 20))
        await wire.send_json(send, 200, await self.create(who, request))

    async def batches_list(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/batches``."""
        await wire.send_json(send, 200, await self._list(BATCH, who, wire.query(scope), self._public))

    async def batches_retrieve(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``GET /v1/batches/{batch_id}``."""
        batch = await self.refresh(who.tenant, await self._batch(who, scope["path_params"]["batch_id"]))
        await wire.send_json(send, 200, self._public(batch))

    async def batches_cancel(
        self, scope: wire.Scope, receive: wire.Receive, send: wire.Send, who: Principal
    ) -> None:
        """``POST /v1/batches/{batch_id}/cancel``."""
        await wire.send_json(
            send, 200, self._public(await self.cancel(who, scope["path_params"]["batch_id"]))
        )

    # -- files -----------------------------------------------------------------------------------------

    async def upload(self, who: Principal, content_type: str, body: bytes) -> dict[str, Any]:
        """``POST /v1/files`` (multipart: ``file``, ``purpose``)."""
        form = parse_form(content_type, body)
        purpose = form["purpose"].content.decode() if "purpose" in form else ""
        if purpose != "batch":
            raise InvalidRequest(
                "tokenyard keeps files for the Batch API only: purpose must be 'batch'.", param="purpose"
            )
        upload = form.get("file")
        if upload is None or upload.filename is None:
            raise InvalidRequest("Missing the file to upload.", param="file")
        try:
            upload.content.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"A batch input file must be UTF-8 JSONL: byte {exc.start} is not UTF-8.", param="file"
            ) from exc
        now = self.wall()
        meta = {"id": new_object_id("file-"), "bytes": len(upload.content), "created_at": int(now),
                "filename": upload.filename, "purpose": purpose}  # fmt: skip
        await self._put_file(who.tenant, now, meta, upload.content)
        return file_object(meta)

    async def _put_file(self, tenant: str, now: float, meta: dict[str, Any], content: bytes) -> None:
        await self.store.put_object(StoredObject(CONTENT, meta["id"], tenant, now, content))
        await self.store.put_object(StoredObject(FILE, meta["id"], tenant, now, orjson.dumps(meta)))

    async def _owned(self, kind: str, obj_id: str, who: Principal, missing: ObjectNotFound) -> dict[str, Any]:
        """A file's or batch's JSON, if it exists and is the caller's tenant's; else ``missing`` is raised."""
        found = await self.store.get_object(kind, obj_id)
        if found is None or found.tenant != who.tenant:
            raise missing
        value: dict[str, Any] = orjson.loads(found.body)
        return value

    async def _meta(self, who: Principal, file_id: str) -> dict[str, Any]:
        return await self._owned(
            FILE, file_id, who, ObjectNotFound(f"No such File object: {file_id}", param="id")
        )

    async def delete_file(self, who: Principal, file_id: str) -> dict[str, Any]:
        """``DELETE /v1/files/{id}``."""
        await self._meta(who, file_id)
        await self.store.delete_object(FILE, file_id)
        await self.store.delete_object(CONTENT, file_id)
        return openai.file_deleted(file_id)

    async def _list(
        self,
        kind: str,
        who: Principal,
        query: dict[str, str],
        shape: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """OpenAI's cursor page: newest first, ``after`` an id, ``limit`` 1–100 (default 20)."""
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise InvalidRequest("limit must be an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise InvalidRequest("limit must be between 1 and 100.", param="limit")
        found = await self.store.list_objects(kind, who.tenant, after=query.get("after"), limit=limit + 1)
        items = [orjson.loads(obj.body) for obj in found[:limit]]
        if kind == BATCH:
            items = [await self.refresh(who.tenant, item) for item in items]
        if kind == FILE and "purpose" in query:
            items = [item for item in items if item["purpose"] == query["purpose"]]
        return openai.list_page([shape(item) for item in items], len(found) > limit)

    # -- batches ---------------------------------------------------------------------------------------

    async def create(self, who: Principal, request: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/batches``: validate the input file, hold its worst case on the key's budgets, queue a
        job per line."""
        endpoint, window = request.get("endpoint"), request.get("completion_window")
        if endpoint not in openai.INFERENCE_PATHS:
            listed = ", ".join(openai.INFERENCE_PATHS)
            raise InvalidRequest(f"endpoint must be one of {listed}.", param="endpoint")
        if window != "24h":
            raise InvalidRequest("completion_window must be '24h'.", param="completion_window")
        metadata = request.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise InvalidRequest("metadata must be an object of strings.", param="metadata")
        file_id = str(request.get("input_file_id"))
        meta = await self._meta(who, file_id)
        if meta["purpose"] != "batch":
            raise InvalidRequest("The input file's purpose must be 'batch'.", param="input_file_id")
        content = await self.store.get_object(CONTENT, file_id)
        now = self.wall()
        batch = {
            "id": new_object_id("batch_"), "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": file_id, "completion_window": "24h", "status": "in_progress",
            "output_file_id": None, "error_file_id": None, "created_at": int(now), "in_progress_at": int(now),
            "expires_at": int(now) + WINDOW_S, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
            "lines": [], "_created": now, "_key": who.key_name, "_budget_hold": "",
        }  # fmt: skip
        lines, errors = self._lines(who, content.body if content else b"", endpoint)
        if errors:
            batch.update(status="failed", failed_at=int(now), in_progress_at=None,
                         errors={"object": "list", "data": errors})  # fmt: skip
            await self._save(who.tenant, batch)
            return self._public(batch)
        if self.budgets is not None:  # refused (429) here if a hard budget cannot hold its worst case
            ends_at = batch["expires_at"]
            worst = [(model, body) for _, model, body in lines]
            batch["_budget_hold"] = await self.budgets.hold_batch(who, batch["id"], worst, ends_at)
        try:
            for index, (custom_id, model, body) in enumerate(lines):
                job_id = f"job_{batch['id']}_{index}"
                job = Job(job_id, who.tenant, model, endpoint, body, now, now + WINDOW_S, reason="Batch API",
                          key_id=who.key_name, team=who.team or "",
                          budget_hold=batch["_budget_hold"])  # fmt: skip
                await self.store.enqueue(job)
                batch["lines"].append([custom_id, job_id])
            batch["request_counts"]["total"] = len(lines)
            await self._save(who.tenant, batch)
        except Exception:  # not taken: the lines queued already are charged when answered, unreserved
            self._release(batch)
            raise
        self.wake()
        return self._public(batch)

    def _lines(
        self, who: Principal, content: bytes, endpoint: str
    ) -> tuple[list[tuple[str, str, bytes]], list[dict[str, Any]]]:
        """(custom_id, model, body) per line, or the errors by line number, as OpenAI reports them."""
        lines: list[tuple[str, str, bytes]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            problem = None
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line, problem = None, ("invalid_json_line", "This line is not parseable as valid JSON.")
            if line is not None:
                problem = _line_problem(line, endpoint, seen)
                if problem is None and not self.may_use(who, line["body"]["model"]):
                    model = line["body"]["model"]
                    problem = (
                        "model_not_found",
                        f"The model `{model}` does not exist or you do not have access to it.",
                    )
            if problem is not None:
                errors.append({"code": problem[0], "message": problem[1], "param": None, "line": number})
                continue
            assert line is not None
            seen.add(line["custom_id"])
            lines.append((line["custom_id"], line["body"]["model"], orjson.dumps(line["body"])))
        if not lines and not errors:
            errors.append(
                {
                    "code": "empty_file",
                    "message": "The input file has no requests.",
                    "param": None,
                    "line": None,
                }
            )
        return lines, errors

    async def _batch(self, who: Principal, batch_id: str) -> dict[str, Any]:
        missing = ObjectNotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return await self._owned(BATCH, batch_id, who, missing)

    async def _save(self, tenant: str, batch: dict[str, Any]) -> None:
        # Listed by the exact creation time: batches made within one second keep their order.
        created = float(batch["_created"])
        await self.store.put_object(StoredObject(BATCH, batch["id"], tenant, created, orjson.dumps(batch)))

    async def refresh(self, tenant: str, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its progress read from its jobs; finalised once every line has an answer (or the
        window passed: the rest expire)."""
        if batch["status"] in openai.BATCH_TERMINAL:
            return batch
        job_ids = [job_id for _, job_id in batch["lines"]]
        answered = await self.store.results_of(job_ids)
        now = self.wall()
        if len(answered) < len(job_ids) and now >= batch["expires_at"]:
            await self._close_unanswered(job_ids, answered, "expired", now)
            answered = await self.store.results_of(job_ids)
            batch.update(status="expired", expired_at=int(now))
        counts = batch["request_counts"]
        # By status and label only (not parsed on every read): _finalize's lines have the last word.
        counts["completed"] = sum(
            1 for r in answered.values() if r.status == 200 and r.content_type == JSON_TYPE
        )
        counts["failed"] = len(answered) - counts["completed"]
        if len(answered) == len(job_ids):
            await self._finalize(tenant, batch, answered, now)
        return batch

    async def _close_unanswered(
        self, job_ids: Sequence[str], answered: dict[str, JobResult], why: str, now: float
    ) -> None:
        """Give the lines still open an error result, so no dispatcher runs them (the first answer wins)."""
        code = "batch_expired" if why == "expired" else "batch_cancelled"
        body = orjson.dumps(
            {"error": {"code": code, "message": f"The batch was {why} before this request ran."}}
        )
        for job_id in job_ids:
            if job_id not in answered:
                await self.store.complete(JobResult(job_id, 499, body, why, now))

    async def _finalize(
        self, tenant: str, batch: dict[str, Any], answered: dict[str, JobResult], now: float
    ) -> None:
        """Write the output and error files and make the batch final."""
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for custom_id, job_id in batch["lines"]:
            line = _output_line(custom_id, answered[job_id])
            succeeded = line["error"] is None and line["response"]["status_code"] == 200
            (output if succeeded else errors).append(line)
        for name, lines in (("output_file_id", output), ("error_file_id", errors)):
            if lines:
                content = openai.jsonl(lines)
                suffix = "output" if name == "output_file_id" else "error"
                meta = {"id": new_object_id("file-"), "bytes": len(content), "created_at": int(now),
                        "filename": f"{batch['id']}_{suffix}.jsonl", "purpose": "batch_output"}  # fmt: skip
                await self._put_file(tenant, now, meta, content)
                batch[name] = meta["id"]
        batch["request_counts"].update(completed=len(output), failed=len(errors))
        if batch["status"] not in openai.BATCH_TERMINAL:
            batch["status"] = "cancelled" if batch["cancelling_at"] else "completed"
            batch["finalizing_at"] = int(now)
            batch["cancelled_at" if batch["status"] == "cancelled" else "completed_at"] = int(now)
        await self._save(tenant, batch)
        self._release(batch)  # every line is answered (and charged): what is left of its hold goes

    def _release(self, batch: dict[str, Any]) -> None:
        """Let go of what is left of the batch's budget hold, if it has one (a replica of another version,
        or no budget, made none)."""
        hold = batch.get("_budget_hold")
        if hold and self.budgets is not None:
            self.budgets.let_go(batch.get("_key", ""), hold)

    async def cancel(self, who: Principal, batch_id: str) -> dict[str, Any]:
        """``POST /v1/batches/{id}/cancel``: lines not yet answered are not run; answered ones are kept."""
        batch = await self.refresh(who.tenant, await self._batch(who, batch_id))
        if batch["status"] in openai.BATCH_TERMINAL:
            raise InvalidRequest(f"Cannot cancel a batch with status '{batch['status']}'.")
        now = self.wall()
        batch["cancelling_at"] = int(now)
        job_ids = [job_id for _, job_id in batch["lines"]]
        await self._close_unanswered(job_ids, await self.store.results_of(job_ids), "cancelled", now)
        await self._save(who.tenant, batch)
        self._release(batch)  # nothing more of it runs (lines running now are charged when they end)
        public = self._public(batch)
        public["status"] = "cancelling"  # as OpenAI answers the cancel; the next read says cancelled
        return public

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        """The Batch object as OpenAI shows it (without tokenyard's own bookkeeping)."""
        return {key: value for key, value in batch.items() if key != "lines" and not key.startswith("_")}


def _output_line(custom_id: str, result: JobResult) -> dict[str, Any]:
    """A line of the batch's output or error file, as OpenAI writes them: ``response`` with the answer's
    status and JSON body, or ``error`` when there is no such answer.

    An answer that is not a JSON object (an HTML page from a gateway in front of the upstream) keeps its
    status; its body — which OpenAI's line format types as a JSON object — becomes an OpenAI error saying
    what it was, and ``error`` says the same, so a reader looking at either sees it.
    """
    line_id = new_object_id("batch_req_")
    body = result.json_object()
    if result.path in ("expired", "cancelled"):  # closed by tokenyard: the body is its own error
        error = body["error"] if body is not None else {"code": f"batch_{result.path}", "message": ""}
        return openai.batch_error_line(line_id, custom_id, error)
    request_id = result.request_id or new_request_id()
    if body is None:
        message = result.describe()
        error_type = "server_error" if result.status >= 500 else "invalid_request_error"
        body = openai.error_payload(message, error_type, code="upstream_response_not_json")
        line = openai.batch_response_line(line_id, custom_id, result.status, request_id, body)
        line["error"] = {"code": "upstream_response_not_json", "message": message}
        return line
    return openai.batch_response_line(line_id, custom_id, result.status, request_id, body)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return value


def _line_problem(line: Any, endpoint: str, seen: set[str]) -> tuple[str, str] | None:
    """What is wrong with one parsed input line, as OpenAI's error code and message (None: nothing)."""
    if not isinstance(line, dict):
        return "invalid_json_line", "This line is not a JSON object."
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "Each line needs a 'custom_id' string."
    if custom_id in seen:
        return "duplicate_custom_id", f"The custom_id '{custom_id}' appears more than once in this batch."
    if line.get("method") != "POST":
        return "invalid_method", "Each line's 'method' must be 'POST'."
    if line.get("url") != endpoint:
        return "url_mismatch", f"This line's 'url' does not match the batch's endpoint {endpoint}."
    body = line.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "missing_required_parameter", "Each line needs a 'body' object with a 'model'."
    if body.get("stream"):
        return "invalid_value", "Batch requests cannot stream."
    return None
