"""``GET /admin/capacity``: the desired replicas of every dedicated backend, why, and what the actuator did.

The document is the capacity planner's (the same on every replica: the leader stores it, the others read
it), with this replica's own view added: the replicas it counts for each backend and its in-flight cap.
Beside it, the GPU plan against what runs (``plan_utilization``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tokenyard.capacity.actuator import public_settings
from tokenyard.capacity.gpu_plan import ModelPlan
from tokenyard.capacity.planner import CapacityPlanner
from tokenyard.proxy.backends import Backend
from tokenyard.telemetry.admin import AdminApi
from tokenyard.wire import asgi as wire


class CapacityApi:
    """The handler of ``GET /admin/capacity`` (admin key)."""

    def __init__(
        self,
        admin: AdminApi,
        planner: CapacityPlanner | None,
        backends: Mapping[str, Backend],
        sections: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.admin = admin  # authorizes, as for every /admin/* route
        self.planner = planner  # None: no meter store, so no demand to decide from
        self.backends = backends
        # More of the capacity picture, each under its own key (e.g. "envelope": the measured curves).
        self.sections = sections or {}

    def document(self) -> dict[str, Any]:
        """What the route answers."""
        planner = self.planner
        extra = {name: section() for name, section in self.sections.items()}
        if planner is None:
            return {
                "object": "capacity",
                "enabled": False,
                "why": "desired replicas are decided from the metered demand: they need a meter store",
                **extra,
            }
        stored = planner.latest or {"object": "capacity", "backends": [], "decisions": []}
        actuator = planner.config.capacity.actuator
        # Shown redacted whoever wrote the document (an older leader may have stored more of it).
        stored = stored | {"actuator": None if actuator is None else public_settings(actuator)}
        here = {
            name: {"replicas": b.replicas, "max_concurrency": b.max_concurrency}
            for name, b in self.backends.items()
            if b.config.kind == "dedicated"
        }
        return {
            **stored,
            "enabled": True,
            "pending": planner.latest is None,  # nothing decided yet (the first tick is still running)
            "leader": planner.leader,  # whether this replica decides
            "here": here,  # this replica's counts (they follow capacity:replicas at each beat)
            **extra,
        }

    async def handle(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/capacity``."""
        self.admin.authorize(scope)
        await wire.send_json(send, 200, self.document())


def plan_utilization(
    plans: Mapping[str, ModelPlan], models: Mapping[str, Sequence[Backend]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model the plan names and per GPU type (planned or deployed): the replicas the plan wants, those
    its dedicated deployments of that type run now, and this replica's in-flight count against its cap
    over them (``utilization``: in flight ÷ limit; None when nothing of that type can take a request)."""
    answer: dict[str, dict[str, dict[str, Any]]] = {}
    for model, plan in plans.items():
        dedicated = [b for b in models.get(model, ()) if b.config.kind == "dedicated"]
        types = [*plan.replicas, *(gpu for gpu in plan.gpu_of_shape if gpu is not None)]
        types += [b.config.gpu_type for b in dedicated if b.config.gpu_type is not None]
        per_type = {}
        for gpu_type in dict.fromkeys(types):  # first-seen order, once each
            of_type = [b for b in dedicated if b.config.gpu_type == gpu_type]
            in_flight = sum(b.in_flight for b in of_type)
            limit = sum(b.max_concurrency or 0 for b in of_type)
            per_type[gpu_type] = {
                "planned_replicas": plan.replicas.get(gpu_type, 0),
                "configured_replicas": sum(b.replicas for b in of_type),
                "in_flight": in_flight,
                "limit": limit,
                "utilization": in_flight / limit if limit else None,
            }
        answer[model] = per_type
    return answer
