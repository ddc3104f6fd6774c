"""What the Files and Batch APIs share: seeded object ids, the state error, cursor pages and query arguments.

An unknown id is ``tokenyard.errors.ObjectNotFound`` (404 with no error code), as in tokenyard's own
Batch API."""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import parse_qs

from tokenyard.errors import ClientError, InvalidRequest

T = TypeVar("T")

_BASE62 = string.digits + string.ascii_letters


class InvalidState(ClientError):
    """The object cannot do this in its current state, such as cancelling a finished batch."""

    status_code = 409


class IdMaker:
    """Object ids from an RNG seeded on (seed, kind): simulators with the same seed hand out the same ids."""

    __slots__ = ("_rng",)

    def __init__(self, seed: int, kind: str) -> None:
        self._rng = random.Random(f"{seed}\x00{kind}")

    def hex_id(self, prefix: str) -> str:
        """``prefix`` and 32 hex digits, like ``batch_…`` ids."""
        return f"{prefix}{self._rng.getrandbits(128):032x}"

    def base62_id(self, prefix: str) -> str:
        """``prefix`` and 22 letters and digits, like ``file-…`` ids."""
        return prefix + "".join(self._rng.choices(_BASE62, k=22))


def page(
    items: Sequence[T], id_of: Callable[[T], str], after: str | None, limit: int
) -> tuple[list[T], bool]:
    """The items that follow the one with id ``after`` (all, without it), at most ``limit``, and whether
    more follow. An ``after`` that names no item gives an empty page."""
    start = 0
    if after is not None:
        ids = [id_of(item) for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    return list(items[start : start + limit]), start + limit < len(items)


class Query:
    """A request's query arguments; when one is repeated, the last value counts."""

    __slots__ = ("_values",)

    def __init__(self, raw: bytes) -> None:
        self._values = parse_qs(raw.decode("latin-1"))

    def text(self, name: str) -> str | None:
        """The argument as given, or None when absent."""
        values = self._values.get(name)
        return values[-1] if values else None

    def integer(self, name: str, default: int, lowest: int, highest: int) -> int:
        """An integer argument within ``[lowest, highest]``; anything else is the client's error."""
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise InvalidRequest(
                f"Invalid '{name}': expected an integer, got '{value}'.", param=name
            ) from None
        if not lowest <= number <= highest:
            raise InvalidRequest(
                f"Invalid '{name}': expected a value between {lowest} and {highest}, got {number}.",
                param=name,
            )
        return number

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        """One of ``allowed``, or ``default`` when absent."""
        value = self.text(name)
        if value is None:
            return default
        if value not in allowed:
            listed = ", ".join(f"'{option}'" for option in allowed)
            raise InvalidRequest(f"Invalid '{name}': '{value}' is not one of {listed}.", param=name)
        return value
