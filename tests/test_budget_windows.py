"""Budget windows, pure: which buckets a budget counts at a moment and when it next lets go of spend, and
which budgets a request counts against."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from tokenyard.admission.auth import Principal
from tokenyard.admission.budget_settings import Budget, BudgetsConfig
from tokenyard.admission.budgets import Span, has_budgets, lines_for, pusd_to_nusd, span, usd_to_nusd
from tokenyard.config import TokenyardConfig


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_a_rolling_window_counts_the_last_n_days_by_the_hour() -> None:
    now = ts("2026-12-04T15:42:10+00:00")
    hour = int(ts("2026-12-04T15:00:00+00:00"))
    assert span(Budget(limit_usd=1, window="1d"), now) == Span(
        hour - 23 * 3600, hour, hour + 3600, 86400 + 3600
    )
    seven = span(Budget(limit_usd=1, window="7d"), now)
    assert (seven.oldest, seven.resets_at) == (hour - (7 * 24 - 1) * 3600, hour + 3600)
    assert span(Budget(limit_usd=1, window="30d"), now).oldest == hour - (30 * 24 - 1) * 3600


@pytest.mark.parametrize(
    ("window", "zone", "now", "starts", "resets"),
    [
        ("day", "UTC", "2026-12-04T23:59:59+00:00", "2026-12-04T00:00:00+00:00", "2026-12-05T00:00:00+00:00"),
        ("day", "UTC", "2026-12-05T00:00:00+00:00", "2026-12-05T00:00:00+00:00", "2026-12-06T00:00:00+00:00"),
        # Berlin's day starts at 23:00 UTC in winter...
        (
            "day",
            "Europe/Berlin",
            "2026-12-04T23:30:00+00:00",
            "2026-12-04T23:00:00+00:00",
            "2026-12-05T23:00:00+00:00",
        ),
        # ...and the day clocks go forward has 23 hours, the day they go back 25.
        (
            "day",
            "Europe/Berlin",
            "2026-03-29T12:00:00+00:00",
            "2026-03-28T23:00:00+00:00",
            "2026-03-29T22:00:00+00:00",
        ),
        (
            "day",
            "Europe/Berlin",
            "2026-10-25T12:00:00+00:00",
            "2026-10-24T22:00:00+00:00",
            "2026-10-25T23:00:00+00:00",
        ),
        (
            "month",
            "UTC",
            "2026-12-31T23:59:59+00:00",
            "2026-12-01T00:00:00+00:00",
            "2027-01-01T00:00:00+00:00",
        ),
        (
            "month",
            "UTC",
            "2027-02-14T08:00:00+00:00",
            "2027-02-01T00:00:00+00:00",
            "2027-03-01T00:00:00+00:00",
        ),
        (
            "month",
            "Pacific/Auckland",
            "2026-11-30T12:00:00+00:00",
            "2026-11-30T11:00:00+00:00",
            "2026-12-31T11:00:00+00:00",
        ),
    ],
)
def test_a_calendar_window_starts_again_at_midnight_or_on_the_first_where_it_is(
    window: str, zone: str, now: str, starts: str, resets: str
) -> None:
    got = span(Budget.model_validate({"limit_usd": 1, "window": window, "time_zone": zone}), ts(now))
    assert (got.oldest, got.bucket, got.resets_at) == (int(ts(starts)), int(ts(starts)), int(ts(resets)))
    assert got.ttl_s == got.resets_at - got.oldest + 3600


def test_money_rounds_up_into_nano_dollars() -> None:
    assert usd_to_nusd(12.5) == 12_500_000_000
    assert pusd_to_nusd(1) == 1
    assert pusd_to_nusd(1000) == 1
    assert pusd_to_nusd(1001) == 2
    assert pusd_to_nusd(0) == 0


def test_a_request_counts_against_its_keys_its_tenants_and_its_teams_budgets() -> None:
    mine = Budget(limit_usd=5, window="day")
    config = BudgetsConfig(
        tenants={"acme": [Budget(limit_usd=100)]},
        teams={"search": [Budget(limit_usd=50, window="month", enforcement="soft")]},
    )
    principal = Principal("acme", None, "key_1", team="search", budgets=(mine,))
    assert has_budgets(principal, config)
    lines = lines_for(principal, config)
    assert [(line.id, line.holder, line.limit_nusd) for line in lines] == [
        ("key:key_1:day", "key key_1", 5 * 10**9),
        ("tenant:acme:30d", "tenant acme", 100 * 10**9),
        ("team:search:month", "team search", 50 * 10**9),
    ]
    assert not has_budgets(Principal("other", None, "k"), config)
    odd = Principal("a:b c", None, "k:1")
    assert [line.id for line in lines_for(odd, BudgetsConfig(tenants={"a:b c": [Budget(limit_usd=1)]}))] == [
        "tenant:a%3Ab%20c:30d"
    ]


def test_budget_config_errors_name_their_path() -> None:
    with pytest.raises(ValidationError, match="two budgets with the same window"):
        BudgetsConfig.model_validate({"teams": {"x": [{"limit_usd": 1}, {"limit_usd": 2, "window": "30d"}]}})
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Budget.model_validate({"limit_usd": 1, "window": "day", "time_zone": "Mars/Olympus"})
    base = {
        "backends": {"a": {"kind": "serverless", "base_url": "http://x"}},
        "models": {"m": {"deployments": ["a"]}},
    }
    with pytest.raises(ValidationError, match=r"keys\.k\.budgets\.0\.limit_usd"):
        TokenyardConfig.model_validate(
            {**base, "keys": {"k": {"key": "sk-0123456789", "budgets": [{"limit_usd": -1}]}}}
        )
    off = TokenyardConfig.model_validate(
        {**base, "meter": {"store": "off"}, "budgets": {"teams": {"x": [{"limit_usd": 1}]}}}
    )
    assert ("budgets", "budgets are counted in the meter's store: set meter.store, not off") in (
        off.cross_reference_problems()
    )
