"""``GET /metrics``: Prometheus exposition built at scrape time from the meter's in-memory totals.

Nothing is counted twice: the request path only feeds ``Meter.record``; this collector reads the meter's
running totals, the backends' live state and the meter's own health when Prometheus asks. Counters are
this process's since it started (with several replicas, sum them; GPU-seconds are this replica's view of
provisioned time, so take one replica's, or read the usage API, which counts each second once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenyard.admission.budgets import NUSD_PER_USD
from tokenyard.advisor.settings import DAYS_PER_MONTH
from tokenyard.capacity.gpu_plan import ModelPlan
from tokenyard.meter.meter import Meter
from tokenyard.meter.model import AGG_FIELDS, LATENCY_BUCKETS_MS, PUSD_PER_USD
from tokenyard.proxy.backends import Backend
from tokenyard.telemetry.budget_watch import BudgetSnapshot

if TYPE_CHECKING:  # types only: the advisor, the planner and the async track load when a config runs them
    from tokenyard.advisor.live import AdvisorLoop
    from tokenyard.capacity.planner import CapacityPlanner
    from tokenyard.queue.dispatcher import Dispatcher

_LABELS = ["tenant", "model", "backend", "kind", "mode"]
_FIELD = {name: i for i, name in enumerate(AGG_FIELDS)}
_FIRST_BUCKET = _FIELD[f"le_{LATENCY_BUCKETS_MS[0]}"]


class TokenyardCollector(Collector):
    """Yields tokenyard's metric families from live state."""

    def __init__(
        self,
        meter: Meter,
        backends: Mapping[str, Backend],
        rejected: Mapping[int, int],
        *,
        advisor: AdvisorLoop | None,  # None: the advisor is off
        dispatcher: Dispatcher | None,  # None: the async track is off
        capacity: CapacityPlanner | None = None,  # None: no meter store, no desired replicas
        clock: Callable[[], float] = time.monotonic,  # the request path's: engine snapshots are dated by it
        plans: Callable[[], Mapping[str, ModelPlan]] | None = None,  # the GPU plan in force (None: none read)
        spans: Mapping[str, int] | None = None,  # spans by outcome, kept by the tracing (None: no tracing)
        budgets: Callable[[], BudgetSnapshot | None] | None = None,  # the budget watch's latest read
    ) -> None:
        self._meter = meter
        self._backends = backends
        self._spans = spans
        self._rejected = rejected
        self._advisor = advisor
        self._dispatcher = dispatcher
        self._capacity = capacity
        self._clock = clock
        self._plans = plans
        self._budgets = budgets

    def collect(self) -> Iterator[Metric]:
        yield from self._usage()
        yield from self._backend_state()
        yield from self._sla_limits()
        yield from self._meter_health()
        yield from self._advice()
        yield from self._async_track()
        yield from self._desired_replicas()
        yield from self._plan_replicas()
        yield from self._engines()
        yield from self._tracing()
        yield from self._budget_counts()

    def _budget_counts(self) -> Iterator[Metric]:
        """Every budget in force as the budget watch last read it (the same on every replica: the counts
        are the store's). Its labels come from the config and the admin API's keys: bounded."""
        snapshot = self._budgets() if self._budgets is not None else None
        if snapshot is None:
            return
        labels = ["holder_kind", "holder", "window"]
        spend = GaugeMetricFamily(
            "tokenyard_budget_spend_usd",
            "What a budget counts now: settled spend in its window plus reservations held.",
            labels=labels,
        )
        limit = GaugeMetricFamily("tokenyard_budget_limit_usd", "A budget's limit.", labels=labels)
        remaining = GaugeMetricFamily(
            "tokenyard_budget_remaining_usd", "What is left of a budget (0 once spent).", labels=labels
        )
        for state in snapshot.budgets:
            values = [state.holder_kind, state.holder_name, state.line.budget.window]
            spend.add_metric(values, state.counted_nusd / NUSD_PER_USD)
            limit.add_metric(values, state.line.limit_nusd / NUSD_PER_USD)
            remaining.add_metric(values, state.remaining_nusd / NUSD_PER_USD)
        yield from (spend, limit, remaining)

    def _tracing(self) -> Iterator[Metric]:
        if self._spans is None:
            return
        spans = CounterMetricFamily(
            "tokenyard_otel_spans",
            "Trace spans by outcome: exported to the collector, dropped (its queue was full), failed (an "
            "export the collector did not take).",
            labels=["outcome"],
        )
        for outcome, count in self._spans.items():
            spans.add_metric([outcome], count)
        yield spans

    def _plan_replicas(self) -> Iterator[Metric]:
        """The replicas of each GPU type the advisor's plan wants per model (beside
        ``tokenyard_backend_replicas``, what runs)."""
        plans = self._plans() if self._plans is not None else None
        if not plans:
            return
        planned = GaugeMetricFamily(
            "tokenyard_plan_replicas", "Replicas of a GPU type the GPU plan wants for a model.",
            labels=["model", "gpu_type"],
        )  # fmt: skip
        for model, plan in plans.items():
            for gpu_type, replicas in plan.replicas.items():
                planned.add_metric([model, gpu_type], replicas)
        yield planned

    def _desired_replicas(self) -> Iterator[Metric]:
        """The replicas each dedicated backend should run (the same on every replica: the leader decides),
        for a scaler: KEDA or an HPA on an external metric (see deploy/)."""
        document = self._capacity.latest if self._capacity is not None else None
        if not document:
            return
        desired = GaugeMetricFamily(
            "tokenyard_desired_replicas",
            "Replicas a dedicated backend should run: now, and for the next interval (time-of-week profile).",
            labels=["backend", "horizon"],
        )
        for item in document.get("backends") or []:  # a store document: never trust its shape
            counts = item.get("desired") if isinstance(item, dict) else None
            if not isinstance(counts, dict) or not isinstance(item.get("backend"), str):
                continue
            for horizon in ("now", "next"):
                value = counts.get(horizon)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    desired.add_metric([item["backend"], horizon], value)
        yield desired

    def _engines(self) -> Iterator[Metric]:
        """What each backend's engine said at its last scrape (its gauges only while fresh)."""
        engines = [(name, b.engine) for name, b in self._backends.items() if b.engine is not None]
        if not engines:
            return
        labels = ["backend"]
        running = GaugeMetricFamily(
            "tokenyard_engine_requests_running", "Requests the engine is generating.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "tokenyard_engine_requests_waiting", "Requests queued in the engine.", labels=labels
        )
        kv = GaugeMetricFamily(
            "tokenyard_engine_kv_cache_usage_ratio", "The engine's KV-cache usage (0..1).", labels=labels
        )
        saturated = GaugeMetricFamily(
            "tokenyard_engine_saturated",
            "1 while the engine's fresh figures say it is full (queue or KV cache).",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "tokenyard_engine_metrics_age_seconds", "Age of the engine's last good scrape.", labels=labels
        )
        scrapes = CounterMetricFamily(
            "tokenyard_engine_scrapes",
            "Scrapes of the engine's /metrics, by outcome.",
            labels=[*labels, "outcome"],
        )
        now = self._clock()
        for name, engine in engines:
            for outcome, count in sorted(engine.scrapes.items()):
                scrapes.add_metric([name, outcome], count)
            latest = engine.latest
            if latest is None:
                continue
            age.add_metric([name], max(0.0, now - latest.scraped_at))
            saturated.add_metric([name], 1.0 if engine.saturated(now) is not None else 0.0)
            if not engine.fresh(now):
                continue
            for family, value in (
                (running, latest.running),
                (waiting, latest.waiting),
                (kv, latest.kv_cache_usage),
            ):
                if value is not None:
                    family.add_metric([name], value)
        yield from (running, waiting, kv, saturated, age, scrapes)

    def _async_track(self) -> Iterator[Metric]:
        """The job queue (as last read, the same on every replica) and this replica's answered jobs."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        stats = dispatcher.stats
        if stats is not None:
            jobs = GaugeMetricFamily(
                "tokenyard_async_jobs", "Async jobs not yet answered, by state.", labels=["state"]
            )
            for state, count in (
                ("waiting", stats.waiting),
                ("claimed", stats.claimed),
                ("in_provider_batch", stats.in_batches),
            ):
                jobs.add_metric([state], count)
            yield jobs
            oldest = GaugeMetricFamily(
                "tokenyard_async_oldest_job_age_seconds",
                "Age of the oldest job waiting or claimed (0: none).",
            )
            oldest.add_metric(
                [], max(0.0, time.time() - stats.oldest_created_at) if stats.oldest_created_at else 0.0
            )
            yield oldest
        answered = CounterMetricFamily(
            "tokenyard_async_jobs_answered", "Jobs this replica answered, by path.", labels=["path"]
        )
        waited = CounterMetricFamily(
            "tokenyard_async_job_wait_seconds",
            "Time from accepting a job to its answer, summed, by path.",
            labels=["path"],
        )
        for path, count in sorted(dispatcher.jobs_by_path.items()):
            answered.add_metric([path], count)
            waited.add_metric([path], dispatcher.wait_s_by_path.get(path, 0.0))
        duplicates = CounterMetricFamily(
            "tokenyard_async_duplicate_answers",
            "Answers dropped because the job already had one (not billed).",
        )
        duplicates.add_metric([], dispatcher.front.duplicates)
        yield from (answered, waited, duplicates)

    def _advice(self) -> Iterator[Metric]:
        """The latest advice (the same on every replica: it is read from the store)."""
        document = self._advisor.latest if self._advisor is not None else None
        if not document:
            return
        labels = ["workload"]
        current = GaugeMetricFamily(
            "tokenyard_advisor_current_usd_per_day", "What the current setup costs a day.", labels=labels
        )
        best = GaugeMetricFamily(
            "tokenyard_advisor_best_usd_per_day",
            "What the cheapest candidate would cost a day.",
            labels=[*labels, "architecture"],
        )
        saving = GaugeMetricFamily(
            "tokenyard_advisor_potential_saving_usd_per_day", "Current minus best, a day.", labels=labels
        )
        change = GaugeMetricFamily(
            "tokenyard_advisor_change_recommended",
            "1 if a material, stable change is recommended.",
            labels=labels,
        )
        for workload in document.get("workloads", []):
            name = [workload["workload"]]
            recommended = workload["recommended"]
            best.add_metric(
                [*name, recommended["architecture"]], recommended["cost_usd_per_month"] / DAYS_PER_MONTH
            )
            if workload.get("current"):
                current.add_metric(name, workload["current"]["cost_usd_per_month"] / DAYS_PER_MONTH)
                saving.add_metric(name, (workload["saving_usd_per_month"] or 0.0) / DAYS_PER_MONTH)
            change.add_metric(name, 1.0 if workload["change_recommended"] else 0.0)
        generated = GaugeMetricFamily(
            "tokenyard_advisor_last_evaluation_timestamp_seconds", "When the advice was computed (unix s)."
        )
        generated.add_metric([], document.get("generated_at") or 0.0)
        yield from (current, best, saving, change, generated)

    def _usage(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("tokenyard_requests", "Requests that reached routing.", labels=_LABELS)
        errors = CounterMetricFamily("tokenyard_request_errors", "Requests answered 4xx/5xx.", labels=_LABELS)
        tokens = CounterMetricFamily("tokenyard_tokens", "Tokens by type.", labels=[*_LABELS, "type"])
        estimated = CounterMetricFamily(
            "tokenyard_estimated_requests", "Requests whose tokens were counted locally.", labels=_LABELS
        )
        cost = CounterMetricFamily(
            "tokenyard_token_cost_usd", "Per-token cost (dedicated backends cost GPU time).", labels=_LABELS
        )
        latency = HistogramMetricFamily(
            "tokenyard_request_duration_seconds", "Time from request to last byte.", labels=_LABELS
        )
        for labels, row in self._meter.totals().items():
            values = list(labels)
            requests.add_metric(values, row[_FIELD["requests"]])
            errors.add_metric(values, row[_FIELD["errors"]])
            estimated.add_metric(values, row[_FIELD["estimated"]])
            for kind in ("prompt", "cached", "cache_write", "completion", "reasoning"):
                tokens.add_metric([*values, kind], row[_FIELD[f"{kind}_tokens"]])
            cost.add_metric(values, row[_FIELD["cost_pusd"]] / PUSD_PER_USD)
            buckets, running = [], 0
            for i, bound in enumerate((*LATENCY_BUCKETS_MS, None)):
                running += row[_FIRST_BUCKET + i]
                buckets.append(("+Inf" if bound is None else str(bound / 1000), running))
            latency.add_metric(values, buckets, row[_FIELD["latency_ms"]] / 1000)
        rejected = CounterMetricFamily(
            "tokenyard_rejected_requests",
            "Requests refused before routing (bad key, body, model).",
            labels=["status"],
        )
        for status, count in sorted(self._rejected.items()):
            rejected.add_metric([str(status)], count)
        yield from (requests, errors, tokens, estimated, cost, latency, rejected)

    def _backend_state(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "tokenyard_backend_in_flight", "Requests in flight.", labels=["backend"]
        )
        cap = GaugeMetricFamily(
            "tokenyard_backend_max_concurrency", "In-flight cap (its latency SLA).", labels=["backend"]
        )
        utilization = GaugeMetricFamily(
            "tokenyard_backend_utilization", "In-flight / max_concurrency, now.", labels=["backend"]
        )
        up = GaugeMetricFamily("tokenyard_backend_up", "1 unless its circuit is open.", labels=["backend"])
        failures = CounterMetricFamily("tokenyard_backend_failures", "Upstream failures.", labels=["backend"])
        for name, backend in self._backends.items():
            in_flight.add_metric([name], backend.in_flight)
            up.add_metric([name], 0 if backend.breaker.tripped else 1)
            failures.add_metric([name], backend.failures)
            if backend.max_concurrency:
                cap.add_metric([name], backend.max_concurrency)
                utilization.add_metric([name], backend.in_flight / backend.max_concurrency)
        replicas = GaugeMetricFamily(
            "tokenyard_backend_replicas", "Provisioned replicas.", labels=["backend"]
        )
        gpu_seconds = CounterMetricFamily(
            "tokenyard_gpu_seconds", "Provisioned GPU-seconds seen by this replica.", labels=["backend"]
        )
        gpu_cost = CounterMetricFamily(
            "tokenyard_gpu_cost_usd", "Cost of provisioned GPU time seen by this replica.", labels=["backend"]
        )
        for name, dedicated in self._meter.dedicated.items():
            replicas.add_metric([name], dedicated.replicas)
            gpu_seconds.add_metric([name], dedicated.local_gpu_ms / 1000)
            gpu_cost.add_metric(
                [name], dedicated.local_gpu_ms / 3_600_000 * dedicated.pusd_per_gpu_hour / PUSD_PER_USD
            )
        yield from (in_flight, cap, utilization, up, failures, replicas, gpu_seconds, gpu_cost)

    def _sla_limits(self) -> Iterator[Metric]:
        """The concurrency limits learned from the backends' SLAs, and the latencies of their last window."""
        limit = GaugeMetricFamily(
            "tokenyard_backend_concurrency_limit",
            "In-flight limit learned from the SLA, whole backend (every proxy replica together).",
            labels=["backend"],
        )
        ttft = GaugeMetricFamily(
            "tokenyard_backend_ttft_p95_seconds",
            "Time to first token at the SLA's percentile, over the limiter's last window.",
            labels=["backend"],
        )
        rate = GaugeMetricFamily(
            "tokenyard_backend_stream_tokens_per_second",
            "Per-stream decode rate in the limiter's last window: the SLA percentile's low tail, the median.",
            labels=["backend", "quantile"],
        )
        for name, backend in self._backends.items():
            learned = backend.limit
            if learned is None:
                continue
            limit.add_metric([name], learned.current * backend.engine_replicas)
            window = learned.last_window
            if window is None:
                continue
            if window.ttft_ms is not None:
                ttft.add_metric([name], window.ttft_ms / 1000)
            low_tail = f"{round(1 - learned.sla.percentile / 100, 4):g}"
            for quantile, value in (
                (low_tail, window.stream_tokens_per_s_low),
                ("0.5", window.stream_tokens_per_s_median),
            ):
                if value is not None:
                    rate.add_metric([name, quantile], value)
        yield from (limit, ttft, rate)

    def _meter_health(self) -> Iterator[Metric]:
        meter = self._meter
        yield GaugeMetricFamily(
            "tokenyard_meter_pending_records",
            "Request records held in memory, not yet stored.",
            value=meter.pending_records,
        )
        yield CounterMetricFamily(
            "tokenyard_meter_dropped_records",
            "Records dropped while the store was down too long.",
            value=meter.dropped_records,
        )
        yield CounterMetricFamily(
            "tokenyard_meter_failed_flushes", "Flushes the store did not take.", value=meter.failed_flushes
        )
        yield GaugeMetricFamily(
            "tokenyard_meter_store_up", "1 if the last flush reached the store.", value=int(meter.store_up)
        )


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of a registry."""
    return generate_latest(registry)
