"""Budgets as configured: on a key (in the config file or made through the admin API), a tenant or a team
(the ``budgets:`` section), each a USD limit per window."""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Rolling windows count the last 1, 7 or 30 days (by the hour); calendar ones the current day or month in
# ``time_zone`` and start again at its midnight or on its first.
Window = Literal["1d", "7d", "30d", "day", "month"]
PositiveUsd = Annotated[float, Field(gt=0, le=1e6)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    """A USD limit per window. ``hard``: requests stop when it is spent (``on_exceeded``); ``soft``: it is
    counted and shown (headers, ``/metrics``), never enforced."""

    limit_usd: PositiveUsd
    window: Window = "30d"
    time_zone: str = "UTC"  # where a calendar day or month starts
    enforcement: Literal["hard", "soft"] = "hard"
    # reject: 429 insufficient_quota; async: the request runs on the async track at batch prices instead.
    on_exceeded: Literal["reject", "async"] = "reject"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)") from exc
        return value


def one_per_window(budgets: list[Budget]) -> list[Budget]:
    """``budgets`` if no two share a window (they would count the same spend twice over)."""
    windows = [budget.window for budget in budgets]
    if len(set(windows)) != len(windows):
        raise ValueError("has two budgets with the same window")
    return budgets


Budgets = Annotated[list[Budget], Field(max_length=5)]


class BudgetsConfig(_Strict):
    """The ``budgets:`` section: tenants' and teams' budgets, and how every budget is enforced."""

    tenants: dict[str, Budgets] = {}
    teams: dict[str, Budgets] = {}
    # What a request that names no max_tokens is reserved for, as output tokens (settled to what it used).
    default_max_tokens: Annotated[int, Field(gt=0)] = 4096
    # A reservation whose request never settled (its replica died) lets go of its money after this long.
    reservation_ttl_s: Annotated[int, Field(ge=60, le=86400)] = 900
    # While the store cannot be reached: serve (and count nothing), or refuse budgeted keys with 503.
    when_store_down: Literal["serve", "refuse"] = "serve"

    @field_validator("tenants", "teams")
    @classmethod
    def _one_per_window(cls, value: dict[str, list[Budget]]) -> dict[str, list[Budget]]:
        for budgets in value.values():
            one_per_window(budgets)
        return value
