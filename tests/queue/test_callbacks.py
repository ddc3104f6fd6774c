"""Callbacks through real HTTP: a finished job is POSTed to its allow-listed URL, signed as documented
(``X-Tokenyard-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>``), with the settings of the moment;
a receiver that fails is logged, never raised."""

from __future__ import annotations

import hashlib
import hmac
import logging

import orjson
import pytest
from pydantic import SecretStr

from tests.support.net import free_port
from tests.support.signatures import verify
from tokenyard.adapters.webhook import WebhookSender
from tokenyard.queue.callbacks import CallbackSender, payload
from tokenyard.queue.model import Job, JobResult
from tokenyard.queue.settings import Callbacks
from tokenyard.wire.signatures import sign

NOW = 1_800_000_000
Received = tuple[int, list[tuple[dict[str, str], bytes]]]


def job(url: str | None) -> Job:
    return Job("job_1", "team-a", "llama", "/v1/chat/completions", b"{}", NOW - 5.0, NOW + 60.0, callback=url)


ANSWER = JobResult("job_1", 200, b'{"object":"chat.completion"}', "realtime", NOW - 1.0)


def test_the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() -> None:
    header = sign("whsec-1", b'{"id":"job_1"}', 1_700_000_000)
    assert (
        header
        == "t=1700000000,v1=" + hmac.new(b"whsec-1", b'1700000000.{"id":"job_1"}', hashlib.sha256).hexdigest()
    )
    assert sign("whsec-2", b'{"id":"job_1"}', 1_700_000_000) != header
    assert sign("whsec-1", b'{"id":"job_2"}', 1_700_000_000) != header
    assert sign("whsec-1", b'{"id":"job_1"}', 1_700_000_001) != header


def test_the_payload_carries_the_answer_as_json_or_as_text_when_it_is_not() -> None:
    assert orjson.loads(payload(job(None), ANSWER)) == {
        "id": "job_1",
        "object": "async.job.result",
        "status_code": 200,
        "path": "realtime",
        "content_type": "application/json",
        "body": {"object": "chat.completion"},
    }
    page = JobResult("job_1", 502, b"<html>bad gateway</html>", "realtime", NOW, "text/html")
    assert orjson.loads(payload(job(None), page))["body"] == "<html>bad gateway</html>"
    assert orjson.loads(payload(job(None), JobResult("job_1", 204, b"", "realtime", NOW)))["body"] is None


async def test_a_callback_is_posted_signed_with_the_secret_of_the_moment(
    receiver: Received, webhook: WebhookSender
) -> None:
    port, got = receiver
    settings = Callbacks(allow_hosts=["127.0.0.1"], secret=SecretStr("whsec-old"))
    callbacks = CallbackSender(webhook, lambda: settings, wall=lambda: NOW)
    url = f"http://127.0.0.1:{port}/hooks/done"
    await callbacks.send(job(url), ANSWER)
    settings = Callbacks(allow_hosts=["127.0.0.1"], secret=SecretStr("whsec-new"))  # a reload
    await callbacks.send(job(url), ANSWER)
    settings = Callbacks(allow_hosts=["127.0.0.1"])  # no secret: unsigned
    await callbacks.send(job(url), ANSWER)
    assert [body for _, body in got] == [payload(job(url), ANSWER)] * 3
    assert verify("whsec-old", got[0][0]["x-tokenyard-signature"], got[0][1]) == NOW
    assert verify("whsec-new", got[1][0]["x-tokenyard-signature"], got[1][1]) == NOW
    assert "x-tokenyard-signature" not in got[2][0]
    assert {headers["content-type"] for headers, _ in got} == {"application/json"}


async def test_a_host_taken_off_the_allow_list_is_not_called(
    receiver: Received, webhook: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    port, got = receiver
    settings = Callbacks(allow_hosts=["hooks.example.com"])  # 127.0.0.1 was allowed at submission
    with caplog.at_level(logging.WARNING, "tokenyard.dispatcher"):
        await CallbackSender(webhook, lambda: settings, wall=lambda: NOW).send(
            job(f"http://127.0.0.1:{port}/hook"), ANSWER
        )
    assert got == []
    assert "callback not called: The callback host '127.0.0.1' is not in" in caplog.text


async def test_a_receiver_that_cannot_be_reached_is_logged_not_raised(
    webhook: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Callbacks(allow_hosts=["127.0.0.1"])
    with caplog.at_level(logging.WARNING, "tokenyard.dispatcher"):
        await CallbackSender(webhook, lambda: settings, wall=lambda: NOW).send(
            job(f"http://127.0.0.1:{free_port()}/hook"), ANSWER
        )
    assert "job job_1: callback failed: cannot connect to the upstream" in caplog.text
