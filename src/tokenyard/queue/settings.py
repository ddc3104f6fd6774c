"""The ``async_track:`` config section: deadlines, how long a held connection waits, provider batches,
callbacks, and the rules that make requests async."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from tokenyard.admission.classify import Rule

PositiveFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(gt=0, le=1)]
Endpoint = Literal["chat", "completions", "embeddings", "responses", "messages"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleMatch(_Strict):
    """What a rule matches; a field left out matches anything."""

    model: list[str] | None = None
    endpoint: list[Endpoint] | None = None
    tenant: list[str] | None = None
    user: list[str] | None = None  # the body's "user"
    stream: bool | None = None
    metadata: dict[str, str] = {}  # every pair must be in the body's "metadata"


class AsyncRule(_Strict):
    """Requests this rule matches run in ``mode`` (the first matching rule decides)."""

    match: RuleMatch = RuleMatch()
    mode: Literal["realtime", "async"]
    deadline_s: PositiveFloat | None = None

    def rule(self) -> Rule:
        """The classifier's form of this rule."""
        m = self.match

        def values(items: list[str] | None) -> frozenset[str] | None:
            return None if items is None else frozenset(items)

        return Rule(
            mode=self.mode,
            deadline_s=self.deadline_s,
            models=values(m.model),
            endpoints=None if m.endpoint is None else frozenset(m.endpoint),
            tenants=values(m.tenant),
            users=values(m.user),
            stream=m.stream,
            metadata=tuple(sorted(m.metadata.items())),
        )


class ProviderBatches(_Strict):
    """How jobs are gathered into provider Batch API submissions."""

    max_wait_s: Annotated[float, Field(ge=0)] = 30.0  # gather a model's jobs this long before submitting
    max_requests: Annotated[int, Field(gt=0, le=50_000)] = 50_000
    poll_s: PositiveFloat = 10.0  # how often open batches are checked
    completion_window: str = "24h"
    # A job goes to a provider batch only if its deadline leaves this long for the batch to finish. Not the
    # whole 24 h window (then no default-deadline job ever would): providers usually finish within hours,
    # and a batch still open when its jobs' deadline comes close is cancelled and the rest run real-time.
    expected_turnaround_s: PositiveFloat = 6 * 3600.0


class Callbacks(_Strict):
    """Where finished jobs may be POSTed (never anywhere else: no SSRF), and the HMAC key that signs them."""

    allow_hosts: list[str] = []
    secret: SecretStr | None = None  # unset (or empty): callbacks are sent unsigned
    timeout_s: PositiveFloat = 10.0

    @field_validator("secret")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None


class AsyncTrackConfig(_Strict):
    """The async track: who is async, by when it must be answered, and how it is carried there."""

    enabled: bool = True
    default_deadline_s: PositiveFloat = 86_400.0
    flex_deadline_s: PositiveFloat = 600.0
    # A held connection (a plain client whose request is async) waits at most this long, then is served
    # in real time.
    max_hold_s: PositiveFloat = 300.0
    # A job whose deadline is this close is served in real time rather than wait for cheaper capacity.
    realtime_margin_s: PositiveFloat = 60.0
    # Async work fills a dedicated backend's slots up to this share of its cap, leaving the rest to
    # real-time traffic (which always comes first).
    idle_fill_cap: Share = 0.6
    claim_stale_s: PositiveFloat = 300.0  # a claimed job unanswered this long is handed out again
    batches: ProviderBatches = ProviderBatches()
    callbacks: Callbacks = Callbacks()
    rules: list[AsyncRule] = []

    def classifier_rules(self) -> tuple[Rule, ...]:
        """The rules in the classifier's form, in order."""
        return tuple(rule.rule() for rule in self.rules)
