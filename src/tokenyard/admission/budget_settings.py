"""Budgets as configured: on a key (in the config file or made through the admin API), a tenant or a team
(the ``budgets:`` section), each a USD limit per window."""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

# Rolling windows count the last 1, 7 or 30 days (by the hour); calendar ones the current day or month in
# ``time_zone`` and start again at its midnight or on its first.
Window = Literal["1d", "7d", "30d", "day", "month"]
PositiveUsd = Annotated[float, Field(gt=0, le=1e6)]
Threshold = Annotated[float, Field(gt=0, le=10)]  # a share of the limit: 0.8 is 80 %, 1.5 is 150 %


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
    # The shares of the limit that are told (log line, budgets.alerts.url) the first time spend reaches each
    # in a window; a tuple, so a budget stays hashable (keys hold them in frozen principals).
    thresholds: Annotated[tuple[Threshold, ...], Field(max_length=10)] = (0.5, 0.8, 1.0)

    @field_validator("thresholds")
    @classmethod
    def _sorted_unique(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(sorted(set(value)))

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


class BudgetAlerts(_Strict):
    """Where a budget reaching one of its thresholds is POSTed (never anywhere but ``allow_hosts``: no
    SSRF), signed like job callbacks when ``secret`` is set. Without ``url`` only the log line and the
    gauges say it."""

    allow_hosts: list[str] = []  # before url: its check reads them
    url: str | None = None
    secret: SecretStr | None = None  # unset (or empty): sent unsigned
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0

    @field_validator("secret")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("url")
    @classmethod
    def _allowed_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"https?://[^/\s?#@]+(?:[/?#]\S*)?", value):
            raise ValueError("must be an http:// or https:// URL (no user name or password)")
        try:
            host = (urlsplit(value).hostname or "").lower()
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from exc
        allow_hosts = info.data.get("allow_hosts")
        if allow_hosts is not None and host not in {h.lower() for h in allow_hosts}:
            raise ValueError(f"its host {host!r} is not in budgets.alerts.allow_hosts")
        return value


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
    alerts: BudgetAlerts = BudgetAlerts()  # who is told when a budget reaches a threshold

    @field_validator("tenants", "teams")
    @classmethod
    def _one_per_window(cls, value: dict[str, list[Budget]]) -> dict[str, list[Budget]]:
        for budgets in value.values():
            one_per_window(budgets)
        return value
