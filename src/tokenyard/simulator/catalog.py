"""The model catalog endpoints: ``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from tokenyard.errors import ModelNotFound
from tokenyard.simulator import wire
from tokenyard.simulator.asgi import Request, Send, send_json
from tokenyard.simulator.state import SimulatorState

# A fixed date, so listings are identical run to run.
MODELS_CREATED = 1_700_000_000


async def list_models(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/models``: the configured models, or ``sim-model`` when any model is accepted."""
    await send_json(send, wire.model_list(state.model_ids(), MODELS_CREATED))


async def retrieve_model(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/models/{id}``: any id the simulator accepts."""
    model_id = request.path_param
    if not state.serves(model_id):
        raise ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it.")
    await send_json(send, wire.model_object(model_id, MODELS_CREATED))
