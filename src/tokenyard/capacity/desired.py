"""The replicas each dedicated backend should run, now and for the next interval (pure: no I/O, no clock).

For one dedicated backend, from three inputs:

- **demand**: the real-time tokens its model(s) were asked for, per minute, read from the meter's aggregates
  (every backend of the model counts, spillover included: traffic a full dedicated backend spilled is
  traffic it would have served with more replicas). A model with several dedicated backends splits its
  demand evenly among them; a backend serving several public models takes its share of each.
  *now* is the busiest of the last ``window_minutes``; *next* is the larger of that and the busiest of the
  coming minutes one week ago (the time-of-week profile: the Monday-morning ramp is known on Sunday
  night). The coming minutes are ``max(window_minutes, advisor.autoscaling.scale_out_lead_min)``: a
  replica asked for now serves only after the lead time.
- **capacity per replica** at the SLA, from a ``CapacitySource`` (the first of a chain that answers: the
  measured envelope, the learned limit × the SLA's per-stream rate, the catalog figure × the utilization
  cap). Demand over capacity, rounded up, is the replicas needed.
- **a floor** from the advisor's stored advice: a hybrid or peak-sized plan on this backend's replica
  shape keeps its N always-on replicas; an autoscaled plan keeps ``advisor.autoscaling.min_replicas``.

Then bounded by the actuator's ``min_replicas``/``max_replicas`` (or, without an actuator, at least the
advisor's autoscaling minimum). Every step is said in ``reasons``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenyard.config import TokenyardConfig
from tokenyard.meter.model import AggKey

MINUTE_S = 60
WEEK_S = 7 * 86_400
_EPSILON = 1e-9  # demand exactly at a whole number of replicas needs that many, not one more


@dataclass(frozen=True, slots=True)
class CapacityEstimate:
    """What one replica of a backend serves within its SLA, and where the figure comes from."""

    output_tokens_per_s: float  # aggregate generation rate over all its streams
    source: str  # in words, for the reasons: "learned limit 20 × SLA 30 tok/s per stream"
    # None: measured on the real traffic, whose prompts the figure already pays for. Otherwise prefill
    # throughput: a minute's prompts add their own load (the catalog's two-figure model).
    input_tokens_per_s: float | None = None
    cached_input_work: float = 0.1  # a prompt-cache hit's work relative to an uncached prompt token

    def replicas_for(self, demand: MinuteDemand) -> float:
        """Replicas (fractional) one minute of demand keeps busy at this capacity."""
        load_s = demand.completion / self.output_tokens_per_s
        if self.input_tokens_per_s is not None:
            uncached = demand.prompt - demand.cached
            load_s += (uncached + demand.cached * self.cached_input_work) / self.input_tokens_per_s
        return load_s / MINUTE_S


class CapacitySource(Protocol):
    """Capacity per replica of a backend at its SLA; None when this source has no figure for it."""

    def __call__(self, backend: str) -> CapacityEstimate | None: ...


def first_answer(*sources: CapacitySource) -> CapacitySource:
    """A source asking each of ``sources`` in order (best first) and taking the first figure."""

    def ask(backend: str) -> CapacityEstimate | None:
        for source in sources:
            estimate = source(backend)
            if estimate is not None:
                return estimate
        return None

    return ask


def limit_source(
    config: Callable[[], TokenyardConfig], per_replica_limit: Callable[[str], int | None], what: str
) -> CapacitySource:
    """Capacity = a per-replica concurrency limit × the SLA's slowest allowed per-stream rate: at that
    limit every stream still decodes at least that fast. ``what`` names the limit ("learned limit")."""

    def ask(backend: str) -> CapacityEstimate | None:
        section = config().backends.get(backend)
        rate = section.sla.min_stream_tokens_per_s if section and section.sla else None
        limit = per_replica_limit(backend)
        if rate is None or not limit:
            return None
        return CapacityEstimate(limit * rate, f"{what} {limit} × SLA {rate:g} tok/s per stream")

    return ask


def fixed_source(estimates: Callable[[], Mapping[str, CapacityEstimate]]) -> CapacitySource:
    """Capacity from a table computed elsewhere (the catalog's figures × the utilization cap)."""
    return lambda backend: estimates().get(backend)


@dataclass(frozen=True, slots=True)
class MinuteDemand:
    """The real-time tokens one backend's share of demand was in one minute."""

    minute: int
    prompt: float = 0.0
    cached: float = 0.0
    completion: float = 0.0


def dedicated_backends(config: TokenyardConfig) -> list[str]:
    """The backends replicas are decided for, in config order."""
    return [name for name, backend in config.backends.items() if backend.kind == "dedicated"]


def demand_by_backend(
    config: TokenyardConfig, rows: Iterable[tuple[AggKey, Mapping[str, int]]]
) -> dict[str, list[MinuteDemand]]:
    """Per dedicated backend, its share of its models' real-time demand in each minute of ``rows``."""
    shares: dict[str, list[tuple[str, float]]] = defaultdict(list)  # model -> (backend, share)
    for model_name, model in config.models.items():
        dedicated = [b for b in model.deployments if config.backends[b].kind == "dedicated"]
        for name in dedicated:
            shares[model_name].append((name, 1 / len(dedicated)))
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for key, fields in rows:
        if key.mode != "realtime":
            continue
        for name, share in shares.get(key.model, ()):
            row = sums[(name, key.minute)]
            row[0] += fields.get("prompt_tokens", 0) * share
            row[1] += fields.get("cached_tokens", 0) * share
            row[2] += fields.get("completion_tokens", 0) * share
    out: dict[str, list[MinuteDemand]] = {name: [] for name in dedicated_backends(config)}
    for (name, minute), (prompt, cached, completion) in sorted(sums.items()):
        out[name].append(MinuteDemand(minute, prompt, cached, completion))
    return out


@dataclass(frozen=True, slots=True)
class Floor:
    """The fewest replicas the advisor's plan keeps on a backend, and why."""

    replicas: int
    reason: str


def advice_floor(config: TokenyardConfig, backend: str, advice: Mapping[str, Any] | None) -> Floor | None:
    """The advisor's plan for the backend's model(s) as a floor: a hybrid or peak-sized plan on this
    backend's replica shape keeps its N replicas (summed over the workloads of a per-tenant advice), an
    autoscaled one its minimum. None: no advice, or a plan that keeps nothing here."""
    if not advice:
        return None
    section = config.backends[backend]
    label = f"{section.gpus_per_replica}×{section.gpu_type}"
    models = {name for name, model in config.models.items() if backend in model.deployments}
    total, parts = 0, []
    for workload in advice.get("workloads", []):
        if workload.get("model") not in models:
            continue
        plan = workload.get("recommended") or {}
        architecture = plan.get("realtime_architecture") or plan.get("architecture")
        if plan.get("gpu") != label:
            continue
        if architecture in ("hybrid", "dedicated"):
            n = round(plan.get("replicas") or 0)
            parts.append(f"{workload['workload']}: {architecture} plan keeps {n}")
        elif architecture == "dedicated_autoscaled":
            n = config.advisor.autoscaling.min_replicas
            parts.append(f"{workload['workload']}: autoscaled plan keeps at least {n}")
        else:
            continue
        total += n
    if not parts:
        return None
    return Floor(total, f"the advisor's advice on {label} ({'; '.join(parts)})")


@dataclass(frozen=True, slots=True)
class Desired:
    """The replicas one backend should run now and in the next interval (None: unknown), and why."""

    backend: str
    now: int | None
    next: int | None
    reasons: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As ``GET /admin/capacity`` shows it."""
        return {
            "backend": self.backend,
            "desired": {"now": self.now, "next": self.next},
            "reasons": self.reasons,
            "inputs": self.inputs,
        }


def _busiest(demand: Sequence[MinuteDemand], capacity: CapacityEstimate) -> tuple[float, MinuteDemand | None]:
    """The most replicas any minute of ``demand`` needed, and that minute."""
    best, at = 0.0, None
    for minute in demand:
        needed = capacity.replicas_for(minute)
        if needed > best:
            best, at = needed, minute
    return best, at


def _tokens_per_s(minute: MinuteDemand | None) -> float:
    return 0.0 if minute is None else round(minute.completion / MINUTE_S, 3)


def decide(
    backend: str,
    *,
    recent: Sequence[MinuteDemand],
    week_ago: Sequence[MinuteDemand],
    capacity: CapacityEstimate | None,
    floor: Floor | None,
    bounds: tuple[int, int],
    provisioned: int,
) -> Desired:
    """Desired replicas of ``backend``: ``recent`` is the last minutes' demand, ``week_ago`` the coming
    minutes' a week ago; ``bounds`` (least, most) the guardrails; ``provisioned`` what runs now."""
    inputs: dict[str, Any] = {"provisioned": provisioned, "bounds": list(bounds)}
    if capacity is None:
        reason = "no capacity figure for it (no envelope, learned limit with an SLA rate, or catalog entry)"
        return Desired(backend, None, None, [reason], inputs)
    needed_now, peak_now = _busiest(recent, capacity)
    needed_week, peak_week = _busiest(week_ago, capacity)
    inputs |= {
        "capacity": {
            "output_tokens_per_s_per_replica": round(capacity.output_tokens_per_s, 3),
            "input_tokens_per_s_per_replica": capacity.input_tokens_per_s,
            "source": capacity.source,
        },
        "demand": {
            "now": {"completion_tokens_per_s": _tokens_per_s(peak_now), "replicas": round(needed_now, 3)},
            "week_ago": {
                "completion_tokens_per_s": _tokens_per_s(peak_week),
                "replicas": round(needed_week, 3),
            },
        },
        "floor": None if floor is None else floor.replicas,
    }
    reasons = [f"capacity {capacity.output_tokens_per_s:,.0f} output tok/s per replica: {capacity.source}"]
    reasons.append(
        f"busiest recent minute: {_tokens_per_s(peak_now):,.1f} output tok/s = {needed_now:.2f} replicas"
        if peak_now
        else "no real-time demand in the recent minutes"
    )
    if peak_week is not None:
        reasons.append(
            f"a week ago the coming minutes peaked at {_tokens_per_s(peak_week):,.1f} output tok/s "
            f"= {needed_week:.2f} replicas"
        )
    now = math.ceil(needed_now - _EPSILON)
    ahead = math.ceil(max(needed_now, needed_week) - _EPSILON)
    least, most = bounds
    if floor is not None and floor.replicas > least:
        reasons.append(f"at least {floor.replicas}: {floor.reason}")
        least = floor.replicas
    now_bounded, next_bounded = (min(most, max(least, n)) for n in (now, ahead))
    if (now_bounded, next_bounded) != (now, ahead):
        reasons.append(f"bounded to {least}..{most} replicas")
    return Desired(backend, now_bounded, next_bounded, reasons, inputs)
