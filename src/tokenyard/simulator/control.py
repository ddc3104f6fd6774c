"""The control endpoints under ``/sim/``: stats, recent requests, live faults and reset (for tests)."""

from __future__ import annotations

from urllib.parse import parse_qs

from pydantic import ValidationError

from tokenyard.errors import InvalidRequest
from tokenyard.simulator import metrics
from tokenyard.simulator.config import FaultConfig
from tokenyard.simulator.request import Request
from tokenyard.simulator.state import REQUEST_LOG_SIZE, SimulatorState
from tokenyard.wire.asgi import Send, send_json

DEFAULT_REQUEST_LIMIT = 50


async def stats(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /sim/stats``: counters and gauges."""
    await send_json(send, 200, state.stats())


async def recent_requests(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /sim/requests?limit=N``: the last N requests received under ``/v1/``, oldest first."""
    values = parse_qs(request.query.decode("latin-1")).get("limit")
    limit = DEFAULT_REQUEST_LIMIT
    if values:
        try:
            limit = int(values[-1])
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.", param="limit") from None
    await send_json(send, 200, state.recent(min(max(limit, 0), REQUEST_LOG_SIZE)))


async def get_faults(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /sim/faults``: the live faults."""
    await send_json(send, 200, state.faults.model_dump())


async def set_faults(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /sim/faults``: replace the live faults (fields left out take their defaults)."""
    try:
        faults = FaultConfig.model_validate(request.json_object())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidRequest(f"Invalid faults: {problems}") from exc
    state.faults = faults
    metrics.freeze(state)  # metrics_stale keeps the page as it is at this moment
    await send_json(send, 200, faults.model_dump())


async def reset(state: SimulatorState, request: Request, send: Send) -> None:
    """``POST /sim/reset``: zero the stats, clear the request log, restore faults, reseed."""
    state.reset()
    await send_json(send, 200, state.stats())
