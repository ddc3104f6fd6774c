"""Capacity profiles a user imports, read as the benchmark tools write them (pure parsing; the caller reads
the file).

A profile says, for a model on one replica of a GPU type, how many requests per second it sustained at given
prompt and completion lengths while meeting the SLO. Three formats are accepted as they are written:

- vLLM's ``vllm bench serve --save-result`` JSON (with ``--goodput``: ``request_goodput`` is the rate that
  met the SLO; without it, ``request_throughput`` with the run's latency percentiles checked against the SLO
  given);
- GuideLLM's benchmark report (``guidellm benchmark --output-path x.json``), a sweep of rates;
- silybench's published results (CSV or JSON), capacity at the SLO per shape.

Each point lands in the shape bucket of its mean lengths; several points of one shape keep the best rate
that met the SLO. The table it gives is the ``imported`` layer of ``shapes.build_table``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Format = Literal["auto", "vllm", "guidellm", "silybench"]


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """One measured operating point: mean lengths and the rate that met the SLO."""

    prompt_tokens: float
    completion_tokens: float
    requests_per_s: float
    meets_slo: bool = True
    note: str = ""  # what it was measured at (concurrency, rate, percentiles)


@dataclass(frozen=True, slots=True)
class Slo:
    """The SLO a point must meet when the file itself does not say it was met (no goodput)."""

    ttft_p99_ms: float | None = None
    itl_median_ms: float | None = None


class ProfileError(ValueError):
    """A file that is none of the accepted formats, or has no usable point (says which and why)."""


def parse_profile(
    text: str, *, name: str, fmt: Format = "auto", slo: Slo | None = None
) -> list[ProfilePoint]:
    """The points of one profile file's text (``name``: the file's name, for the format and messages)."""
    raise NotImplementedError


def cells(points: list[ProfilePoint]) -> dict[int, float]:
    """Shape index → the best requests/s that met the SLO (the ``imported`` layer)."""
    raise NotImplementedError
