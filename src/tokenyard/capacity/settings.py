"""The capacity settings: a backend's ``sla:``, ``metrics_url:`` and ``engine:`` fields, and the top-level
``capacity:`` section (desired replicas and the actuator)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(gt=0, le=1)]
EngineProfile = Literal["auto", "vllm", "sglang", "tgi", "llamacpp"]
LEAD_INTERVALS: Final = 3  # the capacity planner's lock outlives a tick by this many intervals


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sla(_Strict):
    """A backend's latency SLA as targets: time to first token at a percentile, and the slowest per-stream
    decode rate allowed (inter-token time is its inverse). Either or both."""

    ttft_p95_ms: PositiveFloat | None = None
    min_stream_tokens_per_s: PositiveFloat | None = None
    # The share of requests that must meet the targets, in percent (95: the p95 TTFT, and the 5th
    # percentile of per-stream rates, must meet them).
    percentile: Annotated[float, Field(ge=50, lt=100)] = 95.0

    @model_validator(mode="after")
    def _some_target(self) -> Sla:
        if self.ttft_p95_ms is None and self.min_stream_tokens_per_s is None:
            raise ValueError("give ttft_p95_ms, min_stream_tokens_per_s or both")
        return self


class EngineMetrics(_Strict):
    """How a backend's engine metrics (``metrics_url``) are read and when the engine counts as saturated."""

    profile: EngineProfile = "auto"  # auto: recognised from the metric names
    interval_s: Annotated[float, Field(ge=0.5, le=300)] = 5.0
    # Older than this, the engine's figures are ignored and tokenyard's own in-flight count decides.
    stale_after_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    kv_cache_saturated: Share = 0.8  # KV-cache usage above this is saturation (llm-d's default)
    queue_saturated: Annotated[int, Field(ge=0)] = 0  # more requests waiting than this is saturation
    # Saturated only after this many fresh scrapes in a row say so (cleared by one that says not): vLLM's
    # waiting queue is briefly non-zero in normal batching; one scrape catching it must not spill traffic.
    saturated_after: Annotated[int, Field(ge=1, le=10)] = 2
    timeout_s: PositiveFloat = 2.0


def metrics_url_for(metrics_url: str | None, base_url: str | None) -> str | None:
    """The URL to scrape: ``auto`` is the base URL's scheme and host with ``/metrics``; None: not scraped."""
    if metrics_url is None:
        return None
    if metrics_url != "auto":
        return metrics_url
    if base_url is None:
        return None
    match = re.match(r"^(https?://[^/]+)", base_url)
    return f"{match.group(1)}/metrics" if match else None


class Actuator(_Strict):
    """Applies the desired replicas: POST the decision to a webhook, or run a command. Dry run by default."""

    kind: Literal["webhook", "command"]
    url: str | None = None  # webhook: where the decision is POSTed; its host must be in allow_hosts
    allow_hosts: list[str] = []
    secret: SecretStr | None = None  # webhook: signs the POST as callbacks are signed
    # command: the argv to run; "{backend}" and "{replicas}" in any argument are replaced.
    command: list[str] | None = None
    timeout_s: PositiveFloat = 30.0
    dry_run: bool = True  # decide and log, but do not act
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 10
    cooldown_s: Annotated[float, Field(ge=0)] = 300.0  # at least this long between two actions on a backend
    max_step: Annotated[int, Field(ge=1)] = 2  # replicas added or removed in one action at most
    backends: list[str] | None = None  # None: every dedicated backend

    @field_validator("secret")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _consistent(self) -> Actuator:
        if self.kind == "webhook" and not self.url:
            raise ValueError("a webhook actuator needs url")
        if self.kind == "webhook" and self.url:
            if not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError("url must be an http:// or https:// URL")
            host = (urlsplit(self.url).hostname or "").lower()
            if host not in {h.lower() for h in self.allow_hosts}:
                raise ValueError(f"the url's host {host!r} must be in allow_hosts")
        if self.kind == "command" and not self.command:
            raise ValueError("a command actuator needs command (an argv list)")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class EnvelopeSettings(_Strict):
    """How the measured envelope (concurrency → throughput per backend) is kept across proxy replicas."""

    # Each replica merges what it measured into the shared document this often.
    merge_interval_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    # Samples kept per backend; past this every sum is halved, so the envelope follows a changed engine.
    keep_samples: Annotated[int, Field(ge=100)] = 20_000


class CapacityConfig(_Strict):
    """The replicas each dedicated backend should run, how often that is decided, and who applies it."""

    interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Demand is read over this many recent minutes (the busiest counts) and the same minutes a week ago.
    window_minutes: Annotated[int, Field(ge=1, le=60)] = 5
    actuator: Actuator | None = None
    envelope: EnvelopeSettings = EnvelopeSettings()


def actuator_problems(capacity: CapacityConfig, kinds: Mapping[str, str]) -> list[tuple[str, str]]:
    """What the actuator section gets wrong against the backends (``kinds``: each backend's kind): names
    that point nowhere or at a backend without replicas, and a timeout that would outlast the planner's
    lead (the lock would move while it still acts, and a second replica would act too)."""
    actuator = capacity.actuator
    if actuator is None:
        return []
    problems: list[tuple[str, str]] = []
    for i, name in enumerate(actuator.backends or ()):
        kind = kinds.get(name)
        if kind is None:
            problems.append((f"capacity.actuator.backends.{i}", f"unknown backend {name!r}"))
        elif kind != "dedicated":
            problems.append(
                (f"capacity.actuator.backends.{i}", f"backend {name!r} is kind {kind}, not dedicated")
            )
    acting = (
        len(actuator.backends)
        if actuator.backends is not None
        else sum(1 for kind in kinds.values() if kind == "dedicated")
    )
    lead_s = capacity.interval_s * LEAD_INTERVALS
    if acting and actuator.timeout_s * acting >= lead_s:
        problems.append(
            (
                "capacity.actuator.timeout_s",
                f"{actuator.timeout_s:g} s x {acting} backend(s) must stay under the planner's lead of "
                f"{lead_s:g} s (capacity.interval_s x {LEAD_INTERVALS}): lower timeout_s or raise interval_s",
            )
        )
    return problems
