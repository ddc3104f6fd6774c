"""The price and capacity catalog: per-token prices per model, $/GPU-hour per GPU type, tokens/s per replica.

Every figure carries the date it was read (``as_of``) and where (``source``). The built-in catalog is
``catalog.yaml`` beside this module (also at ``config/catalog.yaml`` in the repository); a config's
``advisor.catalog`` is merged over it, entry by entry, so a team can put in its own negotiated prices.
"""

from __future__ import annotations

from datetime import date
from importlib import resources
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Dated(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    as_of: date  # when the figure was read
    source: str = Field(min_length=1)  # where: a URL, or a note saying how it was measured


class TokenPrices(_Dated):
    """Per-token prices, USD per one million tokens."""

    input_per_1m: NonNegativeFloat
    cached_input_per_1m: NonNegativeFloat | None = None  # None: same as input
    output_per_1m: NonNegativeFloat

    def cost_usd(self, prompt: float, cached: float, completion: float) -> float:
        """The price of ``prompt`` input tokens (``cached`` of them from the prompt cache) and the output."""
        cached_price = self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        return (
            (prompt - cached) * self.input_per_1m + cached * cached_price + completion * self.output_per_1m
        ) / 1e6


class CommittedTerm(_Dated):
    """A committed-use (reserved) price: paid for every hour of the term, busy or idle."""

    term_days: Annotated[float, Field(gt=0, le=3 * 366)]
    gpu_hour_usd: PositiveFloat


class SpotTerms(_Dated):
    """A spot price, and how often spot capacity is taken back."""

    gpu_hour_usd: PositiveFloat
    interruptions_per_day: Annotated[float, Field(ge=0, le=100)]  # per replica
    recovery_min: Annotated[float, Field(gt=0, le=1440)]  # until a replacement replica serves


class GpuPrice(_Dated):
    """What one GPU of a type costs per hour, on demand — and, where public, committed and on spot."""

    gpu_hour_usd: PositiveFloat
    committed: list[CommittedTerm] = []
    spot: SpotTerms | None = None


class ReplicaCapacity(_Dated):
    """What one dedicated replica of a model sustains on a GPU type, at the concurrency its SLA allows."""

    gpu_type: str
    gpus_per_replica: Annotated[int, Field(gt=0, le=16)]
    input_tokens_per_s: PositiveFloat  # prefill throughput, with the replica otherwise idle
    output_tokens_per_s: PositiveFloat  # aggregate decode throughput over all streams
    # Work of a prompt-cache hit relative to an uncached input token (prefix caching skips the prefill).
    cached_input_work: Annotated[float, Field(ge=0, le=1)] = 0.1
    at: str = ""  # the condition the figure holds at, e.g. "64 concurrent streams, p95 TTFT < 1 s"


class ModelEntry(BaseModel):
    """Everything the catalog knows about one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aliases: list[str] = []
    serverless: TokenPrices | None = None
    batch: TokenPrices | None = None
    dedicated_serverless: TokenPrices | None = None
    dedicated: list[ReplicaCapacity] = []


class Catalog(BaseModel):
    """The whole catalog: GPU prices and model entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: dict[str, GpuPrice] = {}
    models: dict[str, ModelEntry] = {}

    @model_validator(mode="after")
    def _known_gpus(self) -> Catalog:
        unknown = sorted(
            {
                f"models.{name}.dedicated: unknown gpu_type {option.gpu_type!r}"
                for name, entry in self.models.items()
                for option in entry.dedicated
                if option.gpu_type not in self.gpus
            }
        )
        if unknown:
            raise ValueError("; ".join(unknown))
        return self

    def model(self, name: str) -> ModelEntry | None:
        """A model's entry by its catalog name or one of its aliases (case-insensitive)."""
        wanted = name.lower()
        for key, entry in self.models.items():
            if key.lower() == wanted or wanted in (alias.lower() for alias in entry.aliases):
                return entry
        return None


def builtin_catalog_tree() -> dict[str, Any]:
    """The built-in catalog as parsed YAML."""
    text = resources.files("tokenyard.advisor").joinpath("catalog.yaml").read_text()
    tree = yaml.safe_load(text)
    assert isinstance(tree, dict), "catalog.yaml must be a mapping"
    return tree


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``: mappings recursively, anything else replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def load_catalog(overrides: dict[str, Any] | None = None) -> Catalog:
    """The built-in catalog with ``overrides`` (a config's ``advisor.catalog``) merged over it.

    Raises ``pydantic.ValidationError`` naming the path of every bad figure.
    """
    return Catalog.model_validate(merged(builtin_catalog_tree(), overrides or {}))


__all__ = [
    "Catalog",
    "CommittedTerm",
    "GpuPrice",
    "ModelEntry",
    "ReplicaCapacity",
    "SpotTerms",
    "TokenPrices",
    "ValidationError",
    "load_catalog",
]
