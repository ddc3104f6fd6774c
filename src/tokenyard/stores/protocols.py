"""The store protocols that speak no meter or queue types: a store's lifecycle, coordination, documents.

One small protocol per responsibility (huey's storage sections): a consumer asks for the ones it uses and
any backend that does them will do. The meter's usage protocol lives in ``meter/store.py``, the queue's in
``queue/store.py``. Implementations raise ``StoreUnavailable`` when they cannot be reached and
``StoreError`` when the store refuses what it is asked; each passes the contract tests of every protocol it
implements (``tests/meter/test_store_contract.py``, ``tests/queue/test_queue_contract.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Lifecycle(Protocol):
    """What every store does besides its job: answer, and let go of what it holds."""

    async def ping(self) -> None:
        """Return if the store answers; raise ``StoreUnavailable`` if not."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and files."""
        ...


class Coordination(Protocol):
    """Work shared between proxy replicas: locks for singleton work, and who is alive."""

    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the lock ``name`` for ``owner`` until ``ttl_s`` from now, or renew it if ``owner`` holds it.

        Returns False while someone else holds it. A holder that dies loses it when the time runs out, so
        singleton work (the advisor's evaluation) moves to another replica by itself.
        """
        ...

    async def release_lock(self, name: str, owner: str) -> None:
        """Give the lock up, if ``owner`` holds it (a lock that expired and moved on is left alone)."""
        ...

    async def heartbeat(self, member: str, ttl_s: float) -> int:
        """Say ``member`` (a proxy replica) is alive for ``ttl_s`` more; how many members are alive now.

        A replica that stops beating drops out when its time runs out; ``ttl_s`` 0 leaves at once.
        """
        ...


class DocumentStore(Protocol):
    """Small named documents every replica reads (the latest advice, the advisor's state, a reload note)."""

    async def put_document(self, name: str, body: bytes) -> None:
        """Keep a small named document, replacing any before."""
        ...

    async def get_document(self, name: str) -> bytes | None:
        """A document kept by ``put_document``, or None."""
        ...


class KeyStore(Protocol):
    """Virtual keys made through the admin API, every replica reading them (``admission/managed_keys.py``).

    A key's record is an opaque JSON document under its id; it never holds a secret in clear. Every change
    moves one version number, so a replica learns whether anything changed with one small read."""

    async def put_key(self, key_id: str, body: bytes, *, expected: bytes | None) -> bool:
        """Keep ``body`` as the record of ``key_id`` if the record stored now is ``expected`` (None: there
        is none yet), and move the version on; False (nothing written) if another write came first."""
        ...

    async def get_key(self, key_id: str) -> bytes | None:
        """The record of ``key_id``, or None."""
        ...

    async def all_keys(self) -> tuple[int, list[bytes]]:
        """The version and every record, read together (a write between them cannot be half seen)."""
        ...

    async def keys_version(self) -> int:
        """The version: 0 before any key was kept, then one more with every write."""
        ...


@dataclass(frozen=True, slots=True)
class BudgetHold:
    """One budget as a reservation or a settlement touches it: where its spend is and what it counts now.

    Spend is kept per bucket (unix s); the budget counts the buckets from ``oldest`` on, plus what the
    requests in flight have reserved."""

    budget_id: str
    limit_nusd: int
    oldest: int  # the first bucket counted; older ones are dropped
    bucket: int  # where a settlement's spend lands
    ttl_s: int  # how long a bucket is kept
    hard: bool  # whether a reservation past the limit is refused


@dataclass(frozen=True, slots=True)
class Reserved:
    """What a reservation found: whether it was taken, which budget refused it, and each budget's count
    (settled spend plus every reservation held, this one included if it was taken), in nano-USD."""

    taken: bool
    refused_by: int | None  # the index of the first hard budget it did not fit, if any
    counted_nusd: list[int]


# (budgets, reservation id, nano-USD, until)
Reservation = tuple[Sequence[BudgetHold], str, int, float]


class Settlement(NamedTuple):
    """What a request (or an async job, or a batch's line) spent, and the reservation it settles."""

    holds: Sequence[BudgetHold]
    reservation: str
    spent_nusd: int
    # False: the reservation is released (a request's own). True: it shrinks by what was spent, never below
    # 0, and stays held for the rest of the work it stands for (a batch's lines, answered one by one).
    draw_down: bool = False


class BudgetStore(Protocol):
    """Budgets shared by every replica: reserve a request's worst case before it runs, settle it to what it
    cost after; a batch reserves its lines' worst case at once and each answered line draws it down. Each
    call is one atomic step over all the budgets a request counts against."""

    async def reserve_many(self, asks: Sequence[Reservation], now: float) -> list[Reserved]:
        """Each of ``asks`` in turn, in one round trip (requests that arrived together): reserve its
        amount on every budget of its holds unless a hard one would pass its limit (counted + amount >
        limit: a budget whose count has reached its limit takes nothing more).

        Either every budget of an ask holds it (until the ask's ``until``, unix s: a reservation never
        settled lets go then) or none does. Reservations held past their ``until`` at ``now`` are dropped
        first."""
        ...

    async def settle_many(self, settlements: Sequence[Settlement], now: float) -> list[int]:
        """Each of ``settlements`` in turn, in one round trip: release its reservation, if held (or, to
        draw it down, take what was spent off its amount, never below 0, and keep it held until its time),
        and add what it spent to each of its budgets' bucket. Spend with no reservation (one that lapsed, or
        none was made) is added all the same. The budgets' counts after, all in a row."""
        ...

    async def counted(self, holds: Sequence[BudgetHold], now: float) -> list[int]:
        """Each budget's count now: settled spend in its window plus the reservations held."""
        ...


class CoordinatedDocuments(Coordination, DocumentStore, Protocol):
    """Coordination and documents together: what cross-replica work asks of a store (the advisor's loop,
    membership and its reload note, the dashboard's shared salt)."""
