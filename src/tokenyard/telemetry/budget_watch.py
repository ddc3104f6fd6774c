"""Every budget in force, seen: each one's count against its limit, read off the request path every 15 s,
and a notice the first time its spend reaches each of its thresholds in a window.

Every replica runs the watch (it only reads: one ``counted`` call for every budget) and serves what it last
read: ``GET /admin/budgets``, the ``tokenyard_budget_*`` gauges of ``/metrics``, the dashboard's bars. The
budgets are the ones the request path counts (``lines_for``'s ids): each config key's and each admin-made
key's (revoked ones left out), and each tenant's and team's once.

A threshold is told once per window across all replicas: the one that takes the store's lock named for the
budget, its window and the threshold (``Coordination.try_lock``, held as long as the window) writes the log
line (``tokenyard.budgets``: a warning from 1.0 on) and POSTs to ``budgets.alerts.url``, signed like job
callbacks (``wire.signatures``); the others find the lock taken. A calendar window's lock is named by its
start, so the next day or month tells again; a rolling window has no start, so its lock lasts the window's
length: told at most once in that long. When spend passes several thresholds between two checks, one
notice names the highest. A POST runs in the background, within ``alerts.timeout_s``: a slow or failing
receiver never holds up the watch, and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, get_args

import orjson

from tokenyard.admission.auth import Principal
from tokenyard.admission.budget_settings import BudgetAlerts, BudgetsConfig, Window
from tokenyard.admission.budgets import (
    HOUR_S,
    NUSD_PER_USD,
    BudgetLine,
    Span,
    describe_usd,
    iso,
    lines_for,
    span,
)
from tokenyard.errors import StoreError, UpstreamError, UpstreamTimeout
from tokenyard.live import LiveConfig, Settings
from tokenyard.stores.protocols import BudgetHold, BudgetStore, Coordination
from tokenyard.wire import asgi as wire
from tokenyard.wire.signatures import H_SIGNATURE, sign

log = logging.getLogger("tokenyard.budgets")

CHECK_S: Final = 15.0
_ROLLING_S: Final = {"1d": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
_KIND_ORDER: Final = {"tenant": 0, "team": 1, "key": 2}  # the broadest first
_WINDOW_ORDER: Final = {window: i for i, window in enumerate(get_args(Window))}
_NO_HOLDERS: Final = BudgetsConfig()  # a key's own budgets alone: its tenant's and team's come once each
_DRAIN_TIMEOUT_S: Final = 5.0


class WatchedStore(BudgetStore, Coordination, Protocol):
    """What the watch asks of a store: budgets' counts, and a lock as a once-flag (the meter's store)."""


class Poster(Protocol):
    """Something that POSTs (``adapters.webhook.WebhookSender``; telemetry speaks no HTTP itself)."""

    async def post(self, url: str, payload: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        """POST ``payload``; the status that answered (``UpstreamError`` / ``UpstreamTimeout`` if none)."""
        ...


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget as last read: its count (settled spend in its window plus reservations held) and window."""

    line: BudgetLine
    span: Span
    counted_nusd: int

    @property
    def holder_kind(self) -> str:
        return self.line.holder.partition(" ")[0]

    @property
    def holder_name(self) -> str:
        return self.line.holder.partition(" ")[2]

    @property
    def share(self) -> float:
        """The count as a share of the limit (1.0: spent)."""
        return self.counted_nusd / max(1, self.line.limit_nusd)  # a limit below a nano-dollar is 0

    @property
    def remaining_nusd(self) -> int:
        return max(0, self.line.limit_nusd - self.counted_nusd)

    def to_json(self) -> dict[str, Any]:
        """The budget as ``/admin/budgets`` and the alert's body show it."""
        budget = self.line.budget
        return {
            "id": self.line.id,
            "holder": {"kind": self.holder_kind, "name": self.holder_name},
            "window": budget.window,
            "time_zone": budget.time_zone,
            "limit_usd": self.line.limit_nusd / NUSD_PER_USD,
            "counted_usd": self.counted_nusd / NUSD_PER_USD,
            "remaining_usd": self.remaining_nusd / NUSD_PER_USD,
            "share": self.share,
            "resets_at": iso(self.span.resets_at),
            "enforcement": budget.enforcement,
            "on_exceeded": budget.on_exceeded,
            "thresholds": list(budget.thresholds),
        }


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """Every budget in force as one check read them."""

    checked_at: float  # unix s
    budgets: tuple[BudgetState, ...]


def budgets_in_force(settings: Settings) -> list[BudgetLine]:
    """Every budget the request path counts: each key's (config file and admin API, revoked ones left out)
    and each tenant's and team's, once; tenants first, then teams, then keys, by name and window."""
    config = settings.config.budgets
    ring = settings.keys
    keys = [ring.named(name) for name in settings.config.keys]
    keys += [principal for principal, _until, _why in ring.stored.by_hash.values()]  # not revoked
    found: dict[str, BudgetLine] = {}
    for principal in keys:
        if principal is not None and principal.budgets:
            found.update((line.id, line) for line in lines_for(principal, _NO_HOLDERS))
    for tenant in config.tenants:
        found.update((line.id, line) for line in lines_for(Principal(tenant, None), config))
    teams_only = config.model_copy(update={"tenants": {}})
    for team in config.teams:
        found.update((line.id, line) for line in lines_for(Principal("", None, team=team), teams_only))
    return sorted(found.values(), key=_order)


def _order(line: BudgetLine) -> tuple[int, str, int]:
    kind, _, name = line.holder.partition(" ")
    return _KIND_ORDER.get(kind, 9), name, _WINDOW_ORDER.get(line.budget.window, 9)


@dataclass(frozen=True, slots=True)
class _Told:
    """A once-flag this replica settled: no need to ask the store again until ``until``."""

    until: float
    release: bool  # taken here, for a calendar window: given back when the window is long gone


class BudgetWatch:
    """Reads every budget's count (``check``; ``run`` every ``interval_s``) and tells when one reaches a
    threshold. Built once per process; with no store there is nothing to count (``enabled`` False)."""

    def __init__(
        self,
        store: WatchedStore | None,
        live: LiveConfig,
        webhook: Poster | None,
        *,
        replica: str,
        wall: Callable[[], float],
        interval_s: float = CHECK_S,
    ) -> None:
        self.store = store
        self.live = live
        self.webhook = webhook  # None: notices are logged only, whatever budgets.alerts.url says
        self.replica = replica  # the owner of the once-flags this replica takes
        self.wall = wall
        self.interval_s = interval_s
        self.latest: BudgetSnapshot | None = None
        self._told: dict[str, _Told] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether budgets are counted at all (they are in the meter's store)."""
        return self.store is not None

    async def check(self) -> BudgetSnapshot:
        """Read every budget's count in one store call, keep it as ``latest``, and tell of the thresholds
        reached. Raises ``StoreError`` when the store cannot answer (``latest`` stays what it was)."""
        now = self.wall()
        lines = budgets_in_force(self.live.current) if self.store is not None else []
        spans = [span(line.budget, now) for line in lines]
        counted: list[int] = []
        if lines:
            assert self.store is not None
            counted = await self.store.counted(
                [_hold(line, s) for line, s in zip(lines, spans, strict=True)], now
            )
        states = tuple(BudgetState(*row) for row in zip(lines, spans, counted, strict=True))
        snapshot = self.latest = BudgetSnapshot(now, states)
        await self._tell(states, now)
        return snapshot

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled; while the store is away the last counts stay."""
        while True:
            try:
                await self.check()
                if self._failing:
                    log.info("budgets: the store answers again; budgets are watched")
                self._failing = False
            except StoreError as exc:
                if not self._failing:
                    log.warning("budgets: cannot read the store (%s); the counts last read stay", exc)
                self._failing = True
            await asyncio.sleep(self.interval_s)

    async def drain(self, timeout_s: float = _DRAIN_TIMEOUT_S) -> None:
        """Wait (at most ``timeout_s``) for the notices still being POSTed."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout_s)

    async def aclose(self) -> None:
        """Give the notices under way a moment (at shutdown, after the loop stopped)."""
        await self.drain()

    # -- thresholds --------------------------------------------------------------------------------------

    async def _tell(self, states: Sequence[BudgetState], now: float) -> None:
        await self._forget(now)
        alerts = self.live.config.budgets.alerts
        try:
            for state in states:
                reached = sorted((t for t in state.line.budget.thresholds if state.share >= t), reverse=True)
                # The highest first: the replica that takes its flag tells it, and takes the lower ones
                # (told with it). Taking them lowest first, two replicas checking at once could each win
                # one and both tell.
                if reached and await self._take(state, reached[0], now):
                    for lower in reached[1:]:
                        await self._take(state, lower, now)
                    self._notify(state, reached[0], now, alerts)
        except StoreError as exc:  # the rest are asked again at the next check
            log.warning("budgets: thresholds not told now, the store is away (%s)", exc)

    async def _take(self, state: BudgetState, threshold: float, now: float) -> bool:
        """Whether this replica takes the once-flag of ``threshold`` in ``state``'s window (it tells then)."""
        store = self.store
        assert store is not None
        rolling_s = _ROLLING_S.get(state.line.budget.window)
        period = "rolling" if rolling_s is not None else str(state.span.oldest)
        name = f"budget-alert:{state.line.id}:{period}:{threshold:g}"
        if name in self._told:
            return False
        ttl_s = rolling_s if rolling_s is not None else state.span.ttl_s
        taken = await store.try_lock(name, self.replica, ttl_s)
        if rolling_s is not None:
            self._told[name] = _Told(now + rolling_s, False)
        else:  # an hour past the window, so a replica whose clock runs late cannot find it free
            self._told[name] = _Told(state.span.resets_at + HOUR_S, taken)
        return taken

    async def _forget(self, now: float) -> None:
        """Drop the once-flags whose window is over; give back the calendar ones taken here (nobody asks
        for them again), so a store without expiry (SQLite) does not keep them."""
        for name, told in list(self._told.items()):
            if told.until > now:
                continue
            del self._told[name]
            if told.release and self.store is not None:
                with contextlib.suppress(StoreError):
                    await self.store.release_lock(name, self.replica)

    def _notify(self, state: BudgetState, threshold: float, now: float, alerts: BudgetAlerts) -> None:
        """The log line, and the POST if ``alerts.url`` is set (in the background)."""
        line, budget = state.line, state.line.budget
        if budget.enforcement == "soft":
            effect = "soft: counted, not enforced"
        elif threshold >= 1.0:
            effect = "refusing requests" if budget.on_exceeded == "reject" else "sending requests async"
        else:
            effect = f"hard, {budget.on_exceeded} when spent"
        log.log(
            logging.WARNING if threshold >= 1.0 else logging.INFO,
            "budgets: %s's %s budget reached %s of its %s limit (%s counted; %s); it resets at %s",
            line.holder, budget.window, f"{threshold:.0%}", describe_usd(line.limit_nusd),
            describe_usd(state.counted_nusd), effect, iso(state.span.resets_at),
        )  # fmt: skip
        if alerts.url is None or self.webhook is None:
            return
        body = orjson.dumps(
            {"type": "budget.threshold", "budget": state.to_json(), "threshold": threshold, "at": int(now)}
        )
        headers = {"Content-Type": "application/json"}
        if alerts.secret is not None:
            headers[H_SIGNATURE] = sign(alerts.secret.get_secret_value(), body, int(now))
        task = asyncio.ensure_future(
            self._post(self.webhook, alerts.url, body, headers, alerts.timeout_s, line.id)
        )
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @staticmethod
    async def _post(
        webhook: Poster, url: str, body: bytes, headers: dict[str, str], timeout_s: float, budget_id: str
    ) -> None:
        try:
            status = await webhook.post(url, body, headers, timeout_s)
        except UpstreamTimeout:
            log.warning("budgets: %s: the alert was not answered within %g s", budget_id, timeout_s)
            return
        except UpstreamError as exc:
            log.warning("budgets: %s: the alert failed: %s", budget_id, exc.message)
            return
        if status >= 300:
            log.warning("budgets: %s: the alert was answered %d", budget_id, status)


def _hold(line: BudgetLine, now_span: Span) -> BudgetHold:
    """The budget as the store counts it (as the request path names it: ``proxy.spend``)."""
    hard = line.budget.enforcement == "hard"
    return BudgetHold(line.id, line.limit_nusd, now_span.oldest, now_span.bucket, now_span.ttl_s, hard)


class BudgetsApi:
    """``GET /admin/budgets[?fresh=1]`` (admin key): every budget as last read (``fresh``: read now)."""

    def __init__(self, authorize: Callable[[wire.Scope], None], watch: BudgetWatch) -> None:
        self.authorize = authorize
        self.watch = watch

    async def list_budgets(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """Each budget's holder, window, limit, count, what is left, share and reset; checked now if asked
        (``fresh``) or never checked yet. Without a meter store nothing is counted: ``enabled`` false."""
        self.authorize(scope)
        watch = self.watch
        if not watch.enabled:
            await wire.send_json(
                send, 200, {"object": "list", "enabled": False, "data": [], "checked_at": None}
            )
            return
        snapshot = watch.latest
        if snapshot is None or wire.query(scope).get("fresh", "").lower() in ("1", "true", "yes"):
            snapshot = await watch.check()
        await wire.send_json(
            send,
            200,
            {
                "object": "list",
                "enabled": True,
                "data": [state.to_json() for state in snapshot.budgets],
                "checked_at": snapshot.checked_at,
            },
        )
