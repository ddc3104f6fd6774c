"""What the proxy observes of each answered request: one ``LatencySample``.

The proxy builds one for each chat or completion a backend answered whole (no I/O, no clock read here: the
sample carries its times) and hands it to ``Backend.observe`` (proxy/backends.py), which feeds the backend's
SLA limit (capacity/limiter.py) and its measured envelope (capacity/envelope.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencySample:
    """One request a backend answered, as tokenyard measured it."""

    ttft_s: float  # to the first token (a stream's first event; a whole answer's head)
    latency_s: float  # to the end of the answer
    prompt_tokens: int
    completion_tokens: int
    streamed: bool
    # Requests in flight on the backend while this one ran, itself included, across every proxy replica
    # (this replica's count × the live proxy replicas: each carries about its share): the larger of the
    # counts at its admission and at its end (a stream admitted as load ramps up counts the load it met).
    concurrency: int
    ended_at: float = 0.0  # wall clock (unix s) at the answer's end: dates the limit's changes

    @property
    def stream_tokens_per_s(self) -> float | None:
        """Per-stream decode rate: tokens after the first over the time after the first; a whole answer's
        completion tokens over its whole latency (it hides its first token). None: too few tokens."""
        if self.streamed:
            decode_s = self.latency_s - self.ttft_s
            if self.completion_tokens < 2 or decode_s <= 0:
                return None
            return (self.completion_tokens - 1) / decode_s
        if self.completion_tokens < 1 or self.latency_s <= 0:
            return None
        return self.completion_tokens / self.latency_s
