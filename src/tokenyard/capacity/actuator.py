"""The actuator: applies a backend's desired replicas, within guardrails, by webhook or by command.

``plan_step`` is the pure guardrail decision: the target within ``min_replicas``..``max_replicas``, at most
``max_step`` away from what runs now, and nothing within ``cooldown_s`` of the last action on the backend
(a failed one included: a scaler that refused is not asked again at once). ``dry_run`` (the default)
decides and logs exactly that, and applies nothing.

Two kinds apply a step:

- ``webhook``: POSTs the decision as JSON to ``url`` (its host must be in ``allow_hosts``, checked when
  the config is read and again before each POST), signed like job callbacks (``wire.signatures``) when a
  secret is set; any 2xx is success;
- ``command``: runs ``command`` (an argv, no shell) with ``{backend}`` and ``{replicas}`` replaced, e.g.
  ``["kubectl", "scale", "deployment/{backend}", "--replicas={replicas}"]``; exit 0 within ``timeout_s``
  is success.

What is shown of the actuator (``GET /admin/capacity``, the stored decisions) is redacted: webhook URLs
carry tokens in their path or query, commands carry them in ``--flag=value`` arguments. ``public_settings``
keeps the URL's scheme, host and port and the command's program name; outcomes keep no ``=value``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from tokenyard.adapters.base import Webhook
from tokenyard.capacity.settings import Actuator
from tokenyard.errors import UpstreamError
from tokenyard.wire.signatures import H_SIGNATURE, sign

_STDERR_TAIL_CHARS = 300
_FLAG_VALUE = re.compile(r"(\S*?=)\S+")  # --token=abc, TOKEN=abc: the value goes


def redact_url(url: str | None) -> str | None:
    """``url`` without its user info, path, query and fragment: scheme://host[:port] only."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(unparseable url)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def scrub(text: str) -> str:
    """``text`` (a command's stderr, an error) without the value of any ``name=value`` token."""
    return _FLAG_VALUE.sub(r"\1…", text)


def public_settings(settings: Actuator) -> dict[str, Any]:
    """The actuator's settings as shown and stored: no secret, the URL and command redacted."""
    shown = settings.model_dump(mode="json", exclude={"secret"})
    shown["url"] = redact_url(settings.url)
    shown["command"] = settings.command[:1] if settings.command else settings.command
    return shown


@dataclass(frozen=True, slots=True)
class Step:
    """What the guardrails allow for one backend now: a target (None: hold) and why."""

    target: int | None
    reason: str


def plan_step(
    desired: int, provisioned: int, *, settings: Actuator, last_action_at: float | None, now: float
) -> Step:
    """The guarded step from ``provisioned`` toward ``desired`` replicas at ``now``."""
    goal = min(settings.max_replicas, max(settings.min_replicas, desired))
    bounded = f" (desired {desired}, bounded to {goal})" if goal != desired else f" (desired {desired})"
    if goal == provisioned:
        return Step(None, f"holds at {provisioned}{bounded}")
    if last_action_at is not None and now - last_action_at < settings.cooldown_s:
        left = settings.cooldown_s - (now - last_action_at)
        return Step(None, f"cool-down: {left:.0f} s before the next change{bounded}")
    change = max(-settings.max_step, min(settings.max_step, goal - provisioned))
    target = provisioned + change
    direction = "out" if change > 0 else "in"
    limited = f", at most {settings.max_step} per step" if target != goal else ""
    return Step(target, f"scale {direction} {provisioned} → {target}{bounded}{limited}")


@dataclass(frozen=True, slots=True)
class Action:
    """One change to apply: the backend, from how many replicas to how many, and what led to it."""

    id: str
    backend: str
    provisioned: int
    target: int
    desired_now: int | None
    desired_next: int | None
    reasons: list[str]
    at: float  # unix s

    def payload(self) -> bytes:
        """The webhook's JSON body."""
        return orjson.dumps(
            {
                "object": "capacity.decision",
                "id": self.id,
                "backend": self.backend,
                "replicas": self.target,
                "from": self.provisioned,
                "desired": {"now": self.desired_now, "next": self.desired_next},
                "reasons": self.reasons,
                "at": self.at,
            }
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How applying an action went."""

    ok: bool
    detail: str  # "webhook answered 204", "exit 0", "failed: exit 1: no such deployment"


class Applies(Protocol):
    """Something that applies an action (a webhook POST, a command)."""

    async def apply(self, action: Action) -> Outcome: ...


def allowed_host(url: str, allow_hosts: list[str]) -> bool:
    """Whether ``url``'s host is one of ``allow_hosts`` (no other server is ever POSTed to)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and host in {h.lower() for h in allow_hosts}


class WebhookActuation:
    """POSTs the decision to the configured URL, signed, through an ``adapters.base.Webhook``."""

    def __init__(self, webhook: Webhook, settings: Actuator, *, wall: Callable[[], float]) -> None:
        self.webhook = webhook
        self.settings = settings
        self.wall = wall

    async def apply(self, action: Action) -> Outcome:
        """POST the action; success is a 2xx answer."""
        url = self.settings.url or ""
        if not allowed_host(url, self.settings.allow_hosts):
            return Outcome(False, f"failed: the host of {redact_url(url)!r} is not in actuator.allow_hosts")
        body = action.payload()
        headers = {"Content-Type": "application/json"}
        if self.settings.secret is not None:
            headers[H_SIGNATURE] = sign(self.settings.secret.get_secret_value(), body, int(self.wall()))
        try:
            status = await self.webhook.post(url, body, headers, self.settings.timeout_s)
        except UpstreamError as exc:
            return Outcome(False, f"failed: {scrub(exc.message.replace(url, redact_url(url) or ''))}")
        if 200 <= status < 300:
            return Outcome(True, f"webhook answered {status}")
        return Outcome(False, f"failed: webhook answered {status}")


class CommandActuation:
    """Runs the configured argv with the backend and the replicas filled in."""

    def __init__(self, settings: Actuator) -> None:
        self.settings = settings

    def argv(self, action: Action) -> list[str]:
        """The command line for ``action``."""
        fill = {"{backend}": action.backend, "{replicas}": str(action.target)}
        out = []
        for arg in self.settings.command or []:
            for placeholder, value in fill.items():
                arg = arg.replace(placeholder, value)
            out.append(arg)
        return out

    async def apply(self, action: Action) -> Outcome:
        """Run the command; success is exit 0 within the timeout."""
        argv = self.argv(action)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return Outcome(False, f"failed: cannot run {argv[0]!r}: {exc.strerror or exc}")
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                _, err = await proc.communicate()
        except TimeoutError:
            await _kill(proc)
            return Outcome(False, f"failed: still running after {self.settings.timeout_s:g} s (killed)")
        except asyncio.CancelledError:  # stopping: never leave it running
            await _kill(proc)
            raise
        if proc.returncode == 0:
            return Outcome(True, "exit 0")
        tail = scrub(err.decode(errors="replace").strip())[-_STDERR_TAIL_CHARS:]
        return Outcome(False, f"failed: exit {proc.returncode}" + (f": {tail}" if tail else ""))


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def actuation_for(settings: Actuator, webhook: Webhook, *, wall: Callable[[], float]) -> Applies:
    """The actuation of ``settings``' kind."""
    if settings.kind == "webhook":
        return WebhookActuation(webhook, settings, wall=wall)
    return CommandActuation(settings)
