"""Input nobody should send, and upstreams that all say "later": a clear OpenAI-shaped answer, never a 500.

Nesting deeper than tokenyard will re-encode is a 400 at parse time; a body that names a field tokenyard
reads twice is a 400 naming it (tokenyard would act on one value, an upstream perhaps on the other); a body
tokenyard must change reaches the upstream as the client's bytes with only those fields spliced; and when
every deployment answers 429, the client gets 429 with the shortest Retry-After, during that request and
for the requests that follow while the deployments are held out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.config import CLIENT_KEY, OTHER_KEY, backend, keys_section
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import reset, set_faults, sim_requests, sim_stats, simulators
from tests.support.stores import sqlite_url
from tokenyard.errors import InvalidRequest
from tokenyard.proxy import request_body
from tokenyard.proxy.breaker import CircuitBreaker
from tokenyard.proxy.routing import DeploymentView, NoChoice, choose_deployment
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.simulator.server import SimulatorServer

LIMIT = request_body.MAX_DEPTH
UPSTREAM_NAME = "upstream-name"
FAST: dict[str, Any] = {"ttft_ms": 1, "ttft_jitter": 0, "tokens_per_s": 5000, "default_max_tokens": 3}
# Retry-After far above any pause a busy machine can add between two requests of one test.
SHORT_WAIT_S, LONG_WAIT_S = 600, 900


@pytest_asyncio.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, SimulatorServer]]]:
    async with simulators(
        up=SimulatorConfig(**FAST), a=SimulatorConfig(**FAST), b=SimulatorConfig(**FAST)
    ) as sims:
        tmp = tmp_path_factory.mktemp("hostile")
        url = sims["up"].base_url
        config = {
            "meter": {"store": sqlite_url(tmp / "meter.sqlite3")},
            "routing": {"failure_threshold": 5, "cooldown_s": 1.0, "max_cooldown_s": 3600.0},
            "backends": {
                "plain": backend("serverless", url),
                "renamer": backend("serverless", url, model=UPSTREAM_NAME),
                "a-limited": backend("serverless", sims["a"].base_url),
                "b-limited": backend("serverless", sims["b"].base_url),
            },
            "models": {
                "small": {"deployments": ["plain"]},
                "big": {"deployments": ["plain"]},
                "renamed": {"deployments": ["renamer"]},
                "limited": {"deployments": ["a-limited", "b-limited"]},
            },
            "keys": keys_section(),  # team-b may use only `small`
            "async_track": {},  # service_tier flex is read (and not forwarded)
        }
        async with running_proxy(config, tmp) as proxy:
            yield proxy, sims


@pytest_asyncio.fixture
async def proxy(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> ProxyProcess:
    await reset(stack[1]["up"])
    return stack[0]


@pytest.fixture
def up(stack: tuple[ProxyProcess, dict[str, SimulatorServer]]) -> SimulatorServer:
    return stack[1]["up"]


async def post(proxy: ProxyProcess, body: bytes, key: str = CLIENT_KEY) -> httpx.Response:
    """POST raw bytes to the chat endpoint (the SDK cannot send duplicate keys or exact spacing)."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{proxy.base_url}/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )


def nested(levels: int) -> str:
    """A JSON array nested ``levels`` deep."""
    return "[" * levels + "]" * levels


# The three paths that change the client's body before forwarding it, and the plain one that does not.
PATHS = {
    "plain": '{"model":"small","messages":[{"role":"user","content":"hi"}],"deep":%s}',
    "stream without include_usage": (
        '{"model":"small","messages":[{"role":"user","content":"hi"}],"stream":true,"deep":%s}'
    ),
    "service_tier flex": (
        '{"model":"small","messages":[{"role":"user","content":"hi"}],"stream":true,'
        '"service_tier":"flex","deep":%s}'
    ),
    "renamed model": '{"model":"renamed","messages":[{"role":"user","content":"hi"}],"deep":%s}',
}


def assert_invalid_request(resp: httpx.Response, text: str, param: str | None = None) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert text in error["message"]
    assert error["param"] == param


# -- nesting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("levels", [300, 1000])  # orjson reads 1,024 levels and writes 254
async def test_a_body_nested_past_the_limit_is_a_400_on_every_path(
    proxy: ProxyProcess, up: SimulatorServer, path: str, levels: int
) -> None:
    resp = await post(proxy, (PATHS[path] % nested(levels)).encode())
    assert_invalid_request(resp, f"more than {LIMIT} levels deep")
    assert (await sim_stats(up))["requests_total"] == 0


@pytest.mark.parametrize("path", PATHS)
async def test_the_limit_is_exactly_the_documented_depth(
    proxy: ProxyProcess, up: SimulatorServer, path: str
) -> None:
    at_the_limit = await post(proxy, (PATHS[path] % nested(LIMIT - 1)).encode())
    one_more = await post(proxy, (PATHS[path] % nested(LIMIT)).encode())
    assert at_the_limit.status_code == 200, at_the_limit.text
    assert_invalid_request(one_more, f"more than {LIMIT} levels deep")
    [got] = await sim_requests(up)
    assert got["body"]["deep"] == orjson.loads(nested(LIMIT - 1))


# -- duplicate keys -------------------------------------------------------------------------------------


async def test_a_second_model_key_is_refused_not_resolved(proxy: ProxyProcess, up: SimulatorServer) -> None:
    # team-b may use `small` only: tokenyard would check the last `model`, an upstream may serve the first.
    body = b'{"model":"big","messages":[{"role":"user","content":"hi"}],"model":"small"}'
    resp = await post(proxy, body, key=OTHER_KEY)
    assert_invalid_request(resp, "'model' more than once", param="model")
    assert (await sim_stats(up))["requests_total"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"model":"small","messages":[],"stream":false, "stream" : true}', "stream"),
        (b'{"model":"small","messages":[],"max_tokens":1,"max_tokens":99999}', "max_tokens"),
        (b'{"mod\\u0065l":"big","messages":[],"model":"small"}', "model"),  # one spelled with an escape
        (b'{"model":"small","messages":[],"messages":[{"role":"user","content":"x"}]}', "messages"),
    ],
)
async def test_any_field_tokenyard_reads_may_appear_once(
    proxy: ProxyProcess, up: SimulatorServer, body: bytes, field: str
) -> None:
    resp = await post(proxy, body, key=OTHER_KEY)
    assert_invalid_request(resp, f"'{field}' more than once", param=field)
    assert (await sim_stats(up))["requests_total"] == 0


# -- splicing, not re-encoding --------------------------------------------------------------------------

# Spacing, a float's spelling, an integer past 64 bits, a nested `model` and `service_tier` before the real
# ones, non-ASCII text: all must reach the upstream as the client wrote them.
CLIENT_BODY = (
    '{ "metadata": {"model": "renamed", "service_tier": "flex"},\n'
    '  "messages": [{"role": "user", "content": "h\\u00e9llo \\"model\\": caf\u00e9"}],\n'
    '  "model" : "%s", "temperature": 0.50, "seed": 123456789012345678901234567890,\n'
    '  "stream": true%s }'
)


async def test_a_stream_without_include_usage_gets_only_that_option_spliced_in(
    proxy: ProxyProcess, up: SimulatorServer
) -> None:
    sent = CLIENT_BODY % ("small", "")
    resp = await post(proxy, sent.encode())
    assert resp.status_code == 200, resp.text
    [got] = await sim_requests(up)
    assert got["raw"] == '{"stream_options":{"include_usage":true},' + sent[1:]
    assert "usage" not in resp.text.replace('"usage":null', "")  # the client did not ask for it


async def test_a_renamed_model_is_the_only_change_to_the_body(
    proxy: ProxyProcess, up: SimulatorServer
) -> None:
    sent = CLIENT_BODY % ("renamed", ', "stream_options": {"include_usage": true}')
    resp = await post(proxy, sent.encode())
    assert resp.status_code == 200, resp.text
    [got] = await sim_requests(up)
    assert got["raw"] == CLIENT_BODY % (UPSTREAM_NAME, ', "stream_options": {"include_usage": true}')


async def test_service_tier_flex_is_cut_out_and_nothing_else_changes(
    proxy: ProxyProcess, up: SimulatorServer
) -> None:
    options = ', "stream_options": {"include_usage": false}'
    sent = CLIENT_BODY % ("small", options + ', "service_tier": "flex"')
    resp = await post(proxy, sent.encode())
    assert resp.status_code == 200, resp.text
    [got] = await sim_requests(up)
    expected = CLIENT_BODY % ("small", ', "stream_options": {"include_usage": true}')
    assert got["raw"] == expected


# -- every deployment answers 429 -----------------------------------------------------------------------


async def test_when_every_deployment_answers_429_the_client_gets_429_with_the_shortest_wait(
    stack: tuple[ProxyProcess, dict[str, SimulatorServer]],
) -> None:
    proxy, sims = stack
    # The first deployment asks for the shorter wait, so "the last one's Retry-After" would be the longer.
    await set_faults(sims["a"], fail_next=100, error_status=429, retry_after_s=SHORT_WAIT_S)
    await set_faults(sims["b"], fail_next=100, error_status=429, retry_after_s=LONG_WAIT_S)
    body = b'{"model":"limited","messages":[{"role":"user","content":"hi"}]}'
    first = await post(proxy, body)
    later = [await post(proxy, body) for _ in range(3)]
    answers = [(r.status_code, r.json()["error"]["type"]) for r in (first, *later)]
    assert answers == [(429, "rate_limit_error")] * 4
    # The soonest deployment back (less the time this test took, which a busy machine may stretch).
    waits = [int(r.headers["retry-after"]) for r in (first, *later)]
    assert all(SHORT_WAIT_S - 60 <= wait <= SHORT_WAIT_S for wait in waits), waits
    for sim in (sims["a"], sims["b"]):  # each asked once, then left alone for its Retry-After
        assert (await sim_stats(sim))["requests_total"] == 1


# -- pure parts -----------------------------------------------------------------------------------------


def view(name: str, cooling_s: float = 0.0, *, failed: bool = False, limit: bool = False) -> DeploymentView:
    return DeploymentView(name, 0, None, False, cooling_s, failed, limit)


def test_deployments_held_out_by_429s_are_a_429_with_the_soonest_wait() -> None:
    held = choose_deployment([view("a", 40.0, limit=True), view("b", 12.5, limit=True)])
    assert held == NoChoice(True, 12.5, "a cooling down; b cooling down", rate_limited=True)
    # Tried in this request and held out since: their waits still count.
    tried = choose_deployment(
        [view("a", 40.0, failed=True, limit=True), view("b", 12.5, failed=True, limit=True)]
    )
    assert isinstance(tried, NoChoice)
    assert (tried.rate_limited, tried.retry_after_s) == (True, 12.5)
    # The deployment back soonest says why: out after failures is still a 503's cool-down.
    broken_first = choose_deployment([view("a", 40.0, limit=True), view("b", 5.0)])
    assert broken_first == NoChoice(True, 5.0, "a cooling down; b cooling down", rate_limited=False)


def test_a_circuit_a_429_opened_is_held_by_a_rate_limit_until_it_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10.0, max_cooldown_s=60.0)
    assert breaker.on_failure(0.0, breaker.on_dispatch(0.0), 30.0, rate_limited=True)
    assert breaker.rate_limited
    probe = breaker.on_dispatch(30.0)
    assert breaker.on_failure(30.0, probe)  # the probe failed otherwise: out for failures now
    assert not breaker.rate_limited
    assert breaker.on_failure(90.0, breaker.on_dispatch(90.0), 5.0, rate_limited=True)
    assert breaker.on_success(breaker.on_dispatch(95.0))
    assert not breaker.rate_limited


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


# Keys and strings full of what confuses a byte scanner: quotes, backslashes, brackets, the names read.
awkward = st.sampled_from(
    ["model", "user", "stream_options", "service_tier", 'q"[', "\\]}", "{{", 'x\\"y', "é", '\\\\"']
)
scalars = st.one_of(awkward, st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(
    st.one_of(st.none(), st.booleans(), scalars),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(awkward, inner, max_size=3),
    max_leaves=12,
)
objects = st.dictionaries(awkward, values, min_size=1, max_size=5)
spacing = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n ", "\t: ")])


def encoded(obj: dict[str, Any], seps: tuple[str, str], ascii_only: bool) -> bytes:
    return json.dumps(obj, separators=seps, ensure_ascii=ascii_only).encode()


@settings(max_examples=300)
@given(objects, spacing, st.booleans(), st.integers(1, 6))
def test_too_deep_agrees_with_a_parser(
    obj: dict[str, Any], seps: tuple[str, str], asc: bool, limit: int
) -> None:
    assert request_body.too_deep(encoded(obj, seps, asc), limit) == (depth(obj) > limit)


@settings(max_examples=300)
@given(objects, spacing, st.booleans(), st.sampled_from(["model", "service_tier", "stream_options", "new"]))
def test_splicing_changes_exactly_one_member(
    obj: dict[str, Any], seps: tuple[str, str], asc: bool, key: str
) -> None:
    body = encoded(obj, seps, asc)
    parsed = json.loads(body)  # exact integers, as the upstream should read them
    with_it = request_body.with_member(body, orjson.loads(body), key, {"include_usage": True})
    assert json.loads(with_it) == {**parsed, key: {"include_usage": True}}
    without = request_body.without_member(body, orjson.loads(body), key)
    assert json.loads(without) == {k: v for k, v in parsed.items() if k != key}


@settings(max_examples=300)
@given(st.lists(st.tuples(awkward, values), min_size=1, max_size=6), spacing)
def test_a_field_tokenyard_reads_is_refused_exactly_when_a_parser_sees_it_twice(
    pairs: list[tuple[str, Any]], seps: tuple[str, str]
) -> None:
    sep, colon = seps
    body = ("{" + sep.join(json.dumps(k) + colon + json.dumps(v) for k, v in pairs) + "}").encode()
    assert request_body.top_level_keys(body) == len(pairs)
    names = [k for k, _ in pairs if k in request_body.READ_FIELDS]
    twice = {k for k in names if names.count(k) > 1}
    if not twice:
        request_body.refuse_ambiguous(body, orjson.loads(body))
        return
    with pytest.raises(InvalidRequest) as refused:
        request_body.refuse_ambiguous(body, orjson.loads(body))
    assert refused.value.param in twice


def test_splicing_finds_a_key_spelled_with_escapes_by_re_encoding_exactly() -> None:
    body = b'{"mod\\u0065l":"a","n":123456789012345678901234567890}'
    spliced = request_body.with_member(body, orjson.loads(body), "model", "b")
    assert json.loads(spliced) == {"model": "b", "n": 123456789012345678901234567890}
