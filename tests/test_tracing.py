"""OpenTelemetry traces and the identity headers, end to end: a real ``tokenyard serve``, the openai SDK,
simulators as upstreams, and OTLP collectors (HTTP/protobuf and gRPC) that decode what arrives with
``opentelemetry-proto``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from tests.support.async_track import HELLO, MODEL, config_for, no_idle_dedicated, poll, post, sims, usage
from tests.support.config import ADMIN_KEY, CLIENT_KEY, UPSTREAM_SECRET, backend
from tests.support.net import free_port
from tests.support.otlp import Collector, ReceivedSpan, otlp_grpc_collector, otlp_http_collector
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.simulators import FAST_UPSTREAM, sim_requests, simulators
from tests.support.stores import sqlite_url
from tokenyard.config import TokenyardConfig, parse_config
from tokenyard.edge.reload import merged
from tokenyard.errors import ConfigError
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.tracing.export import SpanBuffer

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
ERROR = 2  # Status.code
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
KEYS = {"team-a": {"key": CLIENT_KEY}}


def traceparent(trace_id: str = CLIENT_TRACE, sampled: bool = True) -> str:
    return f"00-{trace_id}-{CLIENT_SPAN}-{'01' if sampled else '00'}"


def otlp(collector: Collector, **extra: Any) -> dict[str, Any]:
    protocol = "grpc" if not collector.url.endswith("/v1/traces") else "http/protobuf"
    return {"otlp": {"endpoint": collector.url, "protocol": protocol, "schedule_s": 0.05, **extra}}


def two_deployments(dead_url: str, api_url: str, **telemetry: Any) -> dict[str, Any]:
    """``llama`` on a serverless backend nobody answers at, then a simulator: every request fails over."""
    return {
        "server": {"admin_key": ADMIN_KEY},
        "backends": {
            "dead": backend("serverless", dead_url),
            "api": backend("serverless", api_url, prices={"input_per_1m": 1.0, "output_per_1m": 2.0}),
        },
        "models": {MODEL: {"deployments": ["dead", "api"]}},
        "keys": KEYS,
        "telemetry": telemetry,
    }


def one_backend(url: str, **telemetry: Any) -> dict[str, Any]:
    """``llama`` on one serverless simulator."""
    return {
        "server": {"admin_key": ADMIN_KEY},
        "backends": {"api": backend("serverless", url)},
        "models": {MODEL: {"deployments": ["api"]}},
        "keys": KEYS,
        "telemetry": telemetry,
    }


async def spans_of(collector: Collector, trace_id: str, count: int) -> list[ReceivedSpan]:
    async def arrived() -> None:
        assert len(collector.in_trace(trace_id)) >= count, collector.spans

    await eventually(arrived)
    return collector.in_trace(trace_id)


async def metered_cost(proxy: ProxyProcess) -> float:
    """The meter's total cost of the last hour, once one request is in it."""
    rows: list[dict[str, Any]] = []

    async def flushed() -> None:
        rows[:] = (await usage(proxy))["data"]
        assert rows

    await eventually(flushed)
    cost: float = rows[0]["cost_usd"]
    return cost


def one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


async def test_a_request_and_its_failover_reach_an_otlp_http_collector_in_the_clients_trace(
    tmp_path: Path,
) -> None:
    async with (
        otlp_http_collector() as collector,
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        running_proxy(
            two_deployments(f"http://127.0.0.1:{free_port()}/v1", s["api"].base_url, **otlp(collector)),
            tmp_path,
        ) as proxy,
        proxy.client(default_headers={"traceparent": traceparent()}) as client,
    ):
        completion = await client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        spans = await spans_of(collector, CLIENT_TRACE, 3)
        request = one(spans, kind=SERVER)
        assert request.name == f"chat {MODEL}"
        assert request.parent_span_id == CLIENT_SPAN  # the client's trace, continued
        attributes = request.attributes
        assert completion.usage is not None
        expected = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.provider.name": "openai",
            "gen_ai.usage.input_tokens": completion.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": completion.usage.completion_tokens,
            "tokenyard.tenant": "team-a",
            "tokenyard.key_id": "team-a",
            "tokenyard.backend": "api",
            "tokenyard.backend.kind": "serverless",
            "tokenyard.mode": "realtime",
            "tokenyard.mode.reason": "default",
            "tokenyard.route": "failover",
            "tokenyard.attempts": 2,
            "tokenyard.usage.estimated": False,
            "http.response.status_code": 200,
        }
        assert {k: attributes.get(k) for k in expected} == expected
        assert request.resource["service.name"] == "tokenyard"
        # The cost on the span is the meter's, to the pico-dollar.
        assert attributes["tokenyard.cost_usd"] == pytest.approx(await metered_cost(proxy))
        assert attributes["tokenyard.cost_pusd"] > 0
        # One child per attempt: the dead backend's failure, then the answer.
        dead = one(spans, kind=CLIENT, attributes={**_attempt(spans, "dead")})
        answered = one(spans, kind=CLIENT, attributes={**_attempt(spans, "api")})
        assert dead.parent_span_id == answered.parent_span_id == request.span_id
        assert dead.status_code == ERROR
        assert "cannot reach the upstream" in dead.attributes["tokenyard.error"]
        assert dead.attributes["tokenyard.attempt"] == 1
        assert answered.attributes["tokenyard.attempt"] == 2
        assert answered.attributes["http.response.status_code"] == 200
        assert request.start_ns <= dead.start_ns <= answered.start_ns <= answered.end_ns <= request.end_ns
        # The upstream got the context of the attempt that reached it: its own spans join the trace there.
        sent = [r for r in await sim_requests(s["api"]) if r["path"].endswith("/chat/completions")]
        assert sent[-1]["headers"]["traceparent"] == f"00-{CLIENT_TRACE}-{answered.span_id}-01"
        # The key's secret is in no span, nor the upstream's.
        for span in collector.spans:
            assert not {str(v) for v in span.attributes.values()} & {CLIENT_KEY, UPSTREAM_SECRET}


def _attempt(spans: list[ReceivedSpan], backend_name: str) -> dict[str, Any]:
    """The attributes of the attempt span on ``backend_name`` (for ``one``'s exact match)."""
    found = [s for s in spans if s.kind == CLIENT and s.attributes.get("tokenyard.backend") == backend_name]
    assert len(found) == 1, spans
    return found[0].attributes


async def test_a_stream_is_traced_to_its_last_byte_with_its_usage(tmp_path: Path) -> None:
    async with (
        otlp_http_collector() as collector,
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        running_proxy(
            two_deployments(f"http://127.0.0.1:{free_port()}/v1", s["api"].base_url, **otlp(collector)),
            tmp_path,
        ) as proxy,
        proxy.client() as client,
    ):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        streamed_usage = chunks[-1].usage
        assert streamed_usage is not None

        async def arrived() -> None:
            assert [span for span in collector.spans if span.kind == SERVER]

        await eventually(arrived)
        request = one(collector.spans, kind=SERVER)
        assert request.name == f"chat {MODEL}"
        assert request.parent_span_id == ""  # no client context: a trace of its own
        assert request.attributes["gen_ai.usage.output_tokens"] == streamed_usage.completion_tokens
        assert request.attributes["gen_ai.usage.input_tokens"] == streamed_usage.prompt_tokens
        answered = _attempt(collector.in_trace(request.trace_id), "api")
        assert answered["http.response.status_code"] == 200


async def test_an_async_jobs_wait_and_run_join_the_trace_of_the_request_that_queued_it(
    tmp_path: Path,
) -> None:
    async with otlp_http_collector() as collector, sims() as s:
        config = config_for(s, store=sqlite_url(tmp_path / "m.sqlite3"))
        config["telemetry"] = otlp(collector)
        async with running_proxy(config, tmp_path) as proxy:
            accepted = await post(
                proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async", traceparent=traceparent()
            )
            assert accepted.status_code == 202
            done = await poll(proxy, accepted.headers["location"])
            assert done.status_code == 200
            spans = await spans_of(collector, CLIENT_TRACE, 4)
            request = one(spans, kind=SERVER)
            assert request.attributes["tokenyard.mode"] == "async"
            assert request.attributes["tokenyard.mode.reason"] == "Prefer: respond-async"
            assert request.attributes["http.response.status_code"] == 202
            job_id = accepted.json()["id"]
            assert request.attributes["tokenyard.job_id"] == job_id
            wait = one(spans, name="tokenyard.job wait")
            run = one(spans, name="tokenyard.job idle_dedicated")
            assert wait.parent_span_id == run.parent_span_id == request.span_id
            assert wait.attributes["tokenyard.job_id"] == job_id
            assert wait.end_ns <= run.start_ns + 1_000_000  # the run starts when the wait ends (ms apart)
            assert run.attributes["tokenyard.mode"] == "async"
            assert run.attributes["tokenyard.backend"] == "ded"
            assert run.attributes["tokenyard.key_id"] == "team-a"
            attempt = one(spans, kind=CLIENT)
            assert attempt.parent_span_id == run.span_id
            sent = [r for r in await sim_requests(s["ded"]) if r["path"].endswith("/chat/completions")]
            assert sent[-1]["headers"]["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"


async def test_a_job_sent_to_a_provider_batch_gets_a_span_of_its_batch(tmp_path: Path) -> None:
    async with otlp_http_collector() as collector, sims(batch=SimulatorConfig(**FAST_UPSTREAM)) as s:
        config = no_idle_dedicated(tmp_path, s, sqlite_url(tmp_path / "m.sqlite3"))
        config["telemetry"] = otlp(collector)
        async with running_proxy(config, tmp_path) as proxy:
            accepted = await post(
                proxy, {"model": MODEL, "messages": HELLO}, Prefer="respond-async", traceparent=traceparent()
            )
            done = await poll(proxy, accepted.headers["location"])
            assert done.status_code == 200
            assert done.headers["x-tokenyard-path"] == "provider_batch"
            spans = await spans_of(collector, CLIENT_TRACE, 3)
            request = one(spans, kind=SERVER)
            batch = one(spans, name="tokenyard.job provider_batch")
            assert batch.parent_span_id == request.span_id
            assert batch.attributes["tokenyard.backend"] == "prov"
            assert batch.attributes["tokenyard.backend.kind"] == "batch"
            assert batch.attributes["gen_ai.usage.output_tokens"] == done.json()["usage"]["completion_tokens"]
            assert batch.attributes["tokenyard.cost_usd"] == pytest.approx(await metered_cost(proxy))
            assert one(spans, name="tokenyard.job wait").end_ns <= batch.start_ns


async def test_spans_go_over_grpc_with_the_configured_headers(tmp_path: Path) -> None:
    async with (
        otlp_grpc_collector() as collector,
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        running_proxy(
            one_backend(s["api"].base_url, **otlp(collector, headers={"x-api-key": "collector-secret-1"})),
            tmp_path,
        ) as proxy,
        proxy.client(default_headers={"traceparent": traceparent()}) as client,
    ):
        await client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        spans = await spans_of(collector, CLIENT_TRACE, 2)
        assert one(spans, kind=SERVER).attributes["tokenyard.backend"] == "api"
        assert collector.headers[0]["x-api-key"] == "collector-secret-1"
        assert "collector-secret-1" not in proxy.log()  # a header of the collector's is a secret


async def test_sampling_follows_the_clients_flag_and_the_ratio(tmp_path: Path) -> None:
    """At ratio 0 tokenyard starts no trace of its own, yet continues a client's sampled one; a client's
    unsampled context goes upstream as it came, and no span is made of it."""
    unsampled = traceparent("11111111111111111111111111111111", sampled=False)
    async with (
        otlp_http_collector() as collector,
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        running_proxy(
            one_backend(s["api"].base_url, **otlp(collector, sample_ratio=0)),
            tmp_path,
        ) as proxy,
        proxy.client() as client,
    ):
        await client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        await client.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"traceparent": unsampled},
        )
        await client.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"traceparent": traceparent()},
        )
        await spans_of(collector, CLIENT_TRACE, 2)  # spans are exported in order: the others came first
        assert {span.trace_id for span in collector.spans} == {CLIENT_TRACE}
        sent = [r["headers"] for r in await sim_requests(s["api"]) if r["path"].endswith("/chat/completions")]
        assert [h.get("traceparent", "")[:35] for h in sent[-3:]] == [
            "",
            unsampled[:35],
            f"00-{CLIENT_TRACE}",
        ]
        assert sent[-2]["traceparent"] == unsampled


async def test_with_the_collector_down_requests_succeed_and_every_span_is_counted_lost(
    tmp_path: Path,
) -> None:
    async with (
        simulators(api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        running_proxy(
            one_backend(
                s["api"].base_url,
                otlp={
                    "endpoint": f"http://127.0.0.1:{free_port()}/v1/traces",
                    "schedule_s": 0.05,
                    "timeout_s": 0.5,
                    "max_queue": 4,
                    "batch_size": 2,
                },
            ),
            tmp_path,
        ) as proxy,
        proxy.client() as client,
    ):
        for _ in range(10):
            completion = await client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
            assert completion.choices[0].message.content

        async def all_counted() -> None:
            counts = await span_counts(proxy.url)
            assert counts["exported"] == 0
            assert counts["failed"] + counts["dropped"] == 20  # a request span and an attempt span each

        await eventually(all_counted, timeout_s=30)
        # Said once when exports start failing (with the exporter's reason), not once a batch.
        said = [line for line in proxy.log().splitlines() if "opentelemetry" in line or "tracing:" in line]
        assert len([line for line in said if "the collector did not take" in line]) == 1, said
        assert len(said) <= 3, said


async def span_counts(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        text = (await http.get(f"{url}/metrics")).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "tokenyard_otel_spans")
    return {s.labels["outcome"]: s.value for s in family.samples if s.name == "tokenyard_otel_spans_total"}


# -- identity for the engines behind ------------------------------------------------------------------


async def test_the_callers_identity_goes_only_to_backends_that_take_it_and_clients_cannot_forge_it(
    tmp_path: Path,
) -> None:
    async with (
        simulators(engine=SimulatorConfig(**FAST_UPSTREAM), api=SimulatorConfig(**FAST_UPSTREAM)) as s,
        running_proxy(
            {
                "backends": {
                    "engine": backend("serverless", s["engine"].base_url, forward_identity=True),
                    "api": backend("serverless", s["api"].base_url),
                },
                "models": {MODEL: {"deployments": ["engine"]}, "other": {"deployments": ["api"]}},
                "keys": {"team-a": {"key": CLIENT_KEY, "tenant": "acme/ü"}},
                "telemetry": {"identity_headers": {"tenant": "X-Tenant"}},
            },
            tmp_path,
        ) as proxy,
        proxy.client(
            default_headers={
                "x-tenant": "forged",
                "x-tokenyard-tenant": "forged",
                "x-tokenyard-key-id": "forged",
            }
        ) as client,
    ):
        await client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        await client.chat.completions.create(model="other", messages=HELLO)  # type: ignore[arg-type]
        (engine,) = [r["headers"] for r in await sim_requests(s["engine"]) if r["method"] == "POST"]
        (api,) = [r["headers"] for r in await sim_requests(s["api"]) if r["method"] == "POST"]
        assert engine["x-tenant"] == "acme%2F%C3%BC"  # percent-encoded: a header value is ASCII
        assert engine["x-tokenyard-key-id"] == "team-a"
        assert "x-tokenyard-tenant" not in engine
        assert not {"x-tenant", "x-tokenyard-tenant", "x-tokenyard-key-id", "traceparent"} & set(api)
        assert "forged" not in {*engine.values(), *api.values()}


# -- configuration and the span buffer ----------------------------------------------------------------


def _config(**telemetry: Any) -> dict[str, Any]:
    return {
        "backends": {"api": backend("serverless", "http://127.0.0.1:9/v1")},
        "models": {MODEL: {"deployments": ["api"]}},
        "telemetry": telemetry,
    }


@pytest.mark.parametrize(
    ("telemetry", "path", "message"),
    [
        ({"otlp": {"endpoint": "collector:4318"}}, "telemetry.otlp.endpoint", "http:// or https:// URL"),
        ({"otlp": {"endpoint": "http://c:4318", "protocol": "thrift"}}, "telemetry.otlp.protocol", "grpc"),
        ({"otlp": {"endpoint": "http://c:4318", "sample_ratio": 1.5}}, "telemetry.otlp.sample_ratio", "1"),
        ({"identity_headers": {"tenant": "authorization"}}, "telemetry.identity_headers.tenant", "tokenyard"),
        ({"identity_headers": {"key_id": "x tenant"}}, "telemetry.identity_headers.key_id", "header name"),
        ({"identity_headers": {"tenant": "x-a", "key_id": "X-A"}}, "telemetry.identity_headers", "different"),
    ],
)
def test_bad_telemetry_settings_are_named_by_their_path(
    telemetry: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump(_config(**telemetry)))
    assert any(p == path and message in m for p, m in raised.value.problems), raised.value.problems


def test_a_bare_collector_address_gets_the_traces_path() -> None:
    config = TokenyardConfig.model_validate(_config(otlp={"endpoint": "http://collector:4318/"}))
    assert config.telemetry.otlp is not None
    assert config.telemetry.otlp.traces_url() == "http://collector:4318/v1/traces"
    grpc = TokenyardConfig.model_validate(_config(otlp={"endpoint": "http://c:4317", "protocol": "grpc"}))
    assert grpc.telemetry.otlp is not None
    assert grpc.telemetry.otlp.traces_url() == "http://c:4317"


def test_a_full_span_buffer_drops_new_spans_and_counts_them() -> None:
    buffer = SpanBuffer(max_queue=3, batch_size=2)
    provider = TracerProvider()
    provider.add_span_processor(buffer)
    tracer = provider.get_tracer("test")
    for i in range(5):
        tracer.start_span(f"s{i}").end()
    assert buffer.counts == {"exported": 0, "dropped": 2, "failed": 0}
    assert buffer.full.is_set()
    taken: list[ReadableSpan] = buffer.take()
    assert [s.name for s in taken] == ["s0", "s1"]  # oldest first, a batch at a time
    assert [s.name for s in buffer.take()] == ["s2"]
    assert buffer.take() == []


def test_traces_without_the_otel_extra_are_refused_at_start_naming_the_extra(tmp_path: Path) -> None:
    """OpenTelemetry is an optional extra: a config that asks for traces where it is not installed does not
    start (and a config that does not ask runs without it, as every other test's proxy could)."""
    file = tmp_path / "config.yaml"
    file.write_text(
        yaml.safe_dump({**_config(otlp={"endpoint": "http://127.0.0.1:9"}), "meter": {"store": "off"}})
    )
    without_otel = (
        "import sys; sys.modules['opentelemetry'] = None; from tokenyard.cli import main; sys.exit(main())"
    )
    for command in (["check-config", str(file)], ["serve", "--config", str(file), "--port", "0"]):
        ran = subprocess.run(
            [sys.executable, "-c", without_otel, *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 1, ran.stderr
        assert "telemetry.otlp: needs opentelemetry.sdk" in ran.stderr
        assert "pip install 'tokenyard[otel]'" in ran.stderr


def test_a_reload_that_changes_telemetry_waits_for_a_restart() -> None:
    """The tracer and the identity headers' names are built at start: a reload keeps them, and says so."""
    old = TokenyardConfig.model_validate(_config(otlp={"endpoint": "http://collector:4318"}))
    new = TokenyardConfig.model_validate(_config(identity_headers={"tenant": "x-team"}))
    kept, needs_restart = merged(old, new)
    assert needs_restart == ["telemetry"]
    assert kept.telemetry == old.telemetry
