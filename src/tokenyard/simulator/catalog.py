"""The model catalog endpoints: ``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from tokenyard.errors import ModelNotFound
from tokenyard.simulator.request import Request
from tokenyard.simulator.shapes import OWNED_BY
from tokenyard.simulator.state import SimulatorState
from tokenyard.wire.asgi import Send, send_json
from tokenyard.wire.openai import model_list, model_object

# A fixed date, so listings are identical run to run.
MODELS_CREATED = 1_700_000_000


async def list_models(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/models``: the configured models, or ``sim-model`` when any model is accepted."""
    models = [model_object(model_id, MODELS_CREATED, OWNED_BY) for model_id in state.model_ids()]
    await send_json(send, 200, model_list(models))


async def retrieve_model(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /v1/models/{id}``: any id the simulator accepts."""
    model_id = request.path_param
    if not state.serves(model_id):
        raise ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it.")
    await send_json(send, 200, model_object(model_id, MODELS_CREATED, OWNED_BY))
