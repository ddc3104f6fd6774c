"""Virtual keys: the bearer key a client sends → the tenant it acts for and the models it may use.

Keys come from the config file (looked up by their secret) and from the admin API (kept in the store as a
SHA-256 of the secret, ``managed_keys.py``; looked up by that hash). Upstream secrets never leave the
proxy; a virtual key is never echoed back, not even masked.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from tokenyard.admission.budget_settings import Budget
from tokenyard.config import KeyConfig
from tokenyard.errors import AuthenticationFailed

Priority = Literal["high", "normal", "low"]

OPEN_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant, and the models its key may use (None: all)."""

    tenant: str
    models: frozenset[str] | None
    key_name: str = ""
    mode: Literal["realtime", "async"] | None = None  # the key's policy (classification)
    deadline_s: float | None = None  # its async jobs' deadline
    team: str | None = None
    budgets: tuple[Budget, ...] = ()  # the key's own (its tenant's and team's are in the config)
    rpm: int | None = None  # the key's requests a minute, across every replica
    tpm: int | None = None  # ...and tokens a minute (prompt estimate + output cap, as backends count them)
    priority: Priority = "normal"  # who leaves a dedicated backend near its cap for per-token ones first

    @property
    def rated(self) -> bool:
        """Whether the key has a rate limit of its own."""
        return self.rpm is not None or self.tpm is not None

    def may_use(self, model: str) -> bool:
        """Whether this key may call ``model``."""
        return self.models is None or model in self.models


class StoredKeys:
    """The keys made through the admin API, as the key ring looks them up: the SHA-256 of each secret that
    may work → (who it is, until when it works (unix s, None: no end), why it stops then)."""

    __slots__ = ("by_hash", "by_id")

    def __init__(
        self,
        by_hash: Mapping[str, tuple[Principal, float | None, str]],
        by_id: Mapping[str, Principal] | None = None,
    ) -> None:
        self.by_hash = by_hash
        self.by_id = by_id or {}  # every key, revoked too: its jobs still in the queue are billed to it


NO_STORED_KEYS = StoredKeys({})


def secret_hash(secret: str) -> str:
    """What the store keeps of a key's secret. A plain SHA-256 is enough: the secrets it makes are 256
    random bits, so a slow hash would gain nothing (GitHub's and Stripe's token stores do the same)."""
    return hashlib.sha256(secret.encode()).hexdigest()


_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class KeyRing:
    """Looks up the principal behind an ``Authorization`` header value."""

    __slots__ = ("_admin_open", "_by_name", "_by_secret", "_open", "_wall", "stored")

    def __init__(
        self,
        keys: dict[str, KeyConfig],
        *,
        loopback: bool = True,
        admin_key: bool = False,
        stored: StoredKeys = NO_STORED_KEYS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._by_secret = {
            key.key.get_secret_value(): Principal(
                key.tenant or name,
                frozenset(key.models) if key.models is not None else None,
                name,
                key.mode,
                key.deadline_s,
                key.team,
                tuple(key.budgets),
                key.rpm,
                key.tpm,
                key.priority,
            )
            for name, key in keys.items()
        }
        self._by_name = {principal.key_name: principal for principal in self._by_secret.values()}
        # No keys in the config, on loopback: the proxy is open until a key is made through the admin API.
        self._open = Principal(OPEN_TENANT, None) if not keys and loopback else None
        self._admin_open = self._open is not None and not admin_key
        self.stored = stored  # swapped whole when another replica (or this one) changes a key
        self._wall = wall

    @property
    def is_open(self) -> bool:
        """Whether any bearer key (or none) is accepted."""
        return self._open is not None and not self.stored.by_hash

    @property
    def admin_open(self) -> bool:
        """Whether the admin API is open too: no keys and no admin key in the config, loopback only (it stays
        open when keys are made through it, or nobody could manage them)."""
        return self._admin_open

    def named(self, key_name: str) -> Principal | None:
        """The principal of a key by its name in the config file or its id (its async jobs are billed to
        it after the request is gone); the open principal for the open proxy's jobs."""
        if not key_name:
            return self._open
        return self._by_name.get(key_name) or self.stored.by_id.get(key_name)

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal for a raw ``Authorization`` header; ``AuthenticationFailed`` if there is none."""
        if self._open is not None and not self.stored.by_hash:
            return self._open
        if not authorization:
            raise AuthenticationFailed(_MISSING_KEY)
        scheme, _, secret = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationFailed("Incorrect API key provided.")
        secret = secret.strip()
        principal = self._by_secret.get(secret)
        if principal is None:
            principal = self._stored_principal(secret)
        return principal

    def _stored_principal(self, secret: str) -> Principal:
        """A key made through the admin API, if ``secret`` is one that works now."""
        found = self.stored.by_hash.get(secret_hash(secret)) if self.stored.by_hash else None
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        principal, until, why = found
        if until is not None and self._wall() >= until:
            # A rotated-out secret reads as any wrong one; an expired key is told so.
            raise AuthenticationFailed(
                "This API key has expired." if why == "expired" else "Incorrect API key provided."
            )
        return principal
