"""Batch input files, checked the way OpenAI checks them while a batch is ``validating``.

Each line is one request, ``{"custom_id", "method": "POST", "url", "body"}``: ``custom_id`` unique in the
file, ``url`` the batch's endpoint, and every ``body`` naming the same ``model``. Each problem becomes one of
OpenAI's batch errors, ``{code, message, param, line}`` (lines count from 1), and any problem fails the whole
batch. Bodies are otherwise checked only when their line runs, as the real-time endpoint would check them.

Pure: the file's bytes in, requests or errors out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One valid line of an input file."""

    line: int
    custom_id: str
    body: dict[str, Any]
    raw_body: bytes
    """The body as the endpoint would receive it (keys the generated text, as a request's bytes do)."""


@dataclass(slots=True)
class BatchInput:
    """What an input file holds: its requests, their common model, and the errors that fail the batch."""

    requests: list[BatchRequest] = field(default_factory=list)
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, code: str, message: str, *, line: int | None = None, param: str | None = None) -> None:
        """Record one error (the batch will fail)."""
        self.errors.append({"code": code, "message": message, "param": param, "line": line})


def read_batch_input(content: bytes, endpoint: str, max_lines: int) -> BatchInput:
    """Check an input file for a batch on ``endpoint``; ``errors`` is empty when it may run."""
    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline ending the last line
    result = BatchInput()
    if not lines:
        result.fail("empty_file", "The batch input file is empty.")
    elif len(lines) > max_lines:
        result.fail(
            "too_many_tasks",
            f"The batch input file has {len(lines)} requests; at most {max_lines} are allowed.",
        )
    else:
        seen: set[str] = set()
        for number, raw in enumerate(lines, start=1):
            request = _read_line(result, number, raw.removesuffix(b"\r"), endpoint)
            if request is None:
                continue
            if request.custom_id in seen:
                result.fail(
                    "duplicate_custom_id",
                    f"The custom_id '{request.custom_id}' is not unique within the batch.",
                    line=number,
                    param="custom_id",
                )
                continue
            seen.add(request.custom_id)
            result.requests.append(request)
    if result.errors:
        result.requests = []
    return result


class _LineProblem(Exception):
    """What is wrong with one line, as a batch error's code, message and param."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _read_line(result: BatchInput, number: int, raw: bytes, endpoint: str) -> BatchRequest | None:
    """The line as a request, or None after recording why it is not one."""
    try:
        custom_id, body = _checked_fields(raw, endpoint)
        model = body["model"]
        if result.model is not None and model != result.model:
            raise _LineProblem(
                "model_mismatch",
                f"The model '{model}' differs from the model '{result.model}' of the batch's other requests.",
                "body.model",
            )
    except _LineProblem as problem:
        result.fail(problem.code, problem.message, line=number, param=problem.param)
        return None
    result.model = model
    return BatchRequest(number, custom_id, body, orjson.dumps(body))


def _checked_fields(raw: bytes, endpoint: str) -> tuple[str, dict[str, Any]]:
    """A line's ``custom_id`` and ``body``; raises ``_LineProblem`` for the first thing wrong with it."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        item = None
    if not isinstance(item, dict):
        raise _LineProblem("invalid_json_line", "This line is not parseable as a valid JSON object.")
    custom_id, url, body = item.get("custom_id"), item.get("url"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        raise _LineProblem(
            "missing_required_parameter", "Each request needs a non-empty string 'custom_id'.", "custom_id"
        )
    if item.get("method") != "POST":
        raise _LineProblem("invalid_method", "The request 'method' must be 'POST'.", "method")
    if not isinstance(url, str):
        raise _LineProblem("missing_required_parameter", "Each request needs a string 'url'.", "url")
    if url != endpoint:
        message = f"The request URL '{url}' does not match the batch endpoint '{endpoint}'."
        raise _LineProblem("url_mismatch", message, "url")
    if not isinstance(body, dict):
        raise _LineProblem("missing_required_parameter", "Each request needs an object 'body'.", "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _LineProblem(
            "missing_required_parameter", "Each request body must name its 'model'.", "body.model"
        )
    return custom_id, body
