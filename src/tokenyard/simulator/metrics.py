"""``GET /metrics``: the simulator's engine metrics, in vLLM's names (or SGLang's: ``metrics_profile``),
consistent with its capacity model.

- running: requests holding a generation slot (``Slots.in_flight``); waiting: those queued for one;
- KV-cache usage: the tokens the running requests hold — each its prompt plus its whole completion budget,
  reserved when it takes its slot (a simplification of vLLM's paged blocks, which grow as it decodes) —
  over ``kv_cache_tokens``, at most 1;
- token counters: prompt tokens when a request's first token is out (prefill done), generation tokens as
  they are produced (a whole answer's at its end);
- busy time (SGLang's ``gpu_execution_seconds_total``): the time at least one request was running.

Faults (``FaultConfig``): ``metrics_missing`` answers 404, ``metrics_wrong`` text no Prometheus parser
takes, ``metrics_stale`` the page as it was when the fault was set (samples stamped with that moment, as a
caching exporter would), and ``metrics_running`` / ``metrics_waiting`` / ``metrics_kv_cache_usage`` put a
figure in place of the model's, so a test can say "queue 3, KV 95 %" while few requests are in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from tokenyard.errors import RouteNotFound
from tokenyard.simulator.request import Request
from tokenyard.wire.asgi import Send, send_bytes

if TYPE_CHECKING:
    from tokenyard.simulator.state import SimulatorState

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
WRONG_TEXT = (
    '<html><body>upstream error</body></html>\nvllm:num_requests_running{model_name="sim" 1\n'
    'sglang:num_queue_reqs{model_name="sim"} NaN-ish\n'
)


class EngineMeter:
    """The figures the simulated engine counts beside its slots."""

    __slots__ = ("_busy_since", "busy_s", "generation_tokens", "kv_tokens", "prompt_tokens", "running")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.kv_tokens = 0  # held by the running requests
        self.running = 0  # requests inside ``holding``
        self.busy_s = 0.0  # closed busy periods
        self._busy_since: float | None = None

    @contextlib.asynccontextmanager
    async def holding(self, kv_tokens: int, clock: Callable[[], float]) -> AsyncIterator[None]:
        """A request runs, holding ``kv_tokens`` of the KV cache, for the duration of the block."""
        if self.running == 0:
            self._busy_since = clock()
        self.running += 1
        self.kv_tokens += kv_tokens
        try:
            yield
        finally:
            self.running -= 1
            self.kv_tokens -= kv_tokens
            if self.running == 0 and self._busy_since is not None:
                self.busy_s += max(0.0, clock() - self._busy_since)
                self._busy_since = None

    def busy_seconds(self, now: float) -> float:
        """Time at least one request ran, up to ``now``."""
        open_s = now - self._busy_since if self._busy_since is not None else 0.0
        return self.busy_s + max(0.0, open_s)

    def reset(self, now: float) -> None:
        """Zero the counters (an engine restart); running requests keep what they hold."""
        self.prompt_tokens = self.generation_tokens = 0
        self.busy_s = 0.0
        if self._busy_since is not None:
            self._busy_since = now


def render(state: SimulatorState, *, stamp_ms: int | None = None) -> str:
    """The page in the configured profile's names (``stamp_ms``: every sample stamped with it)."""
    config, faults, meter = state.config, state.faults, state.engine
    running = faults.metrics_running if faults.metrics_running is not None else state.slots.in_flight
    waiting = faults.metrics_waiting if faults.metrics_waiting is not None else state.slots.queued
    kv = (
        faults.metrics_kv_cache_usage
        if faults.metrics_kv_cache_usage is not None
        else min(1.0, meter.kv_tokens / config.kv_cache_tokens)
    )
    busy_s = meter.busy_seconds(state.clock.monotonic())
    model = state.model_ids()[0]
    if config.metrics_profile == "sglang":
        labels = f'{{model_name="{model}"}}'
        rows = [
            ("sglang:num_running_reqs", "gauge", "The number of running requests.", running),
            ("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", waiting),
            ("sglang:token_usage", "gauge", "The token usage.", kv),
            (
                "sglang:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                meter.prompt_tokens,
            ),
            (
                "sglang:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                meter.generation_tokens,
            ),
            ("sglang:cached_tokens_total", "counter", "Number of cached prompt tokens.", 0),
            (
                "sglang:gpu_execution_seconds_total",
                "counter",
                "Total time that GPU is busy executing a workload.",
                busy_s,
            ),
        ]
    else:
        labels = f'{{engine="0",model_name="{model}"}}'
        rows = [
            ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", running),
            ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", waiting),
            ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv),
            (
                "vllm:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                meter.prompt_tokens,
            ),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                meter.generation_tokens,
            ),
            # No prefix cache here: every queried token misses.
            (
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prefix cache queries, in tokens.",
                meter.prompt_tokens,
            ),
            ("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in tokens.", 0),
        ]
    stamp = f" {stamp_ms}" if stamp_ms is not None else ""
    lines = []
    for name, kind, help_text, value in rows:
        lines += [
            f"# HELP {name} {help_text}",
            f"# TYPE {name} {kind}",
            f"{name}{labels} {float(value)!r}{stamp}",
        ]
    return "\n".join(lines) + "\n"


async def metrics(state: SimulatorState, request: Request, send: Send) -> None:
    """``GET /metrics``: the engine's figures now, or the fault's version of them."""
    faults = state.faults
    if faults.metrics_missing:
        raise RouteNotFound("Unknown request URL: GET /metrics.")
    if faults.metrics_wrong:
        text = WRONG_TEXT
    elif faults.metrics_stale:
        freeze(state)  # set from the start (the config's faults, a reset): frozen at the first read
        text = state.metrics_frozen or render(state)
    else:
        text = render(state)
    await send_bytes(send, 200, text.encode(), [(b"content-type", CONTENT_TYPE)])


def freeze(state: SimulatorState) -> None:
    """Keep the page as it is now for ``metrics_stale`` (stamped with this moment), or stop keeping it."""
    if state.faults.metrics_stale:
        if state.metrics_frozen is None:
            state.metrics_frozen = render(state, stamp_ms=int(state.clock.time() * 1000))
    else:
        state.metrics_frozen = None
