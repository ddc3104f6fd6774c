"""The receiver's side of tokenyard's signed webhooks (job callbacks, budget alerts)."""

from __future__ import annotations

import hashlib
import hmac


def verify(secret: str, header: str, body: bytes) -> int:
    """The timestamp of a valid ``t=…,v1=…`` signature over ``body`` (asserts that it is valid)."""
    stamp, digest = (part.split("=", 1) for part in header.split(","))
    assert (stamp[0], digest[0]) == ("t", "v1")
    expected = hmac.new(secret.encode(), f"{stamp[1]}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest[1], expected)
    return int(stamp[1])
