"""What a simulated upstream serves and how it behaves: latency model, capacity, and injected faults.

Both models are plain, validated data. ``FaultConfig`` is also the body of ``POST /sim/faults``, so tests can
swap the live faults of a running simulator without restarting it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FaultConfig(BaseModel):
    """Failures the simulator injects, so callers can test retries, fallbacks and broken streams, and habits
    of real servers it can put on."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of inference requests answered with ``error_status`` (drawn from the seeded RNG)."""
    error_status: int = Field(default=500, ge=400, le=599)
    """HTTP status of injected errors; 429 answers carry a ``Retry-After`` header."""
    error_html: bool = False
    """Injected errors are an HTML page (``text/html``), as a load balancer or gateway in front of an engine
    sends (an nginx 413, a 502), instead of OpenAI's JSON error."""
    fail_next: int = Field(default=0, ge=0)
    """The next N inference requests are answered with ``error_status`` (deterministic; counts down)."""
    retry_after_s: float = Field(default=1.0, ge=0.0)
    """``Retry-After`` of injected 429s: whole seconds as an integer, otherwise a decimal string."""
    first_byte_delay_ms: float = Field(default=0.0, ge=0.0)
    """Extra delay before the response headers of an inference request are sent."""
    cut_stream_after_chunks: int | None = Field(default=None, ge=0)
    """Abort a stream (drop the connection, no ``[DONE]``) after this many content chunks."""
    stall_stream_after_chunks: int | None = Field(default=None, ge=0)
    """Go silent (keep the connection, send nothing) for ``stall_s`` after N content chunks of a stream."""
    stall_s: float = Field(default=3600.0, ge=0.0)
    ignore_stream: bool = False
    """Answer ``stream: true`` requests with one whole JSON answer, as some upstreams do."""
    # Habits of real servers (see ``habits.py``): not failures, but what engines nobody here wrote do.
    json_style: Literal["compact", "spaced"] = "compact"
    """How chat and completion answers and chunks are written: ``compact`` as OpenAI does, or ``spaced``
    (``", "`` and ``": "``) as Python's ``json.dumps`` does (llama-cpp-python's server)."""
    usage_chunk_with_choice: bool = False
    """Send a stream's usage chunk with ``"choices":[{"index":0,"delta":{}}]`` instead of no choices
    (LiteLLM's proxy)."""
    no_usage: bool = False
    """Ignore ``stream_options.include_usage``: streams carry no usage at all (llama-cpp-python's server)."""
    linger_after_done_s: float | None = Field(default=None, ge=0.0)
    """Keep a stream's response open this long after ``data: [DONE]`` before ending its body, unless the
    client leaves first (then the stream counts as cancelled)."""
    capacity_scale: float = Field(default=1.0, gt=0.0, le=100.0)
    """Dedicated only: multiplies ``aggregate_tokens_per_s`` from now on, streams already running included (a
    GPU throttling, a noisy neighbour on a shared engine): 0.5 halves what the active streams share."""
    batch_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of batch lines answered with ``error_status`` (in the error file), drawn from an RNG seeded
    per batch. Batches take their faults when they are created."""
    batch_expire_after_s: float | None = Field(default=None, ge=0.0)
    """Batches created while this is set expire this long after creation, if they would not have completed
    by then, instead of at the end of their 24 h completion window (0: before any of their lines runs)."""
    # The engine's /metrics (``metrics.py``).
    metrics_missing: bool = False
    """``GET /metrics`` answers 404, as an engine started without metrics does."""
    metrics_wrong: bool = False
    """``GET /metrics`` answers 200 with text no Prometheus parser takes."""
    metrics_stale: bool = False
    """``GET /metrics`` answers the page as it was when this was set, its samples stamped with that moment."""
    metrics_running: int | None = Field(default=None, ge=0)
    """Report this many requests running instead of the slots in use."""
    metrics_waiting: int | None = Field(default=None, ge=0)
    """Report this many requests waiting instead of the slots' queue."""
    metrics_kv_cache_usage: float | None = Field(default=None, ge=0.0, le=1.0)
    """Report this KV-cache usage (0..1) instead of the model's."""


class SimulatorConfig(BaseModel):
    """One simulated OpenAI-compatible backend: its models, latency model, capacity and faults."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sim"
    mode: Literal["serverless", "dedicated"] = "serverless"
    seed: int = 0
    models: list[str] = Field(default_factory=list)
    """Model ids served; empty accepts any model id. Unknown ids get 404 ``model_not_found``."""
    ttft_ms: float = Field(default=20.0, ge=0.0)
    """Time to first token: the mean of a seeded jitter (serverless) or fixed (dedicated)."""
    ttft_jitter: float = Field(default=0.5, ge=0.0)
    """Serverless only: relative spread (lognormal sigma) of the time to first token."""
    tokens_per_s: float = Field(default=400.0, gt=0.0)
    """Per-stream decode rate: fixed (serverless) or the per-stream maximum (dedicated)."""
    max_concurrency: int = Field(default=16, ge=1)
    """Dedicated only: generation slots; requests past the cap wait in FIFO order."""
    aggregate_tokens_per_s: float = Field(default=3200.0, gt=0.0)
    """Dedicated only: total decode rate shared by the active streams."""
    default_max_tokens: int = Field(default=16, ge=1)
    """Completion length when the request sets neither ``max_tokens`` nor ``max_completion_tokens``."""
    max_output_tokens: int = Field(default=16_384, ge=1)
    """The most completion tokens one choice may ask for; a larger ``max_tokens`` or
    ``max_completion_tokens`` is refused with 400, as OpenAI and vLLM refuse one past the model's limit."""
    embedding_dimensions: int = Field(default=8, ge=1)
    batch_turnaround_s: float = Field(default=2.0, ge=0.0)
    """Batch API: seconds from creation to ``completed`` — the first 10% validating, the next 80% running
    the lines (finishing evenly spread), the last 10% finalizing. A batch that would complete after it
    expires (its 24 h window, or ``faults.batch_expire_after_s``) expires then, with what ran so far."""
    batch_cancelling_s: float = Field(default=0.0, ge=0.0)
    """Batch API: how long a cancelled batch stays ``cancelling`` before it is ``cancelled``."""
    batch_max_lines: int = Field(default=50_000, ge=1)
    """Batch API: requests one input file may hold; more fail validation with ``too_many_tasks``."""
    metrics_profile: Literal["vllm", "sglang"] = "vllm"
    """Whose metric names ``GET /metrics`` speaks."""
    kv_cache_tokens: int = Field(default=262_144, ge=1)
    """The KV cache's size in tokens: running requests hold their prompt and completion budget of it."""
    faults: FaultConfig = Field(default_factory=FaultConfig)
