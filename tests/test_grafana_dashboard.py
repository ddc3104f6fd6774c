"""The Grafana dashboard in deploy/ reads only what tokenyard publishes, and the compose stack wires it up.

Every PromQL expression's metric names and labels are checked against the ``/metrics`` of a real
``tokenyard serve`` running deploy/compose.yaml itself (its hosts pointed at simulators and the machine's
Redis) after a little traffic of each kind; the provisioning files, prometheus.yml and docker-compose.yml
are checked to point at one another. (No Docker engine runs here: compose itself is not started.)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import ADMIN_KEY, CLIENT_KEY
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, running_proxy
from tests.support.redis_servers import REDIS_URL, delete_prefix
from tests.support.simulators import FAST_UPSTREAM, USER_HELLO, simulators
from tests.support.stores import fresh_prefix
from tokenyard.simulator.config import SimulatorConfig

REPO = Path(__file__).parent.parent
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tokenyard.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "tokenyard.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}  # every panel and query reads through it

# Labels Prometheus adds to every series it scrapes: an expression may group by them whatever it reads.
TARGET_LABELS = frozenset({"instance", "job"})
FUNCTIONS = frozenset(
    {
        "abs", "avg_over_time", "ceil", "clamp_max", "clamp_min", "delta", "deriv", "floor",
        "histogram_quantile", "idelta", "increase", "irate", "max_over_time", "min_over_time", "rate",
        "round", "sum_over_time", "time", "vector",
    }
)  # fmt: skip
AGGREGATIONS = frozenset({"avg", "bottomk", "count", "max", "min", "quantile", "sum", "topk"})
KEYWORDS = frozenset({"and", "bool", "offset", "or", "unless"})
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


# -- reading PromQL ---------------------------------------------------------------------------------------


@dataclass
class Reads:
    """What one PromQL expression reads: metric names, the labels its selectors match on per metric, and
    the labels it groups or matches vectors by; ``unknown`` holds calls that are no PromQL function."""

    metrics: set[str] = field(default_factory=set)
    matched: dict[str, set[str]] = field(default_factory=dict)
    grouped: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)


def reads(expr: str) -> Reads:
    """Read an expression pragmatically (regexes, not a grammar): enough for the dashboard's queries."""
    found = Reads()
    text = re.sub(r"\$__\w+", "5m", expr)  # Grafana's intervals; $tenant and the like sit inside strings
    for selector in SELECTOR.finditer(text):
        metric, labels = selector.group(1) or "", set(MATCHER.findall(selector.group(2)))
        found.matched.setdefault(metric, set()).update(labels)
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    for grouping in GROUPING.finditer(text):
        found.grouped.update(label.strip() for label in grouping.group(1).split(",") if label.strip())
    text = GROUPING.sub(" ", text)
    for name, call in IDENTIFIER.findall(text):
        if call:
            if name not in FUNCTIONS | AGGREGATIONS:
                found.unknown.add(name)
        elif name not in KEYWORDS:
            found.metrics.add(name)
    return found


def problems(expr: str, exposed: dict[str, set[str]]) -> list[str]:
    """Why ``expr`` would draw nothing (or the wrong thing) against an exposition: a metric tokenyard does
    not publish, a label the metric does not carry, or a grouping label one of its metrics lacks (the
    grouping would silently fold those series together)."""
    found = reads(expr)
    wrong = [f"{name}() is no PromQL function" for name in sorted(found.unknown)]
    wrong += [f"{name} is not exposed" for name in sorted(found.metrics - exposed.keys())]
    for metric, labels in sorted(found.matched.items()):
        if metric in exposed and (missing := labels - exposed[metric]):
            wrong.append(f"{metric} has no label {', '.join(sorted(missing))}")
        elif not metric:
            wrong.append("a selector names no metric")
    for metric in sorted(found.metrics & exposed.keys()):
        if missing := found.grouped - exposed[metric] - TARGET_LABELS:
            wrong.append(f"grouped by {', '.join(sorted(missing))}, which {metric} does not carry")
    return wrong


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel that draws something (rows' own panels included, the rows left out)."""
    for panel in items:
        if panel["type"] == "row":
            yield from panels(panel.get("panels", []))
        else:
            yield panel


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard: its panels' targets and its variables' queries
    (``label_values(<selector>, <label>)`` is read as the selector grouped by the label)."""
    document = dashboard()
    for panel in panels(document["panels"]):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            call = LABEL_VALUES.match(variable["query"]["query"])
            assert call, f"variable {variable['name']}: {variable['query']['query']}"
            yield f"variable {variable['name']}", f"sum by ({call.group(2)}) ({call.group(1)})"


# -- the real exposition ----------------------------------------------------------------------------------


def compose_config(sims: dict[str, Any], prefix: str) -> dict[str, Any]:
    """deploy/compose.yaml as the compose stack runs it, with its secrets filled in, its upstream hosts
    pointed at the simulators of the same names, and its Redis at the machine's (a fresh prefix)."""
    text = (DEPLOY / "compose.yaml").read_text()
    text = text.replace("${TOKENYARD_ADMIN_KEY}", ADMIN_KEY).replace("${TEAM_A_KEY}", CLIENT_KEY)
    assert "${" not in text, "a variable the test does not fill in"
    config: dict[str, Any] = yaml.safe_load(text)
    for section in config["backends"].values():
        host = urlsplit(section["base_url"]).hostname
        section["base_url"] = sims[host].base_url
    config["server"]["host"] = "127.0.0.1"
    config["meter"].update(store=REDIS_URL, redis_prefix=prefix, flush_interval_s=0.2)
    return config


async def drive_traffic(proxy: ProxyProcess) -> None:
    """A little of everything the dashboard shows: real-time and streamed requests, an async one, a
    refused key, and an advice evaluation over what was metered."""
    async with proxy.client() as client:
        model = "llama-3.1-8b-instruct"
        await asyncio.gather(
            *(client.chat.completions.create(model=model, messages=USER_HELLO) for _ in range(4))
        )
        stream = await client.chat.completions.create(model=model, messages=USER_HELLO, stream=True)
        async for _ in stream:
            pass
        # Held: the dispatcher answers it (on idle dedicated capacity) and counts it by path.
        await client.chat.completions.create(
            model=model, messages=USER_HELLO, extra_headers={"x-tokenyard-mode": "async"}
        )
    async with proxy.client(key="sk-not-a-key-0123456789") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="llama-3.1-8b-instruct", messages=USER_HELLO)

    async def advised() -> None:
        advice = await proxy.admin("/admin/advice", fresh="1")
        assert [w["requests"] for w in advice["workloads"]] == [6]  # every flush landed first

    await eventually(advised, timeout_s=30)


def exposition_labels(text: str) -> dict[str, set[str]]:
    """Each sample name in a /metrics page (``_total``, ``_bucket`` … as Prometheus stores them) and the
    labels its samples carry."""
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    return exposed


# One series of each kind the traffic or a background loop feeds: once all are on the page, so is the rest.
SOURCES = frozenset(
    {
        "tokenyard_tokens_total",  # the meter's totals (the traffic)
        "tokenyard_rejected_requests_total",  # the refused key
        "tokenyard_gpu_cost_usd_total",  # the dedicated backend's GPU time
        "tokenyard_async_jobs_answered_total",  # the dispatcher's answer to the held request
        "tokenyard_async_jobs",  # the queue's state, read every few seconds
        "tokenyard_engine_kv_cache_usage_ratio",  # the engine scraper (metrics_url)
        "tokenyard_desired_replicas",  # the capacity planner's first tick
        "tokenyard_advisor_potential_saving_usd_per_day",  # the advice
    }
)


@pytest_asyncio.fixture(scope="module")
async def exposed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, set[str]]]:
    """The sample names and labels on the compose config's /metrics once every source has published."""
    prefix, tmp = fresh_prefix(), tmp_path_factory.mktemp("grafana")
    seen: dict[str, set[str]] = {}
    dedicated = SimulatorConfig(mode="dedicated", max_concurrency=8, **FAST_UPSTREAM)
    try:
        async with (
            simulators(
                **{"sim-dedicated": dedicated, "sim-serverless": SimulatorConfig(**FAST_UPSTREAM)}
            ) as s,
            running_proxy(compose_config(s, prefix), tmp) as proxy,
            httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http,
        ):
            await drive_traffic(proxy)

            async def every_source_published() -> None:
                got = await http.get(f"{proxy.url}/metrics")
                assert got.status_code == 200, got.text
                seen.clear()
                seen.update(exposition_labels(got.text))
                assert SOURCES - seen.keys() == set()

            await eventually(every_source_published, timeout_s=30)
            yield seen
    finally:
        await delete_prefix(prefix)


# -- the dashboard ----------------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_with_a_stable_uid() -> None:
    document = dashboard()
    assert document["uid"] == "tokenyard"  # links to it survive re-provisioning
    assert document["schemaVersion"] >= 39
    assert "id" not in document or document["id"] is None  # Grafana assigns it
    titles = [panel["title"] for panel in document["panels"] if panel["type"] == "row"]
    assert titles == ["Spend", "Dedicated GPUs", "Replicas", "Async track", "Advisor", "Requests"]
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    document = dashboard()
    [variable] = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    for panel in panels(document["panels"]):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_tenant_and_model_filter_every_query_of_a_metric_that_carries_them(
    exposed: dict[str, set[str]],
) -> None:
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"tenant", "model"} <= names
    for where, expr in expressions():
        for metric in reads(expr).metrics:
            if {"tenant", "model"} <= exposed.get(metric, set()) and where.startswith("panel"):
                assert 'tenant=~"$tenant"' in expr, where
                assert 'model=~"$model"' in expr, where


def test_every_query_reads_only_metrics_and_labels_tokenyard_exposes(exposed: dict[str, set[str]]) -> None:
    wrong = {where: found for where, expr in expressions() if (found := problems(expr, exposed))}
    assert wrong == {}


def test_the_reading_catches_a_misspelled_metric_label_or_function(exposed: dict[str, set[str]]) -> None:
    """The check above can fail: each slip below is one the dashboard could make."""
    assert (
        problems('sum by (tenant) (rate(tokenyard_token_cost_usd_total{model=~"$model"}[5m]))', exposed) == []
    )
    assert problems("sum(rate(tokenyard_token_cost_usd[$__rate_interval]))", exposed) == [
        "tokenyard_token_cost_usd is not exposed"  # a counter is stored with _total
    ]
    assert problems('max(tokenyard_desired_replicas{horizon="now", tenant="a"})', exposed) == [
        "tokenyard_desired_replicas has no label tenant"
    ]
    assert problems("sum by (tenant) (tokenyard_gpu_cost_usd_total)", exposed) == [
        "grouped by tenant, which tokenyard_gpu_cost_usd_total does not carry"
    ]
    assert problems("ratee(tokenyard_requests_total[5m])", exposed) == ["ratee() is no PromQL function"]


def test_the_panels_cover_what_the_issue_asks_for() -> None:
    read = set().union(*(reads(expr).metrics for _, expr in expressions()))
    assert {
        "tokenyard_token_cost_usd_total",  # spend by tenant and model
        "tokenyard_gpu_cost_usd_total",  # GPU spend and, with utilization, idle cost
        "tokenyard_backend_in_flight",
        "tokenyard_backend_max_concurrency",
        "tokenyard_async_jobs",  # the async queue
        "tokenyard_async_oldest_job_age_seconds",
        "tokenyard_async_jobs_answered_total",
        "tokenyard_advisor_potential_saving_usd_per_day",  # the advisor's saving
        "tokenyard_desired_replicas",  # desired replicas beside running
        "tokenyard_backend_replicas",
        "tokenyard_request_duration_seconds_bucket",
    } <= read


# -- the compose stack ------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts from the repository: container path → repository path (``:ro`` required)."""
    found = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("./"):
            assert mode == ["ro"], volume
            found[target] = source.removeprefix("./")
    return found


def test_grafana_is_provisioned_from_the_repository_with_the_datasource_the_dashboard_names() -> None:
    grafana = compose()["services"]["grafana"]
    mounted = mounts(grafana)
    assert mounted["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert datasource["uid"] == variable["current"]["value"] == "prometheus"
    assert datasource["type"] == "prometheus"
    host, port = urlsplit(datasource["url"]).hostname, urlsplit(datasource["url"]).port
    assert host in compose()["services"]
    assert port == 9090  # Prometheus listens there in its container
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert (REPO / mounted[provider["options"]["path"]] / DASHBOARD.name).is_file()
    environment = grafana["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    home = Path(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert REPO / mounted[str(home.parent)] / home.name == DASHBOARD


def test_prometheus_scrapes_every_tokenyard_replica_with_the_admin_key() -> None:
    stack = compose()
    prometheus = stack["services"]["prometheus"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"] == "deploy/prometheus.yml"
    [job] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    replicas = {
        name
        for name, service in stack["services"].items()
        if "TOKENYARD_CONFIG" in (service.get("environment") or {})
    }
    assert replicas == {"tokenyard-1", "tokenyard-2", "tokenyard-3"}
    # The port the replicas listen on: the Dockerfile's command line, which overrides server.port.
    port = re.search(r'"--port", "(\d+)"', (REPO / "Dockerfile").read_text())
    assert port
    [static] = job["static_configs"]
    assert sorted(static["targets"]) == sorted(f"{name}:{port.group(1)}" for name in replicas)
    # /metrics needs the admin key: a compose secret made from the variable tokenyard's config reads it from.
    authorization = job["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    secret = Path(authorization["credentials_file"])
    assert secret.parent == Path("/run/secrets")
    assert secret.name in prometheus["secrets"]
    assert stack["secrets"][secret.name] == {"environment": "TOKENYARD_ADMIN_KEY"}
    assert (
        "${TOKENYARD_ADMIN_KEY}"
        in yaml.safe_load((DEPLOY / "compose.yaml").read_text())["server"]["admin_key"]
    )


def test_prometheus_and_grafana_publish_their_ports_on_loopback_only() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        ports = services[name]["ports"]
        assert ports, name
        assert all(port.startswith("127.0.0.1:") for port in ports), name
