"""Desired replicas and the actuator's guardrails, as pure decisions: hand-worked numbers, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.support.config import backend
from tokenyard.capacity.actuator import plan_step
from tokenyard.capacity.desired import (
    CapacityEstimate,
    Floor,
    MinuteDemand,
    advice_floor,
    decide,
    demand_by_backend,
    first_answer,
    limit_source,
)
from tokenyard.capacity.settings import Actuator
from tokenyard.config import TokenyardConfig, parse_config
from tokenyard.errors import ConfigError
from tokenyard.meter.model import AggKey

T = 1_800_000_000


def config(**capacity: Any) -> TokenyardConfig:
    return TokenyardConfig.model_validate(config_tree(**capacity))


def config_tree(**capacity: Any) -> dict[str, Any]:
    return {
        "backends": {
            "ded-a": backend("dedicated", "http://127.0.0.1:9/v1", sla={"min_stream_tokens_per_s": 30}),
            "ded-b": backend("dedicated", "http://127.0.0.1:9/v1"),
            "api": backend("serverless", "http://127.0.0.1:9/v1"),
        },
        "models": {
            "big": {"deployments": ["ded-a", "ded-b", "api"]},
            "small": {"deployments": ["ded-a", "api"]},
            "other": {"deployments": ["api"]},
        },
        "capacity": capacity,
    }


def row(minute: int, model: str, *, completion: int, prompt: int = 0, mode: str = "realtime") -> Any:
    fields = {"completion_tokens": completion, "prompt_tokens": prompt, "cached_tokens": 0}
    return AggKey(minute, "t", model, "api", "serverless", mode), fields


def test_demand_is_the_models_realtime_tokens_split_among_its_dedicated_backends() -> None:
    rows = [
        row(T, "big", completion=1200, prompt=600),  # two dedicated backends: 600 each
        row(T, "small", completion=300),  # ded-a alone
        row(T, "big", completion=9999, mode="async"),  # async work fills idle capacity: not demand
        row(T, "other", completion=5000),  # no dedicated backend
        row(T + 60, "big", completion=60),
    ]
    demand = demand_by_backend(config(), rows)
    assert demand["ded-a"] == [MinuteDemand(T, 300, 0, 900), MinuteDemand(T + 60, 0, 0, 30)]
    assert demand["ded-b"] == [MinuteDemand(T, 300, 0, 600), MinuteDemand(T + 60, 0, 0, 30)]


MEASURED = CapacityEstimate(600.0, "measured")  # 600 output tok/s per replica at the SLA


def test_now_is_the_busiest_recent_minute_over_capacity_rounded_up() -> None:
    recent = [MinuteDemand(T, completion=60 * 900), MinuteDemand(T + 60, completion=60 * 1500)]
    got = decide(
        "ded-a", recent=recent, week_ago=[], capacity=MEASURED, floor=None, bounds=(1, 10), provisioned=1
    )
    assert (got.now, got.next) == (3, 3)  # 1500 / 600 = 2.5
    assert got.inputs["demand"]["now"] == {"completion_tokens_per_s": 1500.0, "replicas": 2.5}
    assert "capacity 600 output tok/s per replica: measured" in got.reasons


def test_exactly_full_replicas_need_no_extra_one() -> None:
    recent = [MinuteDemand(T, completion=60 * 1200)]
    got = decide(
        "ded-a", recent=recent, week_ago=[], capacity=MEASURED, floor=None, bounds=(0, 10), provisioned=1
    )
    assert got.now == 2


def test_next_takes_the_coming_minutes_a_week_ago_when_they_were_busier() -> None:
    recent = [MinuteDemand(T, completion=60 * 500)]
    week_ago = [MinuteDemand(T - 7 * 86400 + 60, completion=60 * 2000)]
    got = decide(
        "ded-a",
        recent=recent,
        week_ago=week_ago,
        capacity=MEASURED,
        floor=None,
        bounds=(1, 10),
        provisioned=1,
    )
    assert (got.now, got.next) == (1, 4)
    quiet_week = [MinuteDemand(T - 7 * 86400, completion=60 * 100)]
    got = decide(
        "ded-a",
        recent=recent,
        week_ago=quiet_week,
        capacity=MEASURED,
        floor=None,
        bounds=(1, 10),
        provisioned=1,
    )
    assert (got.now, got.next) == (1, 1)  # never fewer next than now


def test_a_catalog_figure_adds_the_prompts_prefill() -> None:
    catalog = CapacityEstimate(1000.0, "catalog × cap", input_tokens_per_s=10_000.0, cached_input_work=0.1)
    # 1000 output tok/s = 1 replica; 6000 uncached + 10000 cached prompt tok/s = (6000 + 1000) / 10000 = 0.7.
    minute = MinuteDemand(T, prompt=60 * 16_000, cached=60 * 10_000, completion=60 * 1000)
    assert catalog.replicas_for(minute) == pytest.approx(1.7)
    got = decide(
        "ded-a", recent=[minute], week_ago=[], capacity=catalog, floor=None, bounds=(1, 10), provisioned=1
    )
    assert got.now == 2


def test_bounds_and_the_advisors_floor() -> None:
    recent = [MinuteDemand(T, completion=60 * 60)]
    floor = Floor(3, "the advisor's advice")
    got = decide(
        "ded-a", recent=recent, week_ago=[], capacity=MEASURED, floor=floor, bounds=(1, 10), provisioned=1
    )
    assert (got.now, got.next) == (3, 3)
    assert any(r.startswith("at least 3: the advisor's advice") for r in got.reasons)
    huge = [MinuteDemand(T, completion=60 * 60_000)]
    got = decide(
        "ded-a", recent=huge, week_ago=[], capacity=MEASURED, floor=None, bounds=(1, 10), provisioned=1
    )
    assert (got.now, got.next) == (10, 10)
    assert "bounded to 1..10 replicas" in got.reasons
    idle = decide(
        "ded-a", recent=[], week_ago=[], capacity=MEASURED, floor=None, bounds=(1, 10), provisioned=4
    )
    assert (idle.now, idle.next) == (1, 1)
    assert "no real-time demand in the recent minutes" in idle.reasons


def test_no_capacity_figure_no_desired_count() -> None:
    got = decide("ded-a", recent=[], week_ago=[], capacity=None, floor=None, bounds=(1, 10), provisioned=1)
    assert (got.now, got.next) == (None, None)
    assert "no capacity figure" in got.reasons[0]


def test_capacity_sources_answer_in_order_and_the_sla_rate_needs_a_limit() -> None:
    cfg = config()
    by_limit = limit_source(lambda: cfg, {"ded-a": 20, "ded-b": 20}.get, "learned limit")
    assert by_limit("ded-a") == CapacityEstimate(600.0, "learned limit 20 × SLA 30 tok/s per stream")
    assert by_limit("ded-b") is None  # no SLA rate
    chain = first_answer(lambda name: None, by_limit, lambda name: MEASURED)
    assert chain("ded-a") is not None
    assert chain("ded-a").source.startswith("learned limit")
    assert chain("ded-b") is MEASURED


def advice(model: str, architecture: str, replicas: float, gpu: str = "1×H100-80GB") -> dict[str, Any]:
    plan = {
        "architecture": architecture,
        "realtime_architecture": architecture,
        "gpu": gpu,
        "replicas": replicas,
    }
    return {"workload": model, "model": model, "recommended": plan}


def test_the_advisors_plan_is_a_floor_on_the_backends_replica_shape() -> None:
    cfg = config()
    hybrid = {"workloads": [advice("big", "hybrid", 2.0), advice("small", "hybrid", 1.0)]}
    floor = advice_floor(cfg, "ded-a", hybrid)
    assert floor is not None
    assert floor.replicas == 3
    assert advice_floor(cfg, "ded-b", hybrid) == Floor(
        2, floor.reason.replace("; small: hybrid plan keeps 1", "")
    )
    autoscaled = {"workloads": [advice("big", "dedicated_autoscaled", 3.7)]}
    assert advice_floor(cfg, "ded-b", autoscaled).replicas == 1  # type: ignore[union-attr]  # its minimum
    elsewhere = {"workloads": [advice("big", "hybrid", 4.0, gpu="2×A100-80GB")]}
    assert advice_floor(cfg, "ded-b", elsewhere) is None
    assert advice_floor(cfg, "ded-b", {"workloads": [advice("big", "serverless", 0.0, gpu="")]}) is None
    assert advice_floor(cfg, "ded-b", None) is None


GUARDS = Actuator(
    kind="command", command=["true"], min_replicas=1, max_replicas=8, cooldown_s=300, max_step=2
)


def test_the_step_is_bounded_by_max_step_and_the_replica_bounds() -> None:
    step = plan_step(7, 1, settings=GUARDS, last_action_at=None, now=T)
    assert (step.target, step.reason) == (3, "scale out 1 → 3 (desired 7), at most 2 per step")
    step = plan_step(20, 7, settings=GUARDS, last_action_at=None, now=T)
    assert (step.target, step.reason) == (8, "scale out 7 → 8 (desired 20, bounded to 8)")
    step = plan_step(0, 5, settings=GUARDS, last_action_at=None, now=T)
    assert (step.target, step.reason) == (3, "scale in 5 → 3 (desired 0, bounded to 1), at most 2 per step")
    assert plan_step(4, 4, settings=GUARDS, last_action_at=None, now=T).target is None


def test_nothing_changes_within_the_cool_down() -> None:
    held = plan_step(5, 2, settings=GUARDS, last_action_at=T - 100, now=T)
    assert (held.target, held.reason) == (None, "cool-down: 200 s before the next change (desired 5)")
    assert plan_step(5, 2, settings=GUARDS, last_action_at=T - 300, now=T).target == 4


@given(
    desired=st.integers(0, 50),
    provisioned=st.integers(0, 50),
    least=st.integers(0, 10),
    span=st.integers(0, 20),
    max_step=st.integers(1, 5),
)
def test_a_step_moves_toward_the_bounded_goal_by_at_most_max_step(
    desired: int, provisioned: int, least: int, span: int, max_step: int
) -> None:
    guards = Actuator(
        kind="command",
        command=["true"],
        min_replicas=least,
        max_replicas=max(1, least + span),
        max_step=max_step,
    )
    goal = min(guards.max_replicas, max(guards.min_replicas, desired))
    step = plan_step(desired, provisioned, settings=guards, last_action_at=None, now=T)
    if goal == provisioned:
        assert step.target is None
    else:
        assert step.target is not None
        assert 1 <= abs(step.target - provisioned) <= max_step
        assert abs(goal - step.target) < abs(goal - provisioned)


@pytest.mark.parametrize(
    ("actuator", "problem"),
    [
        ({"kind": "webhook"}, "a webhook actuator needs url"),
        (
            {"kind": "webhook", "url": "https://scaler.internal/hook", "allow_hosts": ["other.internal"]},
            "the url's host 'scaler.internal' must be in allow_hosts",
        ),
        ({"kind": "webhook", "url": "ftp://scaler.internal/", "allow_hosts": ["scaler.internal"]}, "http://"),
        ({"kind": "command"}, "a command actuator needs command"),
        ({"kind": "command", "command": ["true"], "min_replicas": 5, "max_replicas": 2}, "min_replicas"),
    ],
)
def test_an_actuator_that_could_not_act_safely_is_refused_at_start_up(
    actuator: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=r"capacity\.actuator: ") as raised:
        parse_config(yaml.safe_dump(config_tree(actuator=actuator)), env={})
    assert problem in str(raised.value)


def test_an_allow_listed_webhook_is_accepted_and_dry_run_is_the_default() -> None:
    actuator = {
        "kind": "webhook",
        "url": "https://Scaler.internal:8443/hook",
        "allow_hosts": ["scaler.internal"],
    }
    parsed = parse_config(yaml.safe_dump(config_tree(actuator=actuator)), env={}).capacity.actuator
    assert parsed is not None
    assert parsed.dry_run is True


@pytest.mark.parametrize(
    ("actuator", "problem"),
    [
        ({"backends": ["ded-c"]}, "capacity.actuator.backends.0: unknown backend 'ded-c'"),
        ({"backends": ["ded-a", "api"]}, "capacity.actuator.backends.1: backend 'api' is kind serverless"),
        # Two dedicated backends acted on one after the other, 45 s each, reach the lead (30 s x 3).
        ({"timeout_s": 45}, "capacity.actuator.timeout_s: 45 s x 2 backend(s) must stay under"),
        ({"timeout_s": 10, "backends": ["ded-a"]}, None),  # interval_s 3: a lead of 9 s
    ],
)
def test_an_actuator_naming_no_dedicated_backend_or_outlasting_the_lead_is_refused(
    actuator: dict[str, Any], problem: str | None
) -> None:
    settings = {"kind": "command", "command": ["true"], **actuator}
    capacity = {"actuator": settings} | ({"interval_s": 3} if problem is None else {})
    tree = config_tree(**capacity)
    if problem is None:
        with pytest.raises(ConfigError, match=r"capacity\.actuator\.timeout_s: 10 s x 1 backend"):
            parse_config(yaml.safe_dump(tree), env={})
        tree["capacity"]["interval_s"] = 4  # a lead of 12 s: 10 s fits
        assert parse_config(yaml.safe_dump(tree), env={}).capacity.actuator is not None
        return
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump(tree), env={})
    assert problem in str(raised.value)
