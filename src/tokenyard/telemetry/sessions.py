"""Dashboard sessions: signed, expiring cookie values and the per-rotation secret that signs them.

A session cookie is ``<issued-at unix seconds>.<hex HMAC-SHA256 of it>``: the server needs no session
table, and the time it was issued is signed, so an expiry cannot be stretched by the browser.

The secret is ``HMAC(admin key, random salt)``. The salt is drawn anew whenever the admin key changes
and is kept in the meter store next to a fingerprint of the key it belongs to, so:

* every replica sharing the store derives the same secret (a session from one is valid on all);
* rotating the key back (A, then B, then A again) draws a new salt: sessions from the first A stay dead;
* the store alone cannot forge a session: the salt is useless without the admin key.

Without a store the salt is this process's own, and sessions end when it restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets

import orjson

from tokenyard.errors import StoreUnavailable
from tokenyard.stores.protocols import CoordinatedDocuments

log = logging.getLogger(__name__)

SALT_DOCUMENT = "dashboard-session-salt"
_LOCK = "dashboard-session-salt"
_LOCK_TTL_S = 30.0  # far above the read and write it guards
_LOCK_ATTEMPTS = 40
_LOCK_RETRY_S = 0.05
FUTURE_SKEW_S = 60
"""How far in the future an issue time may lie: replicas' clocks differ a little."""


def key_fingerprint(admin_key: bytes) -> str:
    """Which admin key a stored salt belongs to, without revealing the key."""
    return hmac.new(admin_key, b"tokenyard dashboard key fingerprint", hashlib.sha256).hexdigest()


def session_secret(admin_key: bytes, salt: bytes) -> bytes:
    """The key that signs sessions while ``admin_key`` is in force with ``salt``."""
    return hmac.new(admin_key, b"tokenyard dashboard session\x00" + salt, hashlib.sha256).digest()


def session_value(secret: bytes, issued_at_s: int) -> bytes:
    """The cookie value of a session issued at ``issued_at_s``."""
    issued = str(issued_at_s).encode("ascii")
    return issued + b"." + hmac.new(secret, issued, hashlib.sha256).hexdigest().encode("ascii")


def session_valid(secret: bytes | None, value: bytes, now_s: float, ttl_s: float) -> bool:
    """Whether ``value`` was signed with ``secret`` and, at ``now_s``, is less than ``ttl_s`` old."""
    if secret is None:
        return False
    issued, _, mac = value.partition(b".")
    if not issued.isdigit() or len(issued) > 12:  # 12 digits reach the year 33658
        return False
    expected = hmac.new(secret, issued, hashlib.sha256).hexdigest().encode("ascii")
    if not hmac.compare_digest(mac, expected):
        return False
    issued_at_s = int(issued)
    return issued_at_s - FUTURE_SKEW_S <= now_s < issued_at_s + ttl_s


async def agreed_salt(store: CoordinatedDocuments | None, fingerprint: str, owner: str) -> bytes:
    """The salt of the admin key with ``fingerprint``: the one the replicas share, or a new one.

    A new salt is drawn (and shared) when the store holds none for this key: the first start with it, or
    a rotation to it. Under a lock, so replicas reloading at once agree on one. If the store cannot be
    reached, the salt is this replica's own until the next reload: sessions still work, on this replica.
    """
    if store is None:
        return secrets.token_bytes(32)
    try:
        locked = False
        for _ in range(_LOCK_ATTEMPTS):
            locked = await store.try_lock(_LOCK, owner, _LOCK_TTL_S)
            if locked:
                break
            await asyncio.sleep(_LOCK_RETRY_S)  # another replica is choosing it: it is quick
        try:
            stored = await store.get_document(SALT_DOCUMENT)
            if stored is not None:
                document = orjson.loads(stored)
                if document.get("key") == fingerprint:
                    return bytes.fromhex(document["salt"])
            salt = secrets.token_bytes(32)
            await store.put_document(SALT_DOCUMENT, orjson.dumps({"key": fingerprint, "salt": salt.hex()}))
            return salt
        finally:
            if locked:
                await store.release_lock(_LOCK, owner)
    except (StoreUnavailable, orjson.JSONDecodeError, ValueError, KeyError) as exc:
        log.warning(
            "dashboard sessions: the shared salt is out of reach (%s); this replica uses its own", exc
        )
        return secrets.token_bytes(32)
