"""The ``advisor:`` config section: how often, over what window, and what each workload needs.

Validated with the rest of the config at start-up. The price and capacity catalog is separate
(``catalog.py``); ``advisor.catalog`` overrides entries of the built-in one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DAYS_PER_MONTH = 30.4375  # an average month (365.25 / 12): what "per month" means in every figure
Share = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkloadNeeds(_Strict):
    """What a workload (a public model name) requires; it decides which candidates are allowed."""

    catalog_model: str | None = None  # the catalog's name for it; default: the public model name
    off_catalog: bool = False  # fine-tuned or private weights: no shared serverless API serves it
    latency_sla: bool = False  # needs a latency SLA a shared serverless API does not give
    isolation: bool = False  # data may not share hardware with other customers
    # Real-time traffic that nobody waits for, so it could have been async (the batch track):
    async_eligible: bool = False  # all of it
    async_eligible_tenants: list[str] = []  # or that of these tenants

    @property
    def serverless_allowed(self) -> bool:
        """Whether a shared per-token API may serve it (the decision tree's last branch)."""
        return not (self.off_catalog or self.latency_sla or self.isolation)


class Autoscaling(_Strict):
    """How an autoscaled dedicated deployment behaves (the 'dedicated, autoscaled' candidate)."""

    # False: the team has no autoscaler, so the 'dedicated, autoscaled' candidate is not offered.
    enabled: bool = True
    scale_out_lead_min: Annotated[int, Field(ge=0, le=240)] = (
        10  # a replica serves this long after it is asked for
    )
    scale_in_delay_min: Annotated[int, Field(ge=0, le=1440)] = 15  # kept this long after demand drops
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    billing_granularity_min: Annotated[int, Field(ge=1, le=1440)] = (
        1  # a replica's time is billed in these blocks
    )


class MixSettings(_Strict):
    """GPU mixes (``mix.py``, ``fleet.py``): where a model can run on several GPU types, the cheapest mix."""

    enabled: bool = True
    # A shape's demand is cut into this many slices, each served by one type (Mélange's default: 8).
    slices: Annotated[int, Field(ge=1, le=32)] = 8
    # The 'mix per period' candidate changes its mix at these boundaries of the week.
    period_min: Annotated[int, Field(ge=60, le=10080)] = 240


class ProfileSlo(_Strict):
    """The SLO an imported profile's points are checked against (when the file has no goodput)."""

    ttft_p99_ms: Annotated[float, Field(gt=0)] | None = None
    itl_median_ms: Annotated[float, Field(gt=0)] | None = None


class ProfileImport(_Strict):
    """A capacity profile measured elsewhere (vLLM bench serve, GuideLLM, silybench) for one model on one
    replica of a GPU type: the shape table's ``imported`` cells. The file is read by ``load_profiles``."""

    model: str
    gpu_type: str
    gpus_per_replica: Annotated[int, Field(ge=1, le=64)] = 1
    path: str
    format: Literal["auto", "vllm", "guidellm", "silybench"] = "auto"
    slo: ProfileSlo = ProfileSlo()


class AdvisorConfig(_Strict):
    """When and how the advisor re-evaluates the cheapest architecture from metered traffic."""

    enabled: bool = True
    interval_s: Annotated[float, Field(ge=10)] = 300.0  # one evaluation across all replicas this often
    # Metered history to replay (the meter keeps 35 days); two weekly cycles give high confidence.
    window_days: Annotated[float, Field(gt=0, le=35)] = 14.0
    # Dedicated replicas are sized to run at most this busy: the headroom a latency SLA needs.
    utilization_cap: Share = 0.6
    autoscaling: Autoscaling = Autoscaling()
    mix: MixSettings = MixSettings()
    # A change is recommended only when it saves at least this much, at least this often in a row.
    min_saving_pct: Annotated[float, Field(ge=0, le=100)] = 10.0
    min_saving_usd_per_month: Annotated[float, Field(ge=0)] = 50.0
    stable_evaluations: Annotated[int, Field(ge=1, le=100)] = 3
    per_tenant: bool = False  # one workload per model × tenant instead of per model
    workloads: dict[str, WorkloadNeeds] = {}
    # Entries merged over the built-in catalog (same shape as config/catalog.yaml): your own prices.
    catalog: dict[str, Any] = {}
    # Capacity profiles measured elsewhere, per model × GPU type (``profiles.load_profiles`` reads them).
    profiles: list[ProfileImport] = []

    def needs(self, model: str) -> WorkloadNeeds:
        """The configured needs of a public model name (defaults when not configured)."""
        return self.workloads.get(model) or WorkloadNeeds()
