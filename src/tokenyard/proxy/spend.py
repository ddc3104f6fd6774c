"""Spend control on the request path: budgets that hold across replicas.

A real-time request of a key with a budget (its own, its tenant's or its team's) reserves its worst case
before it runs — the prompt estimate plus its output cap at the dearest price of the deployments it may
use — in one atomic step over every budget it counts against (one store round trip; nothing for keys with
no budget). After the answer the reservation is settled to what the request cost, off the request path.

Async work reserves when it is accepted, the same way. A queued request (async by policy, or sent down the
async track by a spent budget) reserves its worst case on any path it may take until its deadline (plus
``reservation_ttl_s``) under its request id, which its answer — charged at the price it ran at — settles.
A batch (Batch API, Message Batches) reserves the sum of its lines' worst cases under ``batch:<id>``
until its window ends (plus ``reservation_ttl_s``); each line's answer is charged and draws that hold
down by what it cost (never below 0), and what is left is let go when the batch ends. Only a hard budget
that rejects refuses async work; one that says ``async`` counts it (its refused requests go there).

The bound, with any number of replicas and any concurrency: a hard budget that rejects is passed only by
what work already admitted spends beyond what it reserved (a prompt the estimate undercounted, a dedicated
backend whose GPU cost per token rose while it ran, a batch whose lines together cost more than its
hold), and by the lines of a cancelled batch that were still running when it was cancelled (charged
after its hold is let go). A budget that says ``async`` counts the async work it sends there but never
refuses it, so async work alone can take it past its limit. (For a moment the count can also be short by
a batch's last answers: their charge is on its way while the batch ends and lets go of its hold.)

What a dedicated backend's request costs its budgets is its share of GPU cost as it accrues: its tokens at
the backend's GPU cost per token over the last hour, as the usage API attributes it hour by hour. Before
the backend has served anything in that hour, a request is charged the slot it held: its time at one
``max_concurrency`` share of a replica's GPU-hour price. A dedicated token is never free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import orjson

from tokenyard.admission.auth import Principal
from tokenyard.admission.budgets import (
    NUSD_PER_USD,
    BudgetLine,
    Span,
    describe_usd,
    has_budgets,
    iso,
    lines_for,
    pusd_to_nusd,
    span,
)
from tokenyard.errors import BudgetExhausted, StoreError, StoreUnavailable
from tokenyard.live import LiveConfig
from tokenyard.meter.model import UsageRecord
from tokenyard.meter.pricing import gpu_hour_pusd
from tokenyard.meter.store import UsageStore
from tokenyard.proxy.backends import Backend
from tokenyard.stores.protocols import BudgetHold, BudgetStore, Reservation, Reserved, Settlement

log = logging.getLogger("tokenyard.budgets")
A = TypeVar("A")
R = TypeVar("R")

H_REMAINING: Final = b"x-tokenyard-budget-remaining-usd"
H_RESET: Final = b"x-tokenyard-budget-reset"
BATCH_HOLD: Final = "batch:"  # a batch's reservation: this and the batch's id
RATE_WINDOW_S: Final = 3600  # a dedicated backend's GPU cost per token is taken over the last hour
RATE_REFRESH_S: Final = 60.0
_SETTLE_CLOSE_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request let through: what it holds on which budgets, and the headers that say what is left."""

    holds: tuple[BudgetHold, ...]  # empty: the store was away (when_store_down: serve); nothing held
    reservation: str
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class OverBudget:
    """A request a hard budget refused: which one, what it has counted, and when it next lets go."""

    line: BudgetLine
    counted_nusd: int  # settled spend and what requests in flight hold, this one not included
    resets_at: int
    headers: list[tuple[bytes, bytes]]
    asked_nusd: int = 0  # what this request would have held (0: none was asked, the budget is spent)

    def error(self, asking: str = "this request") -> BudgetExhausted:
        """The 429 a client gets (OpenAI's ``insufficient_quota``), naming the budget and its reset."""
        line = self.line
        left = line.limit_nusd - self.counted_nusd
        state = (
            "is spent"
            if left <= 0
            else f"has {describe_usd(left)} left (requests in flight included), less than {asking} may "
            f"cost ({describe_usd(self.asked_nusd)})"
        )
        return BudgetExhausted(
            f"Budget exhausted: {line.holder}'s {line.budget.window} budget of "
            f"{describe_usd(line.limit_nusd)} {state}; it resets at {iso(self.resets_at)}."
        )


class DedicatedRates:
    """Each dedicated backend's GPU cost per token over the last hour, read from the usage store every
    minute (off the request path), as the usage API attributes GPU cost: by tokens served."""

    def __init__(
        self, store: UsageStore | None, backends: Mapping[str, Backend], *, wall: Callable[[], float]
    ) -> None:
        self.store = store
        self.dedicated = {name: b for name, b in backends.items() if b.config.kind == "dedicated"}
        self.wall = wall
        self.pusd_per_token: dict[str, int] = {}  # absent: it served nothing in the last hour

    async def refresh(self) -> None:
        """Read the last hour's GPU cost and tokens of every dedicated backend."""
        if self.store is None or not self.dedicated:
            return
        end = (int(self.wall()) // 60 + 1) * 60
        start = end - RATE_WINDOW_S
        tokens = dict.fromkeys(self.dedicated, 0)
        for key, fields in await self.store.aggregates(start, end):
            if key.backend in tokens:
                tokens[key.backend] += fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0)
        cost = dict.fromkeys(self.dedicated, 0)
        for gpu_key, fields in await self.store.gpu(start, end):
            if gpu_key.backend in cost:
                cost[gpu_key.backend] += fields.get("cost_pusd", 0)
        self.pusd_per_token = {name: -(-cost[name] // n) for name, n in tokens.items() if n > 0}

    async def run(self) -> None:
        """Refresh every minute until cancelled; a store that is away leaves the last rates in force."""
        while True:
            with contextlib.suppress(StoreError):
                await self.refresh()
            await asyncio.sleep(RATE_REFRESH_S)

    def slot_pusd_per_s(self, backend: Backend) -> int:
        """What one of a replica's ``max_concurrency`` slots costs a second."""
        config = backend.config
        replica_hour = gpu_hour_pusd(config) * (config.gpus_per_replica or 1)
        return replica_hour // (3600 * max(1, config.max_concurrency or 1))

    def cost_pusd(self, record: UsageRecord, backend: Backend | None) -> int:
        """What a request cost its budgets: its metered cost, or a dedicated backend's share."""
        if backend is None or backend.config.kind != "dedicated":
            return record.cost_pusd
        rate = self.pusd_per_token.get(backend.name)
        if rate is not None:
            return (record.prompt_tokens + record.completion_tokens) * rate
        return record.latency_ms * self.slot_pusd_per_s(backend) // 1000


class Coalesced(Generic[A, R]):
    """One round trip at a time: calls made while one is on its way wait for it, then go together in the
    next. At low load every call goes at once (nothing waits on a timer); under load, many share a trip."""

    __slots__ = ("_drainer", "_pending", "_send")

    def __init__(self, send: Callable[[list[A]], Awaitable[list[R]]]) -> None:
        self._send = send  # one answer per argument, in order
        self._pending: list[tuple[A, asyncio.Future[R]]] = []
        self._drainer: asyncio.Future[None] | None = None

    async def call(self, argument: A) -> R:
        """``send([argument, ...])``'s answer for ``argument``."""
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((argument, answer))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await answer

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                answers = await self._send([argument for argument, _ in batch])
            except StoreError as exc:  # every caller of the batch is told; the next batch tries again
                _fail(batch, exc)
                continue
            except BaseException as exc:  # cancelled, or a bug: nobody is left waiting for an answer
                _fail(batch + self._pending, exc)
                self._pending = []
                raise
            for (_, waiting), value in zip(batch, answers, strict=True):
                if not waiting.done():  # a caller that left (cancelled) needs no answer
                    waiting.set_result(value)


def _fail(waiting: Sequence[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, answer in waiting:
        if not answer.done():
            if isinstance(exc, asyncio.CancelledError):
                answer.cancel()
            else:
                answer.set_exception(exc)


class SpendGate:
    """Reserves before, settles after; built once per process, it reads the budgets in force per request."""

    def __init__(
        self,
        store: BudgetStore | None,
        live: LiveConfig,
        backends: Mapping[str, Backend],
        rates: DedicatedRates,
        *,
        wall: Callable[[], float],
    ) -> None:
        self.store = store  # None: no meter store, so nothing to count budgets in (they are not enforced)
        self.live = live
        self.backends = backends
        self.rates = rates
        self.wall = wall
        # Requests arriving while a reservation is on its way go together in the next round trip; an idle
        # gate adds no wait. Settlements go the same way, off the request path.
        self._reserving: Coalesced[Reservation, Reserved] = Coalesced(self._reserve_many)
        self._to_settle: list[Settlement] = []
        self._draining: asyncio.Future[None] | None = None
        self._store_away = False  # said once per outage (when_store_down: serve)

    def applies(self, principal: Principal) -> bool:
        """Whether any budget counts ``principal``'s requests (the request path's one check for them)."""
        return has_budgets(principal, self.live.config.budgets)

    def lines(self, principal: Principal) -> tuple[BudgetLine, ...]:
        """Every budget ``principal``'s requests count against (empty, at the cost of a few lookups, when
        there is none or no store to count them in)."""
        config = self.live.config.budgets
        if self.store is None or not has_budgets(principal, config):
            return ()
        return lines_for(principal, config)

    def worst_case_pusd(self, backends: Sequence[Backend], body_bytes: int, obj: Mapping[str, Any]) -> int:
        """The most a request may cost: ~4 bytes a prompt token, its output cap (or the configured default),
        at the dearest price of the deployments it may use."""
        cap = obj.get("max_completion_tokens") or obj.get("max_tokens") or obj.get("max_output_tokens")
        output = cap if isinstance(cap, int) and cap > 0 else self.live.config.budgets.default_max_tokens
        prompt = body_bytes // 4 + 1
        worst = 0
        for backend in backends:
            if backend.config.kind == "dedicated":
                rate = self.rates.pusd_per_token.get(backend.name, 0)
                cost = (prompt + output) * rate
            else:
                cost = prompt * backend.prices.input_pusd + output * backend.prices.output_pusd
            worst = max(worst, cost)
        return worst

    def queued_worst_case_pusd(self, model: str, body_bytes: int, obj: Mapping[str, Any]) -> int:
        """The most an async job of ``model`` may cost: as ``worst_case_pusd``, on any path it may take (its
        model's deployments, in real time at the latest, and its provider batch backend)."""
        config = self.live.config.models.get(model)
        if config is None:
            return 0
        names = [*config.deployments, *([config.batch] if config.batch else [])]
        return self.worst_case_pusd([self.backends[n] for n in names if n in self.backends], body_bytes, obj)

    async def admit(
        self,
        lines: tuple[BudgetLine, ...],
        reservation: str,
        worst_pusd: int,
        *,
        lasts_s: float = 0.0,
        queued: bool = False,
    ) -> Admitted | OverBudget:
        """Reserve ``worst_pusd`` on every budget of ``lines``, or say which hard one refused.

        It is held for ``lasts_s`` (how long the work may take before it is answered) and
        ``reservation_ttl_s`` more; unsettled by then, it lets go. ``queued``: async work, which only a hard
        budget that rejects refuses (one that says ``async`` counts it: its refused requests go there)."""
        assert self.store is not None  # lines() is empty without one
        now = self.wall()
        spans = [span(line.budget, now) for line in lines]
        holds = tuple(_hold(line, s, queued=queued) for line, s in zip(lines, spans, strict=True))
        amount = max(1, pusd_to_nusd(worst_pusd))  # never 0: a spent budget refuses every request
        config = self.live.config.budgets
        try:
            reserved = await self._reserving.call(
                (holds, reservation, amount, now + lasts_s + config.reservation_ttl_s)
            )
        except StoreError as exc:
            self._store_down(exc)
            return Admitted((), reservation, [])
        except asyncio.CancelledError:  # the client left: if it was taken, let it go now, not at its time
            self._to_settle.append(Settlement(holds, reservation, 0))
            self._drain_settlements()
            raise
        if self._store_away:
            log.info("budgets: the store answers again; budgets are checked")
            self._store_away = False
        before = [count - amount if reserved.taken else count for count in reserved.counted_nusd]
        headers = _headers(lines, spans, before)
        if reserved.refused_by is not None:
            i = reserved.refused_by
            return OverBudget(lines[i], before[i], spans[i].resets_at, headers, amount)
        return Admitted(holds, reservation, headers)

    def settle(self, admitted: Admitted, record: UsageRecord) -> None:
        """Replace the reservation with what the request cost (in the background)."""
        if admitted.holds:
            spent = self.rates.cost_pusd(record, self.backends.get(record.backend))
            self._settle_later(Settlement(admitted.holds, admitted.reservation, pusd_to_nusd(spent)))

    def release(self, admitted: Admitted) -> None:
        """Let go of a reservation whose work will not run (a job the queue did not take), off the path."""
        if admitted.holds:
            self._settle_later(Settlement(admitted.holds, admitted.reservation, 0))

    def charge(self, principal: Principal | None, record: UsageRecord, *, draw_from: str = "") -> None:
        """Count an async job's answer against its key's budgets (in the background): it settles the
        reservation made under its request id (a queued request's), or draws ``draw_from`` down by what it
        cost (its batch's)."""
        holds = self._holds_now(principal)
        if holds:
            spent = pusd_to_nusd(self.rates.cost_pusd(record, self.backends.get(record.backend)))
            if draw_from:
                self._settle_later(Settlement(holds, draw_from, spent, draw_down=True))
            else:
                self._settle_later(Settlement(holds, record.request_id, spent))

    async def hold_batch(
        self, who: Principal, batch_id: str, lines: Sequence[tuple[str, bytes]], ends_at: float
    ) -> str:
        """Reserve a new batch's worst case — the sum of its lines' (model and request body each) — on
        every budget of ``who`` until ``ends_at`` and ``reservation_ttl_s`` more; the reservation its lines'
        answers draw down ("": nothing held). Raises ``BudgetExhausted`` when a hard budget that rejects
        cannot hold it."""
        budget_lines = self.lines(who)
        if not budget_lines:
            return ""
        worst_pusd = sum(self.queued_worst_case_pusd(m, len(body), orjson.loads(body)) for m, body in lines)
        reservation = BATCH_HOLD + batch_id
        checked = await self.admit(
            budget_lines, reservation, worst_pusd, lasts_s=max(0.0, ends_at - self.wall()), queued=True
        )
        if isinstance(checked, OverBudget):
            raise checked.error("this batch")
        return reservation if checked.holds else ""

    def let_go(self, key_id: str, reservation: str) -> None:
        """Let go of what is left of a reservation held for ``key_id``'s async work (a batch that ended, a
        job cancelled before it ran), in the background."""
        holds = self._holds_now(self.live.current.keys.named(key_id))
        if holds:
            self._settle_later(Settlement(holds, reservation, 0))

    def _holds_now(self, principal: Principal | None) -> tuple[BudgetHold, ...]:
        """Every budget of ``principal`` as a settlement touches it now (none: no key, budget or store)."""
        if principal is None:
            return ()
        now = self.wall()
        return tuple(_hold(line, span(line.budget, now)) for line in self.lines(principal))

    def _store_down(self, exc: StoreError) -> None:
        """Budgets could not be read: refuse (``StoreUnavailable``) or go on, as ``when_store_down`` says."""
        if self.live.config.budgets.when_store_down == "refuse":
            raise StoreUnavailable(
                "Budgets cannot be checked now (the store is unavailable); retry in a moment."
            ) from exc
        if not self._store_away:  # once per outage, not once per request
            log.warning("budgets: not checked while the store is away (%s); requests are served", exc)
        self._store_away = True

    async def _reserve_many(self, asks: list[Reservation]) -> list[Reserved]:
        assert self.store is not None
        return await self.store.reserve_many(asks, self.wall())

    def _settle_later(self, settlement: Settlement) -> None:
        self._to_settle.append(settlement)
        self._drain_settlements()

    def _drain_settlements(self) -> None:
        """Send the settlements waiting, in one round trip per batch, unless a drain is under way already
        (it takes these too)."""
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._settle_waiting())

    async def _settle_waiting(self) -> None:
        assert self.store is not None
        while self._to_settle:
            batch, self._to_settle = self._to_settle, []
            try:
                await self.store.settle_many(batch, self.wall())
            except StoreError as exc:
                # Each reservation lets go at its time; the spend is in the meter, not in the budgets' count.
                log.warning("budgets: %d settlement(s) not written (%s)", len(batch), exc)

    async def aclose(self) -> None:
        """Wait (a little) for the settlements still under way."""
        if self._draining is not None and not self._draining.done():
            await asyncio.wait({self._draining}, timeout=_SETTLE_CLOSE_TIMEOUT_S)


def _hold(line: BudgetLine, now_span: Span, *, queued: bool = False) -> BudgetHold:
    """``line`` as the store touches it now; for async work (``queued``) only one that rejects is hard."""
    budget = line.budget
    hard = budget.enforcement == "hard" and not (queued and budget.on_exceeded == "async")
    return BudgetHold(line.id, line.limit_nusd, now_span.oldest, now_span.bucket, now_span.ttl_s, hard)


def _headers(
    lines: Sequence[BudgetLine], spans: Sequence[Span], counted: Sequence[int]
) -> list[tuple[bytes, bytes]]:
    """What is left of the tightest budget, and when it next lets go of spend."""
    left = [(line.limit_nusd - n, s.resets_at) for line, s, n in zip(lines, spans, counted, strict=True)]
    remaining, resets_at = min(left)
    usd = max(0, remaining) / NUSD_PER_USD
    return [(H_REMAINING, f"{usd:.6f}".encode()), (H_RESET, iso(resets_at).encode())]
