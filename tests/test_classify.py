"""Real-time or async: each signal, their precedence, deadlines, and what a stream changes."""

from __future__ import annotations

import pytest

from tokenyard.admission.classify import Decision, RequestFacts, Rule, classify, prefers_async
from tokenyard.errors import InvalidRequest

DAY, FLEX = 86400.0, 600.0


def facts(**overrides: object) -> RequestFacts:
    base: dict[str, object] = {"model": "llama", "endpoint": "chat", "tenant": "acme", "stream": False}
    return RequestFacts(**(base | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        ("respond-async", True),
        ("Respond-Async", True),
        ("respond-async, wait=10", True),
        ("wait=5, respond-async", True),
        ("respond-async; foo=bar", True),
        ("return=minimal", False),
        ("respond-asynchronously", False),
        ("", False),
        (None, False),
    ],
)
def test_prefer_respond_async_is_read_as_rfc_7240_writes_it(prefer: str | None, expected: bool) -> None:
    assert prefers_async(prefer) is expected


def test_without_any_signal_a_request_is_real_time() -> None:
    assert classify(facts()) == Decision("realtime", "respond", "default")


def test_prefer_respond_async_is_polled_with_the_default_deadline() -> None:
    assert classify(facts(prefer="respond-async")) == Decision("async", "poll", "Prefer: respond-async", DAY)


@pytest.mark.parametrize("value", ["async", "ASYNC", " async "])
def test_the_mode_header_makes_a_plain_client_wait_on_its_connection(value: str) -> None:
    assert classify(facts(mode_header=value)) == Decision("async", "hold", "x-tokenyard-mode: async", DAY)


def test_an_unknown_mode_header_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest, match="x-tokenyard-mode header must be 'realtime' or 'async'"):
        classify(facts(mode_header="later"))


def test_flex_waits_on_the_connection_with_the_flex_deadline() -> None:
    assert classify(facts(service_tier="flex")) == Decision("async", "hold", "service_tier: flex", FLEX)
    assert classify(facts(service_tier="batch")) == Decision("async", "hold", "service_tier: batch", DAY)


@pytest.mark.parametrize("tier", ["auto", "default", "priority", 7, None])
def test_other_service_tiers_are_no_signal(tier: object) -> None:
    assert classify(facts(service_tier=tier)).mode == "realtime"


def test_the_key_policy_and_its_deadline() -> None:
    decided = classify(facts(key_name="batch-jobs", key_mode="async", key_deadline_s=3600))
    assert decided == Decision("async", "hold", "key batch-jobs: async", 3600)


def test_the_first_matching_rule_decides_and_sets_the_deadline() -> None:
    rules = [
        Rule("async", deadline_s=7200, models=frozenset({"other"})),
        Rule("async", deadline_s=1800, tenants=frozenset({"acme"}), metadata=(("priority", "low"),)),
        Rule("realtime", tenants=frozenset({"acme"})),
    ]
    low = classify(facts(metadata={"priority": "low"}), rules)
    assert low == Decision("async", "hold", "rule: tenant=acme metadata.priority=low", 1800)
    assert classify(facts(metadata={"priority": "high"}), rules) == Decision(
        "realtime", "respond", "rule: tenant=acme"
    )


@pytest.mark.parametrize(
    ("rule", "request_facts", "matches"),
    [
        (Rule("async", models=frozenset({"llama"})), facts(), True),
        (Rule("async", models=frozenset({"gpt"})), facts(), False),
        (Rule("async", endpoints=frozenset({"embeddings"})), facts(endpoint="embeddings"), True),
        (Rule("async", users=frozenset({"nightly"})), facts(user="nightly"), True),
        (Rule("async", users=frozenset({"nightly"})), facts(), False),
        (Rule("async", stream=False), facts(stream=True), False),
        (Rule("async", metadata=(("job", "report"),)), facts(metadata={"job": "report", "x": "y"}), True),
        (Rule("async", metadata=(("job", "report"),)), facts(metadata={"job": "chat"}), False),
        (Rule("async"), facts(), True),
    ],
)
def test_rules_match_on_model_endpoint_user_stream_and_metadata(
    rule: Rule, request_facts: RequestFacts, matches: bool
) -> None:
    assert rule.matches(request_facts) is matches


def test_precedence_request_signals_then_key_then_rules() -> None:
    rules = [Rule("async")]
    # The request's own signal beats the key, which beats the rules.
    assert classify(facts(mode_header="realtime", key_mode="async", key_name="k"), rules).reason == (
        "x-tokenyard-mode: realtime"
    )
    assert classify(facts(key_mode="realtime", key_name="k"), rules).reason == "key k: realtime"
    assert classify(facts(), rules).reason == "rule: every request"
    # Among the request's signals: Prefer, then the mode header, then service_tier.
    assert classify(facts(prefer="respond-async", mode_header="realtime")).delivery == "poll"
    assert classify(facts(mode_header="realtime", service_tier="flex")).mode == "realtime"


def test_the_key_deadline_beats_the_rule_deadline_and_flex_never_waits_longer_than_flex() -> None:
    rules = [Rule("async", deadline_s=1800)]
    assert classify(facts(key_deadline_s=900), rules).deadline_s == 900
    assert classify(facts(), rules).deadline_s == 1800
    assert classify(facts(service_tier="flex", key_deadline_s=60)).deadline_s == 60
    assert classify(facts(service_tier="flex", key_deadline_s=7200)).deadline_s == FLEX


def test_a_stream_is_served_in_real_time_and_cannot_be_polled() -> None:
    by_policy = classify(facts(stream=True, key_mode="async", key_name="k"))
    assert by_policy == Decision("realtime", "respond", "key k: async, but streamed: served in real time")
    assert classify(facts(stream=True, service_tier="flex")) == Decision(
        "realtime", "respond", "service_tier: flex, but streamed: served in real time"
    )
    with pytest.raises(InvalidRequest, match="cannot be answered later") as caught:
        classify(facts(stream=True, prefer="respond-async"))
    assert caught.value.param == "stream"
