"""Desired replicas, decided every ``capacity.interval_s`` by one proxy replica and served by all.

Each tick, the replica that holds (or takes) the ``capacity`` store lock is the leader: it reads the recent
and week-ago minutes of the meter's aggregates, decides every dedicated backend's desired replicas
(``desired.py``), lets the actuator act on them within its guardrails (``actuator.py``), and stores the
whole picture — desired counts, reasons, inputs and the bounded decision log — as the
``capacity:decisions`` document. Every other replica reads that document, so ``GET /admin/capacity`` and
``tokenyard_desired_replicas`` agree everywhere. The lock is held for three intervals and renewed each
tick: the lead stays put while its replica lives, and moves (taking the log and the cool-downs with it,
from the document) when it stops. The leader renews the lock before each action and stops acting when it
lost it, and stores each decision (and the cool-down it starts) before applying it: a replica that takes
the lead meanwhile sees the action and its cool-down, and does not act again. The config refuses an
actuator whose ``timeout_s`` times the backends it acts on reaches the lock's lead.

A successful actuation writes the new count to ``capacity:replicas`` (``shared_replicas.py``): every
replica applies it at its next membership beat, this one at once. Until it is written nothing counts it:
an actuation the store could not share is logged as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import orjson

from tokenyard.adapters.base import Webhook
from tokenyard.capacity.actuator import Action, Step, actuation_for, plan_step, public_settings
from tokenyard.capacity.desired import (
    MINUTE_S,
    WEEK_S,
    CapacitySource,
    Desired,
    advice_floor,
    decide,
    dedicated_backends,
    demand_by_backend,
)
from tokenyard.capacity.settings import LEAD_INTERVALS, Actuator
from tokenyard.capacity.shared_replicas import publish_replicas
from tokenyard.config import MAX_REPLICAS, TokenyardConfig
from tokenyard.errors import StoreError
from tokenyard.meter.store import UsageStore
from tokenyard.stores.documents import read_json_dict
from tokenyard.stores.protocols import CoordinatedDocuments

log = logging.getLogger("tokenyard.capacity")

LOCK: Final = "capacity"
DECISIONS_DOC: Final = "capacity:decisions"
MAX_DECISIONS: Final = 100  # the decision log keeps this many, newest last


class PlannerStore(UsageStore, CoordinatedDocuments, Protocol):
    """What the planner asks of a store: the usage it reads, the lock, its documents."""


class CapacityPlanner:
    """The desired replicas of every dedicated backend, the actuator's decisions, and their document."""

    def __init__(
        self,
        store: PlannerStore,
        config: Callable[[], TokenyardConfig],
        *,
        replica: str,
        capacity: CapacitySource,
        provisioned: Callable[[str], int],
        apply: Callable[[str, int], None],
        advice: Callable[[], Mapping[str, Any] | None],
        webhook: Webhook,
        wall: Callable[[], float],
    ) -> None:
        self.store = store
        self._config = config  # the config in force (a reload may change the capacity section)
        self.replica = replica  # the lock owner, and the document's author
        self.capacity = capacity  # capacity per replica at the SLA, best source first
        self.provisioned = provisioned  # a backend's replicas as this replica counts them now
        self.apply = apply  # count a backend's new replicas here (routing cap, GPU accrual)
        self.advice = advice  # the advisor's latest advice document, or None
        self.webhook = webhook
        self.wall = wall
        self.leader = False
        self.latest: dict[str, Any] | None = None  # the document, as GET /admin/capacity serves it
        self._decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS)
        self._last_action_at: dict[str, float] = {}
        self._ids = (f"dec_{os.urandom(4).hex()}_{n}" for n in itertools.count())

    @property
    def config(self) -> TokenyardConfig:
        """The config in force."""
        return self._config()

    async def run(self) -> None:
        """Tick every ``capacity.interval_s`` until cancelled; then hand the lead on at once."""
        try:
            while True:
                try:
                    await self.tick()
                except StoreError as exc:
                    log.warning("capacity: %s; trying again next interval", exc)
                except Exception:  # the loop must outlive any one bad tick
                    log.exception("capacity: deciding replicas failed; trying again next interval")
                await asyncio.sleep(self.config.capacity.interval_s)
        finally:
            if self.leader:
                with contextlib.suppress(StoreError):
                    await self.store.release_lock(LOCK, self.replica)

    async def tick(self) -> None:
        """Decide and act if this replica leads; otherwise read what the leader stored."""
        if not await self._hold_lead():
            self.leader = False
            self.latest = await self._stored() or self.latest
            return
        if not self.leader:  # the lead moved here: carry on the log and the cool-downs
            self._resume(await self._stored())
            self.leader = True
            log.info("capacity: this replica decides the desired replicas")
        document = await self.plan()
        if not self.leader:  # lost the lead while acting: the new leader's document stands
            return
        await self.store.put_document(DECISIONS_DOC, orjson.dumps(document))
        self.latest = document

    async def _hold_lead(self) -> bool:
        """Take or renew the lead for the next ``LEAD_INTERVALS`` intervals."""
        return await self.store.try_lock(LOCK, self.replica, self.config.capacity.interval_s * LEAD_INTERVALS)

    async def _stored(self) -> dict[str, Any] | None:
        return await read_json_dict(self.store, DECISIONS_DOC)

    def _resume(self, document: dict[str, Any] | None) -> None:
        if not document:
            return
        self._decisions.clear()
        self._decisions.extend(document.get("decisions", [])[-MAX_DECISIONS:])
        self._last_action_at = {k: float(v) for k, v in document.get("last_action_at", {}).items()}

    async def desired(self, now: float) -> list[Desired]:
        """Every dedicated backend's desired replicas at ``now`` (reads the store)."""
        config = self.config
        minute = int(now) // MINUTE_S * MINUTE_S
        window = config.capacity.window_minutes
        ahead = max(window, config.advisor.autoscaling.scale_out_lead_min)
        recent = demand_by_backend(
            config, await self.store.aggregates(minute - (window - 1) * MINUTE_S, minute + MINUTE_S)
        )
        then = minute - WEEK_S
        week_ago = demand_by_backend(config, await self.store.aggregates(then, then + ahead * MINUTE_S))
        actuator = config.capacity.actuator
        bounds = (
            (actuator.min_replicas, actuator.max_replicas)
            if actuator is not None
            else (config.advisor.autoscaling.min_replicas, MAX_REPLICAS)
        )
        advice = self.advice()
        return [
            decide(
                name,
                recent=recent.get(name, []),
                week_ago=week_ago.get(name, []),
                capacity=self.capacity(name),
                floor=advice_floor(config, name, advice),
                bounds=bounds,
                provisioned=self.provisioned(name),
            )
            for name in dedicated_backends(config)
        ]

    async def plan(self) -> dict[str, Any]:
        """Decide, act, and return the document every replica serves."""
        now = self.wall()
        backends: list[dict[str, Any]] = []
        for desired in await self.desired(now):
            item = desired.to_json() | {"provisioned": self.provisioned(desired.backend)}
            backends.append(item)
            item["actuator"] = await self._act(desired, now, backends)
        return self._document(now, backends)

    def _document(self, now: float, backends: list[dict[str, Any]]) -> dict[str, Any]:
        config = self.config
        actuator = config.capacity.actuator
        return {
            "object": "capacity",
            "generated_at": round(now, 3),
            "generated_by": self.replica,
            "interval_s": config.capacity.interval_s,
            "window_minutes": config.capacity.window_minutes,
            "actuator": None if actuator is None else public_settings(actuator),
            "backends": backends,
            "decisions": list(self._decisions),
            "last_action_at": dict(self._last_action_at),
        }

    async def _act(
        self, desired: Desired, now: float, decided: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Let the actuator take its guarded step toward the desired count; what it did (None: no actuator
        for this backend, or no desired count). ``decided``: the document's backends so far."""
        settings = self.config.capacity.actuator
        name = desired.backend
        if settings is None or (settings.backends is not None and name not in settings.backends):
            return None
        if desired.next is None:
            return {"step": "holds: the desired replicas are unknown", "target": None}
        if not self.leader:
            return {"step": "holds: another proxy replica took the lead", "target": None}
        provisioned = self.provisioned(name)
        # A replica asked for now serves after the lead time: act on the next interval's count.
        step = plan_step(
            desired.next,
            provisioned,
            settings=settings,
            last_action_at=self._last_action_at.get(name),
            now=now,
        )
        if step.target is None:
            log.debug("capacity: %s %s", name, step.reason)
            return {"step": step.reason, "target": None}
        # Still the leader? (The previous actions took time.) Then store the decision and its cool-down
        # before acting, so a replica that takes the lead after this sees both.
        if not await self._hold_lead():
            self.leader = False
            log.warning("capacity: the lead moved to another replica; %s not acted on here", name)
            return {"step": "holds: another proxy replica took the lead", "target": None}
        action = Action(
            next(self._ids), name, provisioned, step.target, desired.now, desired.next, desired.reasons, now
        )
        self._last_action_at[name] = now
        entry = self._entry(action, step, settings)
        self._decisions.append(entry)
        try:
            await self.store.put_document(DECISIONS_DOC, orjson.dumps(self._document(now, decided)))
        except StoreError as exc:  # unrecorded, it could be repeated by the next leader: not applied
            entry.update(ok=False, outcome=f"failed: not applied, the decision could not be stored: {exc}")
            raise
        entry.update(await self._apply(action, step, settings))
        return {"step": step.reason, "target": step.target}

    @staticmethod
    def _entry(action: Action, step: Step, settings: Actuator) -> dict[str, Any]:
        """The action's entry in the decision log, before it is applied."""
        return {
            "id": action.id,
            "at": round(action.at, 3),
            "backend": action.backend,
            "from": action.provisioned,
            "to": action.target,
            "desired": {"now": action.desired_now, "next": action.desired_next},
            "reason": step.reason,
            "kind": settings.kind,
            "dry_run": settings.dry_run,
            "ok": None,
            "outcome": "pending: being applied",
        }

    async def _apply(self, action: Action, step: Step, settings: Actuator) -> dict[str, Any]:
        """Apply one action (or not, in a dry run); how it went, for its entry in the decision log."""
        if settings.dry_run:
            log.info("capacity: %s would %s [dry run]", action.backend, step.reason)
            return {"ok": None, "outcome": "dry run: not applied"}
        outcome = await actuation_for(settings, self.webhook, wall=self.wall).apply(action)
        if not outcome.ok:
            log.warning("capacity: %s: %s %s", action.backend, step.reason, outcome.detail)
            return {"ok": False, "outcome": outcome.detail}
        backend = self.config.backends.get(action.backend)
        try:
            await publish_replicas(
                self.store,
                action.backend,
                action.target,
                config_replicas=backend.replicas if backend is not None else None,
                by=self.replica,
                source="actuator",
                at=action.at,
            )
        except StoreError as exc:
            # Counted nowhere: a count this replica alone held would be reverted at its next beat.
            log.warning("capacity: %s: applied, but the count could not be shared: %s", action.backend, exc)
            return {"ok": False, "outcome": f"failed: {outcome.detail}, but not counted: {exc.message}"}
        self.apply(action.backend, action.target)
        log.info("capacity: %s: %s (%s)", action.backend, step.reason, outcome.detail)
        return {"ok": True, "outcome": outcome.detail}
