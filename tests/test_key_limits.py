"""A key's own rate limits, on a clock the test moves: each replica's share of rpm and tpm, refills, OpenAI's
``x-ratelimit-*`` headers, and nothing taken by a refused request."""

from __future__ import annotations

import pytest

from tokenyard.admission.auth import Principal
from tokenyard.admission.key_limits import KeyRateLimited, KeyRates, duration


def key(rpm: int | None = None, tpm: int | None = None) -> Principal:
    return Principal("acme", None, "search-bot", rpm=rpm, tpm=tpm)


def headers_of(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in pairs}


def test_a_key_gets_its_rpm_a_minute_then_one_more_as_each_share_refills() -> None:
    rates, bot = KeyRates(), key(rpm=60)
    for i in range(60):
        got = headers_of(rates.take(bot, 10, now=100.0))
        assert got["x-ratelimit-remaining-requests"] == str(59 - i)
    assert got == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    with pytest.raises(KeyRateLimited) as refused:
        rates.take(bot, 10, now=100.5)
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.message == (
        "Rate limit reached for requests per min (RPM) on key search-bot: Limit 60. "
        "Please try again in 500ms."
    )
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert headers_of(refused.value.headers)["x-ratelimit-remaining-requests"] == "0"
    rates.take(bot, 10, now=101.0)  # one refilled in a second


def test_tokens_are_limited_by_the_estimate_and_a_refusal_takes_nothing() -> None:
    rates, bot = KeyRates(), key(rpm=100, tpm=1000)
    rates.take(bot, 900, now=0.0)
    with pytest.raises(KeyRateLimited, match=r"tokens per min \(TPM\).*try again in 9s"):
        rates.take(bot, 250, now=0.0)
    got = headers_of(rates.take(bot, 100, now=0.0))
    assert got["x-ratelimit-remaining-requests"] == "98", "the refused request took no request either"
    assert got["x-ratelimit-remaining-tokens"] == "0"
    assert got["x-ratelimit-reset-tokens"] == "1m0s"
    huge = KeyRates()
    huge.take(bot, 5000, now=0.0)  # larger than the whole minute: passes on a full bucket, empties it
    with pytest.raises(KeyRateLimited):
        huge.take(bot, 1, now=0.0)


def test_each_of_n_replicas_takes_a_share_and_says_what_is_left_across_them() -> None:
    rates, bot = KeyRates(), key(rpm=30)
    rates.cluster_size = 3
    for _ in range(10):
        got = headers_of(rates.take(bot, 1, now=0.0))
    assert got["x-ratelimit-limit-requests"] == "30"
    assert got["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(KeyRateLimited, match="try again in 6s"):
        rates.take(bot, 1, now=0.0)
    other = key(rpm=30)
    assert (
        headers_of(rates.take(Principal("x", None, "other-key", rpm=30), 1, now=0.0))[
            "x-ratelimit-remaining-requests"
        ]
        == "27"
    ), "each key has its own buckets"
    assert other.rated
    assert not Principal("x", None, "free").rated


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.02, "20ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.4, "59.4s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_waits_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text
