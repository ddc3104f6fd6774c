"""Virtual keys: the bearer key a client sends → the tenant it acts for and the models it may use.

Upstream secrets never leave the proxy; a virtual key is never echoed back, not even masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tokenyard.config import KeyConfig
from tokenyard.errors import AuthenticationFailed

OPEN_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant, and the models its key may use (None: all)."""

    tenant: str
    models: frozenset[str] | None
    key_name: str = ""
    mode: Literal["realtime", "async"] | None = None  # the key's policy (classification)
    deadline_s: float | None = None  # its async jobs' deadline

    def may_use(self, model: str) -> bool:
        """Whether this key may call ``model``."""
        return self.models is None or model in self.models


class KeyRing:
    """Looks up the principal behind an ``Authorization`` header value."""

    __slots__ = ("_by_secret", "_open")

    def __init__(self, keys: dict[str, KeyConfig]) -> None:
        self._by_secret = {
            key.key.get_secret_value(): Principal(
                key.tenant or name,
                frozenset(key.models) if key.models is not None else None,
                name,
                key.mode,
                key.deadline_s,
            )
            for name, key in keys.items()
        }
        # With no keys configured the proxy is open (loopback only, enforced by config validation).
        self._open = Principal(OPEN_TENANT, None) if not keys else None

    @property
    def is_open(self) -> bool:
        """Whether any bearer key (or none) is accepted."""
        return self._open is not None

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal for a raw ``Authorization`` header; ``AuthenticationFailed`` if there is none."""
        if self._open is not None:
            return self._open
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        scheme, _, secret = authorization.decode("latin-1").partition(" ")
        principal = self._by_secret.get(secret.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal
