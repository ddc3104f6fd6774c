"""The GPU plan on this proxy replica: read from the store off the request path, applied to routing.

Every ``READ_S`` (the membership beat's pace; a config reload reads it at once too) the replica reads the
advisor's ``advisor:plan`` document and, for every model whose ``routing`` is ``plan``, builds the order
its deployments are tried in per request shape (``proxy/plan_order.py``) and hands the table to the proxy
in one assignment. A model the plan does not name, an absent or unreadable document, or a store that
cannot answer leaves the configured order (a store failure keeps the last plan read: it was in force).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from tokenyard.capacity.gpu_plan import DOCUMENT, ModelPlan, generated_at, read_plans
from tokenyard.config import TokenyardConfig
from tokenyard.errors import StoreError
from tokenyard.proxy.backends import Backend
from tokenyard.proxy.handler import Proxy
from tokenyard.proxy.plan_order import shape_orders
from tokenyard.stores.documents import read_json_dict
from tokenyard.stores.protocols import DocumentStore

log = logging.getLogger("tokenyard.plan")

READ_S: Final = 2.0


class PlanReader:
    """Keeps the proxy's per-shape orders in step with the stored plan."""

    def __init__(
        self,
        store: DocumentStore,
        proxy: Proxy,
        models: Mapping[str, Sequence[Backend]],
        routed: frozenset[str],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.proxy = proxy  # its ``planned`` table is replaced whole at each change
        self.models = models  # every model's deployments in configured order (fixed until a restart)
        self.routed = routed  # the models whose ``routing`` is ``plan``
        self.sleep = sleep  # the pause between reads (tests hand a fake one)
        self.plans: dict[str, ModelPlan] = {}  # the plan's entries for this config's models, as last read
        self.generated_at: float | None = None  # when the advisor wrote the plan read (None: none)

    async def refresh(self) -> None:
        """Read the document once and apply it. Raises ``StoreError`` when the store cannot answer."""
        document = await read_json_dict(self.store, DOCUMENT)
        plans = {model: plan for model, plan in read_plans(document).items() if model in self.models}
        self.generated_at = generated_at(document)
        if plans == self.plans:
            return  # the same plan: the tables in force are already its own
        self.plans = plans
        planned = {}
        for model in self.routed:
            plan = plans.get(model)
            if plan is not None:
                deployments = self.models[model]
                planned[model] = shape_orders(deployments, [_gpu_type(b) for b in deployments], plan)
        self.proxy.planned = planned  # one assignment: a request sees the old table or the new one
        log.info("GPU plan: routing %s by shape", ", ".join(sorted(planned)) or "no model")

    def in_force(self) -> Mapping[str, ModelPlan]:
        """The plan's entries for this config's models, as last read (for ``/metrics``)."""
        return self.plans

    def after(
        self, reload: Callable[[], Awaitable[dict[str, Any]]]
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """``reload`` (a config reload here), then a read of the plan: the documents the config follows are
        re-read with it (and a test or an operator need not wait for the next read)."""

        async def reload_then_read() -> dict[str, Any]:
            result = await reload()
            with contextlib.suppress(StoreError):
                await self.refresh()
            return result

        return reload_then_read

    async def run(self) -> None:
        """Read and apply every ``READ_S`` until cancelled (the store down: the last plan stays)."""
        while True:
            with contextlib.suppress(StoreError):
                await self.refresh()
            await self.sleep(READ_S)


def _gpu_type(backend: Backend) -> str | None:
    """The GPU type a deployment runs on, for the plan (None: billed per token, not the plan's to move)."""
    return backend.config.gpu_type if backend.config.kind == "dedicated" else None


def routed_by_plan(config: TokenyardConfig) -> frozenset[str]:
    """The models whose ``routing`` is ``plan`` (fixed until a restart: models are restart-only)."""
    return frozenset(name for name, model in config.models.items() if model.routing == "plan")
