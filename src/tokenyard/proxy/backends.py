"""Backends at run time: an upstream client plus the live state routing reads (in-flight, circuit, limits)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from tokenyard.adapters.anthropic_batch import AnthropicBatchUpstream
from tokenyard.adapters.base import BatchUpstream, Upstream, UpstreamResponse
from tokenyard.adapters.openai_batch import OpenAIBatchUpstream
from tokenyard.adapters.openai_http import OpenAIHttpUpstream
from tokenyard.adapters.providers import AzureTarget
from tokenyard.admission.auth import Priority
from tokenyard.capacity.engine import EngineState
from tokenyard.capacity.envelope import Recorder
from tokenyard.capacity.limiter import AdaptiveLimit, LimitChange, overloaded
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import metrics_url_for
from tokenyard.config import BackendConfig, TokenyardConfig
from tokenyard.errors import ConfigError, UpstreamError
from tokenyard.meter.pricing import FREE, TokenPrices, token_prices
from tokenyard.proxy.breaker import CircuitBreaker, Ticket
from tokenyard.proxy.routing import DeploymentView, reserved_slots

log = logging.getLogger("tokenyard.backends")

Clock = Callable[[], float]
_NONE: Mapping[str, str] = {}
_DEDICATED = ("dedicated", "dedicated_serverless")


@dataclass(slots=True)
class Backend:
    """One configured upstream deployment and its live state."""

    name: str
    config: BackendConfig
    upstream: Upstream
    breaker: CircuitBreaker
    rpm: AsyncLimiter | None = None
    tpm: AsyncLimiter | None = None
    prices: TokenPrices = FREE
    replicas: int = 1  # dedicated: provisioned now (the admin API can change it)
    in_flight: int = 0
    failures: int = 0  # upstream failures seen (each one failed over or ended a request), for /metrics
    batch_api: BatchUpstream | None = None  # kind batch: the provider's files and batches endpoints
    cluster_size: int = 1  # proxy replicas alive on the shared store: each takes its share of the caps
    envelope: Recorder | None = None  # dedicated kinds: the measured envelope's counts (capacity/envelope.py)
    engine: EngineState | None = None  # its engine's own metrics, when it has a metrics_url
    # With an ``sla``: the concurrency per replica that meets it, learned from answers (else a fixed cap).
    limit: AdaptiveLimit | None = None
    # With forward_identity: the names of the headers that carry the caller's tenant and key id upstream.
    identity: tuple[str, str] | None = None
    # Dedicated kinds: the share of the cap each priority leaves to higher ones, those above 0 only
    # (``routing.priority_headroom``; one mapping shared by every dedicated backend). Empty for the rest.
    headroom: Mapping[str, float] = field(default_factory=dict)
    speaks: frozenset[str] = field(
        init=False
    )  # the APIs it takes natively (config ``apis``), read per request

    def __post_init__(self) -> None:
        self.speaks = self.config.speaks

    @property
    def max_concurrency(self) -> int | None:
        """This replica's in-flight cap now: the backend's cap (a dedicated backend's per-replica cap, or the
        limit learned from its SLA, times its replicas) divided among the live proxy replicas, at least 1 —
        or 0 for a dedicated backend scaled to no replicas (nothing to route to)."""
        cap = self.config.max_concurrency
        if cap is None:
            return None
        if self.limit is not None:
            cap = self.limit.current
        if self.config.kind == "dedicated":
            cap *= self.replicas
        return max(1 if self.replicas else 0, cap // self.cluster_size)

    @property
    def wants_samples(self) -> bool:
        """Whether anything reads this backend's answered requests (the proxy builds no sample otherwise)."""
        return self.limit is not None or self.envelope is not None

    @property
    def engine_replicas(self) -> int:
        """Engine replicas behind the backend: a dedicated one's provisioned replicas, else one endpoint."""
        return self.replicas if self.config.kind == "dedicated" else 1

    def observe(self, sample: LatencySample) -> None:
        """One request this backend answered: feeds its SLA limit and its measured envelope (no I/O)."""
        if self.envelope is not None:
            self.envelope.observe(sample, self.engine_replicas)
        if self.limit is not None:
            before = self.limit.current
            self._log_change(before, self.limit.observe(sample, self.engine_replicas, self.cluster_size))

    def observe_failure(self, error: UpstreamError, concurrency: int, at: float) -> None:
        """A request this backend failed: its SLA limit counts it as breached when the failure is the
        engine's overload (``limiter.overloaded``); the envelope's rates count answers only."""
        limit = self.limit
        if limit is None or not overloaded(error, dedicated=self.config.kind in _DEDICATED):
            return
        before = limit.current
        self._log_change(
            before, limit.observe_overload(concurrency, at, self.engine_replicas, self.cluster_size)
        )

    def _log_change(self, before: int, change: LimitChange | None) -> None:
        # Each window may move the limit by one: only a cut to half or less is news at INFO.
        if change is not None and self.limit is not None:
            level = logging.INFO if 2 * self.limit.current <= before else logging.DEBUG
            log.log(level, "backend %s: concurrency limit %d (%s)", self.name, change.limit, change.reason)

    def set_cluster_size(self, live: int) -> None:
        """``live`` proxy replicas share this backend now: caps and rate limits are split among them.

        A share per replica keeps the request path free of Redis; the price is that a busy replica may spill
        over while another has room (see README, "Several replicas")."""
        live = max(1, live)
        if live == self.cluster_size:
            return
        self.cluster_size = live
        rpm, tpm = self.config.rpm, self.config.tpm
        self.rpm = AsyncLimiter(max(1, rpm // live), 60) if rpm else None
        self.tpm = AsyncLimiter(max(1, tpm // live), 60) if tpm else None

    def view(
        self, now: float, estimated_tokens: int, *, already_failed: bool, priority: Priority = "normal"
    ) -> DeploymentView:
        """A snapshot of this backend for ``routing.choose_deployment``, for a request of ``priority``."""
        cap = self.max_concurrency
        # Hot path: a priority that leaves no headroom (normal, by default) costs a dict miss, no arithmetic.
        share = self.headroom.get(priority)
        return DeploymentView(
            name=self.name,
            in_flight=self.in_flight,
            max_concurrency=cap,
            rate_limited=not self._has_rate_room(estimated_tokens),
            cooling_for_s=0.0 if self.breaker.available(now) else max(self.breaker.cooling_for_s(now), 1e-3),
            already_failed=already_failed,
            held_by_rate_limit=self.breaker.rate_limited,
            saturated=self.saturated(now),
            reserved=reserved_slots(cap, share) if share and cap else 0,
        )

    def saturated(self, now: float) -> str | None:
        """Why its engine says it is full (``queue 3``), while the engine's figures are fresh; else None."""
        return self.engine.saturated(now) if self.engine is not None else None

    def _has_rate_room(self, estimated_tokens: int) -> bool:
        if self.rpm is not None and not self.rpm.has_capacity(1):
            return False
        return self.tpm is None or self.tpm.has_capacity(min(estimated_tokens, self.tpm.max_rate))

    def admit(self, now: float) -> Ticket:
        """Count a request in flight (the caller must count it out) and get its circuit ticket."""
        self.in_flight += 1
        return self.breaker.on_dispatch(now)

    async def take_rate(self, estimated_tokens: int) -> None:
        """Spend rate-limit room. Called right after routing saw room, with no await in between, so the
        limiters never block here."""
        if self.rpm is not None:
            await self.rpm.acquire(1)
        if self.tpm is not None:
            await self.tpm.acquire(min(estimated_tokens, self.tpm.max_rate))

    def record_failure(
        self,
        now: float,
        ticket: Ticket,
        reason: str,
        retry_after_s: float | None = None,
        *,
        rate_limited: bool = False,
    ) -> None:
        """Tell the circuit breaker the backend failed (``rate_limited``: it answered 429), and log when that
        takes it out."""
        self.failures += 1
        if self.breaker.on_failure(now, ticket, retry_after_s, rate_limited=rate_limited):
            log.warning(
                "backend %s out for %.1f s after %s", self.name, self.breaker.cooling_for_s(now), reason
            )

    async def ask(self, method: str, path: str, body: bytes, about: str) -> tuple[UpstreamResponse, bytes]:
        """A small request off the inference path (count tokens, a stored response): the whole answer, its
        status as it came; a failure says which backend it was and ``about`` what."""
        try:
            resp = await self.upstream.request(method, path, body)
            try:
                return resp, await resp.read()
            finally:
                resp.close()
        except UpstreamError as exc:
            raise type(exc)(f"backend {self.name} did not answer {about}: {exc.message}") from exc

    def record_success(self, ticket: Ticket) -> None:
        """Tell the circuit breaker the backend answered well."""
        if self.breaker.on_success(ticket):
            log.warning("backend %s is back in service", self.name)


@contextlib.asynccontextmanager
async def open_backends(
    config: TokenyardConfig, base_urls: Mapping[str, str] = _NONE
) -> AsyncIterator[dict[str, Backend]]:
    """Start every backend's upstream client; close them after.

    ``base_urls`` gives the address of backends the config has none for (``simulator:``: whoever started
    the simulators — the CLI's quick start — says where they listen)."""
    headroom = config.routing.priority_headroom.shares()  # restart-only, like the backends
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, Backend] = {}
        for name, bc in config.backends.items():
            base_url = base_urls.get(name, bc.base_url)
            if base_url is None:  # config validation gives it base_url or simulator
                raise ConfigError([(f"backends.{name}", "its simulator was not started: no base_url")])
            upstream = OpenAIHttpUpstream(
                base_url,
                api_key=bc.api_key.get_secret_value() if bc.api_key else None,
                connect_s=bc.timeouts.connect_s,
                first_byte_s=bc.timeouts.first_byte_s,
                idle_s=bc.timeouts.idle_s,
                max_connections=bc.max_connections,
                provider=bc.provider,
                azure=AzureTarget(bc.azure.deployment, bc.azure.api_version) if bc.azure else None,
            )
            stack.push_async_callback(upstream.aclose)
            batch_api = _batch_api(bc, base_url) if bc.kind == "batch" else None
            if batch_api is not None:
                stack.push_async_callback(batch_api.aclose)
            backends[name] = Backend(
                name=name,
                config=bc,
                upstream=upstream,
                breaker=CircuitBreaker(
                    config.routing.failure_threshold, config.routing.cooldown_s, config.routing.max_cooldown_s
                ),
                rpm=AsyncLimiter(bc.rpm, 60) if bc.rpm else None,
                tpm=AsyncLimiter(bc.tpm, 60) if bc.tpm else None,
                prices=token_prices(bc),
                replicas=bc.replicas or 1,
                batch_api=batch_api,
                envelope=Recorder(bc.sla) if bc.kind in _DEDICATED else None,
                identity=_identity_headers(config) if bc.forward_identity else None,
                headroom=headroom if bc.kind in _DEDICATED else {},
                engine=_engine_state(bc, base_url),
                limit=AdaptiveLimit(bc.sla, bc.max_concurrency) if bc.sla and bc.max_concurrency else None,
            )
        yield backends


def _batch_api(config: BackendConfig, base_url: str) -> BatchUpstream:
    """The provider's Batch API client (config validation allows batch backends of openai and anthropic)."""
    api_key = config.api_key.get_secret_value() if config.api_key else None
    if config.provider == "anthropic":
        return AnthropicBatchUpstream(base_url, api_key=api_key)
    return OpenAIBatchUpstream(base_url, api_key=api_key)


def _engine_state(config: BackendConfig, base_url: str) -> EngineState | None:
    url = metrics_url_for(config.metrics_url, base_url)
    return EngineState(url, config.engine) if url is not None else None


def _identity_headers(config: TokenyardConfig) -> tuple[str, str]:
    names = config.telemetry.identity_headers
    return names.tenant, names.key_id
