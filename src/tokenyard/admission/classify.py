"""Real-time or async: a pure decision over one request's signals, with the reason (no I/O, no clock).

In this order, the first that speaks decides:

1. the request's own signals: a Responses request's ``background: true`` (OpenAI's own "nobody waits": it
   is answered with the queued response at once, and polled with ``GET /v1/responses/{id}``),
   ``Prefer: respond-async`` (RFC 7240: answer 202 and let the client poll),
   the ``x-tokenyard-mode`` header (``realtime`` / ``async``), ``service_tier: "flex"`` or ``"batch"``;
2. the virtual key's policy (``keys.NAME.mode``);
3. the first matching rule of ``async_track.rules`` (model, endpoint, tenant, user, stream, metadata);
4. otherwise real-time.

An async request is delivered one of two ways: ``poll`` (it asked with ``Prefer: respond-async``) or
``hold`` (a plain client keeps its connection and gets the normal response when the job is done). A
stream is read as it is produced, so a streaming request is always served in real time, and asking to
poll one is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenyard.errors import InvalidRequest

Mode = Literal["realtime", "async"]
Delivery = Literal["respond", "poll", "hold"]
MODE_HEADER = "x-tokenyard-mode"
ASYNC_TIERS = ("flex", "batch")  # service_tier values that mean nobody waits


@dataclass(frozen=True, slots=True)
class Rule:
    """A config rule: requests it matches run in ``mode`` (``None`` fields match anything)."""

    mode: Mode
    deadline_s: float | None = None
    models: frozenset[str] | None = None
    endpoints: frozenset[str] | None = None  # chat | completions | embeddings | responses | messages
    tenants: frozenset[str] | None = None
    users: frozenset[str] | None = None
    stream: bool | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # every pair must be in the request's metadata

    def matches(self, facts: RequestFacts) -> bool:
        """Whether the request is one this rule speaks for."""
        return (
            (self.models is None or facts.model in self.models)
            and (self.endpoints is None or facts.endpoint in self.endpoints)
            and (self.tenants is None or facts.tenant in self.tenants)
            and (self.users is None or facts.user in self.users)
            and (self.stream is None or facts.stream == self.stream)
            and all(facts.metadata.get(key) == value for key, value in self.metadata)
        )


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What classification reads of one request (from its headers, its key and its parsed body)."""

    model: str
    endpoint: str
    tenant: str
    stream: bool
    prefer: str | None = None  # the Prefer header
    mode_header: str | None = None  # x-tokenyard-mode
    service_tier: Any = None  # the body's service_tier, as sent
    user: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    key_name: str = ""
    key_mode: Mode | None = None
    key_deadline_s: float | None = None
    background: bool = False  # a Responses request's ``background: true``


@dataclass(frozen=True, slots=True)
class Decision:
    """Real-time or async, how an async answer is delivered, by when, and why."""

    mode: Mode
    delivery: Delivery
    reason: str
    deadline_s: float | None = None  # async only: seconds from now
    background: bool = False  # a background response: answered as one, polled at /v1/responses/{id}


def prefers_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header asks for ``respond-async`` (RFC 7240: comma-separated, ``;`` params)."""
    if not prefer:
        return False
    return any(
        part.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async"
        for part in prefer.split(",")
    )


def classify(
    facts: RequestFacts,
    rules: Sequence[Rule] = (),
    *,
    default_deadline_s: float = 86400.0,
    flex_deadline_s: float = 600.0,
) -> Decision:
    """Decide real-time or async for one request; ``InvalidRequest`` for signals that contradict."""
    rule = next((r for r in rules if r.matches(facts)), None)
    deadline_s = facts.key_deadline_s or (rule.deadline_s if rule else None) or default_deadline_s

    def async_(delivery: Delivery, reason: str, deadline: float = deadline_s) -> Decision:
        return Decision("async", delivery, reason, deadline)

    if facts.background:
        if facts.stream:
            raise InvalidRequest(
                "tokenyard runs a background response on its async track and does not stream it: drop "
                "'stream' and poll GET /v1/responses/{id}.",
                param="stream",
            )
        return Decision("async", "poll", "background: true", deadline_s, background=True)
    explicit = _explicit(facts)
    if explicit is not None:
        mode, reason = explicit
        if mode == "realtime":
            return Decision("realtime", "respond", reason)
        if prefers_async(facts.prefer):
            if facts.stream:
                raise InvalidRequest(
                    "A streamed request cannot be answered later: drop 'stream' or 'Prefer: respond-async'.",
                    param="stream",
                )
            return async_("poll", reason)
        if facts.stream:  # the client reads a stream as it comes: serve it now (at its tier's price)
            return Decision("realtime", "respond", f"{reason}, but streamed: served in real time")
        flex = facts.service_tier == "flex" and reason.startswith("service_tier")
        return async_("hold", reason, min(deadline_s, flex_deadline_s) if flex else deadline_s)
    decided = _policy(facts, rule)
    if decided is None:
        return Decision("realtime", "respond", "default")
    mode, reason = decided
    if mode == "realtime":
        return Decision("realtime", "respond", reason)
    if facts.stream:  # nobody streams from a queue: serve it now
        return Decision("realtime", "respond", f"{reason}, but streamed: served in real time")
    return async_("hold", reason)


def _explicit(facts: RequestFacts) -> tuple[Mode, str] | None:
    """The request's own signal, if it gives one."""
    if prefers_async(facts.prefer):
        return "async", "Prefer: respond-async"
    if facts.mode_header is not None:
        value = facts.mode_header.strip().lower()
        if value not in ("realtime", "async"):
            raise InvalidRequest(
                f"The {MODE_HEADER} header must be 'realtime' or 'async', not {facts.mode_header!r}."
            )
        return ("async" if value == "async" else "realtime"), f"{MODE_HEADER}: {value}"
    if facts.service_tier in ASYNC_TIERS:
        return "async", f"service_tier: {facts.service_tier}"
    return None


def _policy(facts: RequestFacts, rule: Rule | None) -> tuple[Mode, str] | None:
    """The key's policy, else the first matching rule, if either says."""
    if facts.key_mode is not None:
        return facts.key_mode, f"key {facts.key_name}: {facts.key_mode}"
    if rule is not None:
        return rule.mode, f"rule: {_describe(rule)}"
    return None


def _describe(rule: Rule) -> str:
    parts = [
        f"{name}={','.join(sorted(values))}"
        for name, values in (
            ("model", rule.models),
            ("endpoint", rule.endpoints),
            ("tenant", rule.tenants),
            ("user", rule.users),
        )
        if values is not None
    ]
    if rule.stream is not None:
        parts.append(f"stream={str(rule.stream).lower()}")
    parts += [f"metadata.{k}={v}" for k, v in rule.metadata]
    return " ".join(parts) or "every request"
