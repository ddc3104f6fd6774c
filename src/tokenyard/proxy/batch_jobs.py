"""The request path's side of an async job that a provider batch runs: the body the batch backend gets, and
the meter's record of its answer. Handed to the queue as callables (it knows jobs, not backends or prices).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from tokenyard.meter.model import UsageRecord
from tokenyard.proxy import request_body
from tokenyard.proxy.backends import Backend
from tokenyard.proxy.endpoints import ENDPOINTS
from tokenyard.proxy.exchange import Exchange
from tokenyard.queue.model import Job


def body_for_batch(job: Job, backend: Backend) -> bytes:
    """The job's body for a batch backend: the client's bytes, with its model renamed (spliced in, as on
    the real-time path: numbers and everything else stay exact) when the provider names it differently."""
    upstream_model = backend.config.model
    if upstream_model is None:
        return job.body
    return request_body.with_member(job.body, orjson.loads(job.body), "model", upstream_model)


def batch_usage(
    job: Job,
    backend: Backend,
    request_id: str,
    status: int,
    body: bytes,
    *,
    clock: Callable[[], float],
    wall: Callable[[], float],
) -> UsageRecord:
    """The meter's record of a job a provider batch answered: at the batch backend's prices."""
    exchange = Exchange(
        request_id, job.tenant, job.model, orjson.loads(job.body), clock(), key_id=job.key_id, team=job.team
    )
    exchange.mode, exchange.reason, exchange.route = "async", job.reason, "provider_batch"
    exchange.backend, exchange.status = backend, status
    exchange.usage_api = ENDPOINTS[job.endpoint].name  # a batch answers in the job's own API
    if status == 200:
        exchange.answer = body
    return exchange.to_record(clock(), wall())
