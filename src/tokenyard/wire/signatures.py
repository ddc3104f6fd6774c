"""How tokenyard signs what it POSTs to someone else's URL (job callbacks, capacity decisions), defined once.

The header, when a secret is set::

    X-Tokenyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>

A receiver recomputes the HMAC over the timestamp and the raw body, compares in constant time, and refuses
a timestamp too far from its own clock (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

H_SIGNATURE: Final = "X-Tokenyard-Signature"


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The signature header's value for ``payload`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
