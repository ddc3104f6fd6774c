"""Virtual keys made through the admin API: what a client may send to change one, and the record kept.

A key's secret is shown once, when it is made (or rotated); the store keeps its SHA-256 and the first few
characters, so keys can be told apart in lists. A rotated key's previous secret keeps working until its
grace period ends. Revoking keeps the record (usage stays attributed to it) and stops the secret at once.

Pure: no I/O and no clock reads; the admin API (``telemetry/keys_api.py``) reads and writes the store.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, StringConstraints, field_validator

from tokenyard.admission.auth import Principal, StoredKeys, secret_hash
from tokenyard.admission.budget_settings import Budget, Budgets, one_per_window

SECRET_PREFIX: Final = "ty-"
PREFIX_SHOWN: Final = 8  # characters of a secret kept in clear: "ty-" and five more
MAX_GRACE_S: Final = 30 * 86400
DEFAULT_GRACE_S: Final = 3600  # a rotation leaves running clients an hour to pick up the new secret

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
UnixSeconds = Annotated[int, Field(gt=0, lt=10_000_000_000, strict=True)]  # before the year 2286
PerMinute = Annotated[int, Field(gt=0, le=100_000_000, strict=True)]


def new_key_id(now: float) -> str:
    """A fresh key id, ``key_`` and 24 hex digits: the microsecond it was made, then 44 random bits, so ids
    sort in the order keys were made (lists are in that order)."""
    return f"key_{int(now * 1_000_000):013x}{secrets.randbits(44):011x}"


def new_secret() -> str:
    """A fresh secret: ``ty-`` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _distinct_models(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError("lists a model more than once")
    return value


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyFields(_Payload):
    """What a key says about its holder, as sent to create one (every field but ``name`` optional)."""

    tenant: Name | None = None  # default: the key's name
    team: Name | None = None
    models: list[Name] | None = None  # None: every model
    mode: Literal["realtime", "async"] | None = None  # its requests' mode unless a request says otherwise
    deadline_s: PositiveFloat | None = None  # its async jobs' deadline
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=16)
    expires_at: UnixSeconds | None = None  # refused from then on
    budgets: Budgets = Field(default_factory=list)
    rpm: PerMinute | None = None  # requests a minute, across every replica
    tpm: PerMinute | None = None  # tokens a minute (prompt estimate + output cap)
    priority: Literal["high", "normal", "low"] = "normal"

    @field_validator("budgets")
    @classmethod
    def _one_per_window(cls, value: list[Budget]) -> list[Budget]:
        return one_per_window(value)

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return _distinct_models(value)


class KeyCreate(KeyFields):
    """``POST /admin/keys``."""

    name: Name


class KeyUpdate(_Payload):
    """``PATCH /admin/keys/{id}``: the fields sent change, ``null`` clears an optional one."""

    name: Name | None = None
    tenant: Name | None = None
    team: Name | None = None
    models: list[Name] | None = None
    mode: Literal["realtime", "async"] | None = None
    deadline_s: PositiveFloat | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    expires_at: UnixSeconds | None = None
    budgets: Budgets | None = None  # the whole list replaced ([] or null: none)
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    priority: Literal["high", "normal", "low"] | None = None

    @field_validator("budgets")
    @classmethod
    def _one_per_window(cls, value: list[Budget] | None) -> list[Budget]:
        return one_per_window(value or [])

    @field_validator("name")
    @classmethod
    def _named(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("a key keeps a name; send one or leave the field out")
        return value

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return _distinct_models(value)


class KeyRotate(_Payload):
    """``POST /admin/keys/{id}/rotate``: how long the old secret keeps working."""

    grace_s: Annotated[int, Field(ge=0, le=MAX_GRACE_S)] = DEFAULT_GRACE_S


class ManagedKey(KeyCreate):
    """A key's record in the store: what it says, and what is kept of its secret."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # a newer tokenyard may have added fields

    id: str
    prefix: str
    secret_sha256: str
    created_at: int
    updated_at: int
    revoked_at: int | None = None
    rotated_at: int | None = None
    previous_sha256: str | None = None  # a rotated-out secret, working until previous_expires_at
    previous_expires_at: int | None = None

    @field_validator("budgets", mode="before")
    @classmethod
    def _known_budget_fields(cls, value: Any) -> Any:
        """A replica still on an older tokenyard (a rolling upgrade) reads a record a newer one wrote without
        the budget fields it does not know yet, and the key keeps working (the API refuses them on input)."""
        if not isinstance(value, list):
            return value
        known = Budget.model_fields.keys()
        return [{k: v for k, v in b.items() if k in known} if isinstance(b, dict) else b for b in value]

    @classmethod
    def made(cls, key_id: str, fields: KeyCreate, secret: str, now: int) -> ManagedKey:
        """A new key's record."""
        return cls(
            **fields.model_dump(),
            id=key_id,
            prefix=secret[:PREFIX_SHOWN],
            secret_sha256=secret_hash(secret),
            created_at=now,
            updated_at=now,
        )

    def updated(self, update: KeyUpdate, now: int) -> ManagedKey:
        """This key with ``update``'s fields (those it sent) changed."""
        changes = update.model_dump(exclude_unset=True)
        for field, empty in (("metadata", {}), ("priority", "normal")):  # null: back to the default
            if field in changes and changes[field] is None:
                changes[field] = empty
        return ManagedKey.model_validate({**self.model_dump(), **changes, "updated_at": now})

    def rotated(self, secret: str, grace_s: int, now: int) -> ManagedKey:
        """This key with a new secret; the current one works ``grace_s`` more (0: stops at once)."""
        return self.model_copy(
            update={
                "prefix": secret[:PREFIX_SHOWN],
                "secret_sha256": secret_hash(secret),
                "previous_sha256": self.secret_sha256 if grace_s else None,
                "previous_expires_at": now + grace_s if grace_s else None,
                "rotated_at": now,
                "updated_at": now,
            }
        )

    def revoked(self, now: int) -> ManagedKey:
        """This key, refused from now on (the record stays: usage is attributed to it)."""
        return self.model_copy(
            update={
                "revoked_at": now,
                "updated_at": now,
                "previous_sha256": None,
                "previous_expires_at": None,
            }
        )

    def principal(self) -> Principal:
        """Who a request with this key acts as."""
        return Principal(
            self.tenant or self.name,
            frozenset(self.models) if self.models is not None else None,
            self.id,
            self.mode,
            self.deadline_s,
            team=self.team,
            budgets=tuple(self.budgets),
            rpm=self.rpm,
            tpm=self.tpm,
            priority=self.priority,
        )

    def public(self, now: float) -> dict[str, Any]:
        """The key as the admin API shows it: no hash, the prefix only."""
        view = self.model_dump(exclude={"secret_sha256", "previous_sha256"})
        view["tenant"] = self.tenant or self.name
        if self.previous_expires_at is not None and self.previous_expires_at <= now:
            view["previous_expires_at"] = None  # the old secret is gone: nothing to say about it
        return {"object": "tokenyard.key", "source": "api", "status": self.status(now), **view}

    def status(self, now: float) -> Literal["active", "expired", "revoked"]:
        """Whether the key works now."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def stored_keys(records: list[ManagedKey]) -> StoredKeys:
    """The table the key ring looks secrets up in: every key not revoked, by the hash of each secret that
    may still work (the current one, and a rotated-out one until its grace ends)."""
    by_hash: dict[str, tuple[Principal, float | None, str]] = {}
    by_id: dict[str, Principal] = {}
    for record in records:
        principal = by_id[record.id] = record.principal()
        if record.revoked_at is not None:
            continue
        by_hash[record.secret_sha256] = (principal, record.expires_at, "expired")
        if record.previous_sha256 is not None and record.previous_expires_at is not None:
            until = record.previous_expires_at
            if record.expires_at is not None:
                until = min(until, record.expires_at)
            by_hash[record.previous_sha256] = (principal, until, "rotated")
    return StoredKeys(by_hash, by_id)
