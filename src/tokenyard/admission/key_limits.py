"""Per-key rate limits: a key's ``rpm`` and ``tpm``, enforced across replicas the way backend caps are —
each of the N live replicas takes 1/N of them — with OpenAI's ``x-ratelimit-*`` headers on every answer.

A limit is a bucket that refills continuously (``limit / 60`` a second, this replica's share) up to its
share of a minute; a request takes 1 from the requests bucket and its token estimate (the prompt at ~4
bytes a token plus its output cap, as backends' ``tpm`` count them) from the tokens bucket, or is refused
(429 ``rate_limit_exceeded``, with ``Retry-After``) without taking anything. The headers give the key's own
limit, what is left across the cluster (this replica's remaining share times N, an even spread assumed)
and how long until the bucket is full again, in OpenAI's duration format (``1s``, ``6m0s``, ``20ms``).

Pure: the clock is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tokenyard.admission.auth import Principal
from tokenyard.errors import CapacityExhausted

H_LIMIT_REQUESTS: Final = b"x-ratelimit-limit-requests"
H_REMAINING_REQUESTS: Final = b"x-ratelimit-remaining-requests"
H_RESET_REQUESTS: Final = b"x-ratelimit-reset-requests"
H_LIMIT_TOKENS: Final = b"x-ratelimit-limit-tokens"
H_REMAINING_TOKENS: Final = b"x-ratelimit-remaining-tokens"
H_RESET_TOKENS: Final = b"x-ratelimit-reset-tokens"
_KEPT_IDLE_S: Final = 600.0  # a bucket untouched this long is full again anyway: forgotten


class KeyRateLimited(CapacityExhausted):
    """The key's own rpm or tpm is used up for now (OpenAI's ``rate_limit_exceeded``)."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.headers = headers  # the x-ratelimit-* headers the refusal carries


@dataclass(slots=True)
class _Bucket:
    """One limit's bucket on this replica: its level at ``at`` (seconds, the caller's clock)."""

    level: float
    at: float

    def refill(self, capacity: float, now: float) -> float:
        self.level = min(capacity, self.level + (now - self.at) * capacity / 60.0)
        self.at = now
        return self.level


class KeyRates:
    """Every key's buckets on this replica; ``cluster_size`` is the number of live replicas sharing the
    limits (membership sets it)."""

    __slots__ = ("_buckets", "cluster_size")

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.cluster_size = 1

    def take(self, principal: Principal, tokens: int, now: float) -> list[tuple[bytes, bytes]]:
        """Take one request and ``tokens`` from the key's limits; the ``x-ratelimit-*`` headers to answer
        with. ``KeyRateLimited`` (its headers in ``headers``) if either is used up: nothing is taken."""
        wanted: list[tuple[str, int, float]] = []  # (kind, the key's limit, amount asked)
        if principal.rpm is not None:
            wanted.append(("requests", principal.rpm, 1.0))
        if principal.tpm is not None:
            wanted.append(("tokens", principal.tpm, float(tokens)))
        checked = []
        for kind, limit, amount in wanted:
            capacity = limit / self.cluster_size
            bucket = self._bucket(principal.key_name, kind, capacity, now)
            bucket.refill(capacity, now)
            # A request larger than the whole share passes when the bucket is full, and empties it.
            checked.append((kind, limit, capacity, bucket, min(amount, capacity)))
        short = next((entry for entry in checked if entry[3].level < entry[4]), None)
        if short is None:
            for _, _, _, bucket, amount in checked:
                bucket.level -= amount
        headers = [h for kind, limit, c, bucket, _ in checked for h in self._headers(kind, limit, c, bucket)]
        if short is not None:
            kind, limit, capacity, bucket, amount = short
            wait_s = (amount - bucket.level) * 60.0 / capacity
            raise _refusal(principal.key_name, kind, limit, wait_s, headers)
        self._forget_idle(now)
        return headers

    def _bucket(self, key: str, kind: str, capacity: float, now: float) -> _Bucket:
        bucket = self._buckets.get((key, kind))
        if bucket is None:
            bucket = self._buckets[(key, kind)] = _Bucket(capacity, now)
        return bucket

    def _headers(self, kind: str, limit: int, capacity: float, bucket: _Bucket) -> list[tuple[bytes, bytes]]:
        names = {
            "requests": (H_LIMIT_REQUESTS, H_REMAINING_REQUESTS, H_RESET_REQUESTS),
            "tokens": (H_LIMIT_TOKENS, H_REMAINING_TOKENS, H_RESET_TOKENS),
        }[kind]
        remaining = max(0, int(bucket.level * self.cluster_size))
        until_full_s = (capacity - bucket.level) * 60.0 / capacity
        return [
            (names[0], str(limit).encode()),
            (names[1], str(min(limit, remaining)).encode()),
            (names[2], duration(until_full_s).encode()),
        ]

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) > 10_000:  # many keys: drop the ones long idle (they would be full)
            for name in [n for n, b in self._buckets.items() if now - b.at > _KEPT_IDLE_S]:
                del self._buckets[name]


def _refusal(
    key: str, kind: str, limit: int, wait_s: float, headers: list[tuple[bytes, bytes]]
) -> KeyRateLimited:
    what = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    return KeyRateLimited(
        f"Rate limit reached for {what} on key {key}: Limit {limit}. Please try again in {duration(wait_s)}.",
        retry_after_s=max(wait_s, 0.001),
        headers=headers,
    )


def duration(seconds: float) -> str:
    """A wait in OpenAI's ``x-ratelimit-reset-*`` format: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"
