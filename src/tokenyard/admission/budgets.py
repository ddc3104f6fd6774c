"""Budgets as the request path checks them: which budgets a request counts against, and each one's window
now (pure: the clock is an argument).

A request counts against every budget of its key, its tenant and its key's team. Money is counted in
integer nano-USD here and in the store: exact sums in Redis's Lua (doubles) up to $9M, and a request's
cost (pico-USD in the meter) rounds up into it, so a budget never counts less than the meter.

Rolling windows (``1d``, ``7d``, ``30d``) are kept by the hour: spend leaves the window an hour at a time,
the oldest hour first. Calendar windows (``day``, ``month``) start again at midnight or on the first in
their time zone, daylight-saving changes included.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache
from typing import Final
from urllib.parse import quote

from tokenyard.admission.auth import Principal
from tokenyard.admission.budget_settings import Budget, BudgetsConfig

NUSD_PER_USD: Final = 1_000_000_000
PUSD_PER_NUSD: Final = 1000
HOUR_S: Final = 3600
_ROLLING_DAYS: Final = {"1d": 1, "7d": 7, "30d": 30}


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget of one holder (a key, a tenant or a team)."""

    id: str  # the store's name for it: kind, holder and window (one budget per window per holder)
    holder: str  # for people: "key key_…", "tenant acme", "team search"
    budget: Budget
    limit_nusd: int


@dataclass(frozen=True, slots=True)
class Span:
    """A budget's window at one moment: the buckets it counts and when it next lets go of spend."""

    oldest: int  # the first bucket counted (unix s)
    bucket: int  # the bucket spend made now lands in
    resets_at: int  # when spend next leaves the window: the next hour (rolling) or the next start
    ttl_s: int  # how long a bucket must be kept to be counted while it is in the window


def usd_to_nusd(usd: float) -> int:
    """USD → nano-USD (exact for limits with up to nine decimals)."""
    return round(usd * NUSD_PER_USD)


def pusd_to_nusd(pusd: int) -> int:
    """A cost in pico-USD → nano-USD, rounded up (a budget never counts less than was spent)."""
    return -(-pusd // PUSD_PER_NUSD)


def span(budget: Budget, now: float) -> Span:
    """``budget``'s window at ``now``."""
    days = _ROLLING_DAYS.get(budget.window)
    if days is not None:
        hour = int(now) // HOUR_S * HOUR_S
        return Span(hour - (days * 24 - 1) * HOUR_S, hour, hour + HOUR_S, days * 86400 + HOUR_S)
    zone = _zone(budget.time_zone)
    today = dt.datetime.fromtimestamp(now, zone).date()
    if budget.window == "day":
        start, end = today, today + dt.timedelta(days=1)
    else:
        start = today.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    starts_at, resets_at = _midnight(start, zone), _midnight(end, zone)
    return Span(starts_at, starts_at, resets_at, resets_at - starts_at + HOUR_S)


def _midnight(day: dt.date, zone: zoneinfo.ZoneInfo) -> int:
    return math.floor(dt.datetime.combine(day, dt.time(0), zone).timestamp())


@lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def has_budgets(principal: Principal, config: BudgetsConfig) -> bool:
    """Whether any budget counts this principal's requests (the request path's one check when none does)."""
    return bool(
        principal.budgets
        or (config.tenants and principal.tenant in config.tenants)
        or (config.teams and principal.team is not None and principal.team in config.teams)
    )


def lines_for(principal: Principal, config: BudgetsConfig) -> tuple[BudgetLine, ...]:
    """Every budget a request of ``principal`` counts against: its key's, its tenant's, its team's."""
    holders: list[tuple[str, str, tuple[Budget, ...] | list[Budget]]] = [
        ("key", principal.key_name, principal.budgets),
        ("tenant", principal.tenant, config.tenants.get(principal.tenant, ())),
    ]
    if principal.team is not None:
        holders.append(("team", principal.team, config.teams.get(principal.team, ())))
    return tuple(
        BudgetLine(
            f"{kind}:{quote(name, safe='')}:{budget.window}",
            f"{kind} {name}",
            budget,
            usd_to_nusd(budget.limit_usd),
        )
        for kind, name, budgets in holders
        for budget in budgets
    )


def describe_usd(nusd: int) -> str:
    """An amount for people: dollars and cents, or more digits below a cent."""
    usd = nusd / NUSD_PER_USD
    return f"${usd:,.2f}" if abs(usd) >= 0.01 or usd == 0 else f"${usd:.6f}"


def iso(ts: int) -> str:
    """A unix time as ISO 8601 in UTC (``2026-12-05T00:00:00Z``)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
