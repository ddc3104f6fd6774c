"""The configuration file: pydantic models, ``${ENV}`` interpolation, and errors named by their path.

A config is YAML, validated once at start-up. Every problem is reported at once, each as
``backends.vllm-a.gpu_hour_price: must be > 0``, so a person can fix the file in one pass.
Secrets (upstream ``api_key``, virtual keys) are ``SecretStr``: they never print, not even in errors.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tokenyard.admission.budget_settings import Budget, Budgets, BudgetsConfig, one_per_window
from tokenyard.advisor.settings import AdvisorConfig
from tokenyard.capacity.settings import CapacityConfig, EngineMetrics, Sla, actuator_problems
from tokenyard.errors import ConfigError
from tokenyard.queue.settings import AsyncTrackConfig
from tokenyard.simulator.config import SimulatorConfig
from tokenyard.tracing.settings import TelemetryConfig

BackendKind = Literal["serverless", "dedicated", "dedicated_serverless", "batch"]
# Whose wire format and auth a backend's upstream speaks: OpenAI's (and every OpenAI-compatible engine's),
# Anthropic's, or Azure OpenAI's (OpenAI's bodies under /openai/deployments/{deployment}/…?api-version=).
Provider = Literal["openai", "anthropic", "azure"]
# The inference APIs a backend can take: the client-facing name of each endpoint family.
Api = Literal["chat", "completions", "embeddings", "responses", "messages"]
ALL_APIS: tuple[Api, ...] = ("chat", "completions", "embeddings", "responses", "messages")
_OPENAI_APIS: tuple[Api, ...] = ("chat", "completions", "embeddings")
_OPENAI_HOSTED = re.compile(r"^https://api\.openai\.com(/|$)")
REALTIME_KINDS: frozenset[str] = frozenset({"serverless", "dedicated", "dedicated_serverless"})
_DEDICATED_ONLY = ("gpu_type", "gpus_per_replica", "replicas", "gpu_hour_price")

MAX_REPLICAS = 1000
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prices(_Strict):
    """Per-token prices of a backend, in USD per one million tokens."""

    input_per_1m: NonNegativeFloat = 0.0
    cached_input_per_1m: NonNegativeFloat | None = None  # None: same as input_per_1m
    # Writing a prompt into a provider's cache (Anthropic's cache_creation_input_tokens: 1.25x input for a
    # 5-minute cache). None: same as input_per_1m, as providers that cache without a write charge bill it.
    cache_write_input_per_1m: NonNegativeFloat | None = None
    output_per_1m: NonNegativeFloat = 0.0


class Timeouts(_Strict):
    """How long the proxy waits on a backend before it fails over (or gives up)."""

    connect_s: PositiveFloat = 5.0
    # Until the response head and, for a stream, its first chunk. Nothing has reached the client yet, so
    # exceeding it fails over. A non-streaming answer's head comes after the whole generation: keep it long.
    first_byte_s: PositiveFloat = 300.0
    idle_s: PositiveFloat = 120.0  # the longest silence allowed once the body is flowing


class AzureDeployment(_Strict):
    """Where an Azure OpenAI backend's model lives: its deployment name and the API version to ask for."""

    deployment: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    api_version: str = Field(default="2024-10-21", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")


class BackendConfig(_Strict):
    """One upstream deployment: where it is, how it bills, and how much it may take."""

    kind: BackendKind
    provider: Provider = "openai"
    # The APIs it speaks natively (None: its provider's defaults, see ``speaks``). A Responses or Messages
    # request routed to a backend that speaks only chat is translated to chat completions and back.
    apis: tuple[Api, ...] | None = None
    azure: AzureDeployment | None = None  # provider azure only
    base_url: str | None = None
    simulator: SimulatorConfig | None = None  # started in-process on a free loopback port instead of base_url
    api_key: SecretStr | None = None
    model: str | None = None  # the upstream's model name; default: the public model name
    prices: Prices = Prices()
    # Dedicated (billed per GPU-hour) only.
    # Bounded so a minute of GPU cost stays an exact integer in every store (< 2^53 pico-USD).
    gpu_type: str | None = None
    gpus_per_replica: Annotated[int, Field(gt=0, le=16)] | None = None
    replicas: Annotated[int, Field(gt=0, le=MAX_REPLICAS)] | None = None
    gpu_hour_price: Annotated[float, Field(gt=0, le=30)] | None = None
    # The in-flight cap its latency SLA allows; past it, traffic spills over to the next deployment.
    # Dedicated backends: per replica (the backend takes max_concurrency × replicas).
    max_concurrency: PositiveInt | None = None
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_connections: PositiveInt = 512
    timeouts: Timeouts = Timeouts()
    # The latency targets its in-flight limit is learned from (dedicated and dedicated-serverless only);
    # max_concurrency stays the ceiling and the starting point.
    sla: Sla | None = None
    # The engine's Prometheus metrics: a URL, or "auto" for the base URL's host + /metrics; unset: none.
    metrics_url: str | None = None
    engine: EngineMetrics = EngineMetrics()
    # Send the caller's tenant and key id (never its secret) upstream, under telemetry.identity_headers'
    # names, so an engine-side scheduler or cost tool can attribute per tenant without trusting clients.
    forward_identity: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _consistent(self) -> BackendConfig:
        problems = []
        if (self.base_url is None) == (self.simulator is None):
            problems.append("give exactly one of base_url and simulator")
        if self.kind == "dedicated":
            missing = [name for name in (*_DEDICATED_ONLY, "max_concurrency") if getattr(self, name) is None]
            if missing:
                problems.append(f"a dedicated backend needs {', '.join(missing)}")
        else:
            given = [name for name in _DEDICATED_ONLY if getattr(self, name) is not None]
            if given:
                problems.append(f"{', '.join(given)} only apply to dedicated backends")
        if self.sla is not None and self.kind not in ("dedicated", "dedicated_serverless"):
            problems.append("sla applies to dedicated and dedicated_serverless backends")
        if self.sla is not None and self.max_concurrency is None:
            problems.append("a backend with an sla needs max_concurrency (its ceiling and starting point)")
        if self.metrics_url not in (None, "auto") and not re.match(r"^https?://[^/\s]+", self.metrics_url):
            problems.append("metrics_url must be an http:// or https:// URL, or auto")
        problems += self._provider_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _provider_problems(self) -> list[str]:
        problems = []
        if (self.provider == "azure") != (self.azure is not None):
            problems.append("provider azure needs an azure section (deployment), and only it takes one")
        if self.provider == "anthropic":
            if self.kind in ("dedicated", "dedicated_serverless"):
                problems.append(f"a {self.kind} backend runs an engine: its provider is openai")
            if self.apis is not None and set(self.apis) != {"messages"}:
                problems.append("an anthropic backend speaks messages only")
        if self.provider == "azure" and self.kind == "batch":
            problems.append("Azure's Batch API is not supported: use provider openai or anthropic for batch")
        if self.apis is not None and len(set(self.apis)) != len(self.apis):
            problems.append("apis lists an API twice")
        return problems

    @property
    def speaks(self) -> frozenset[str]:
        """The APIs this backend takes natively: ``apis`` if given, else its provider's defaults.

        Defaults: Anthropic speaks Messages; OpenAI's own API speaks Responses besides chat, completions
        and embeddings; any other OpenAI-compatible base URL (an engine, a serverless host, Azure) chat,
        completions and embeddings (a Responses or Messages request to it is translated to chat); the
        built-in simulator speaks them all. (Azure's Responses API needs an ``api_version`` of
        2025-03-01-preview or later and the deployment as ``model``: say ``apis`` to use it.)
        """
        if self.apis is not None:
            return frozenset(self.apis)
        if self.provider == "anthropic":
            return frozenset({"messages"})
        if self.simulator is not None and self.kind != "batch":
            return frozenset(ALL_APIS)
        hosted = self.provider == "openai" and bool(_OPENAI_HOSTED.match(self.base_url or ""))
        if hosted and self.kind != "batch":
            return frozenset((*_OPENAI_APIS, "responses"))
        return frozenset(_OPENAI_APIS)


class ModelConfig(_Strict):
    """A public model name and the backends that serve it, in order of preference."""

    deployments: list[str] = Field(min_length=1)
    # A backend of kind batch (a provider's Batch API) that async jobs of this model may go to.
    batch: str | None = None
    # preference: always the deployments' order above; plan: each request's shape picks which dedicated GPU
    # type is tried first, as the advisor's GPU plan assigns it (proxy/plan_order.py).
    routing: Literal["preference", "plan"] = "preference"

    @field_validator("deployments")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a backend more than once")
        return value


class KeyConfig(_Strict):
    """A virtual API key handed to a team; it maps to a tenant and may be limited to some models."""

    key: SecretStr
    tenant: str | None = None  # default: the key's name in the file
    models: list[str] | None = None  # None: every model
    # Its requests' mode unless a request says otherwise (async: held or polled), and their deadline.
    mode: Literal["realtime", "async"] | None = None
    deadline_s: PositiveFloat | None = None
    team: str | None = None  # its team's budgets (budgets.teams) count its spend too
    budgets: Budgets = []
    rpm: PositiveInt | None = None  # the key's requests a minute, across every replica
    tpm: PositiveInt | None = None  # its tokens a minute (prompt estimate + output cap)
    # Near a dedicated backend's cap, low leaves it for per-token backends first (routing.priority_headroom).
    priority: Literal["high", "normal", "low"] = "normal"

    @field_validator("budgets")
    @classmethod
    def _one_per_window(cls, value: list[Budget]) -> list[Budget]:
        return one_per_window(value)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters")
        return value


HeadroomShare = Annotated[float, Field(ge=0, le=0.9)]


class PriorityHeadroom(_Strict):
    """The share of a dedicated backend's in-flight cap a key's priority leaves to higher ones: near the
    cap, its requests spill over to the next deployment first (``high`` always uses the whole cap)."""

    low: HeadroomShare = 0.2
    normal: HeadroomShare = 0.0

    @model_validator(mode="after")
    def _low_yields_first(self) -> PriorityHeadroom:
        if self.low < self.normal:
            raise ValueError("low must be at least normal: a lower priority yields first")
        return self

    def shares(self) -> dict[str, float]:
        """Each priority's share, those above 0 only (``high`` is never one): routing looks a request's
        priority up here, and a miss costs it nothing more."""
        return {name: share for name, share in (("low", self.low), ("normal", self.normal)) if share > 0}


class RoutingConfig(_Strict):
    """How failing backends are taken out and probed back in, and who yields a dedicated backend first."""

    failure_threshold: PositiveInt = 3  # consecutive failures that open a backend's circuit
    cooldown_s: PositiveFloat = 10.0  # first cool-down; doubles while probes keep failing
    max_cooldown_s: PositiveFloat = 300.0
    priority_headroom: PriorityHeadroom = PriorityHeadroom()


class ServerConfig(_Strict):
    """The proxy's own listener."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    drain_timeout_s: PositiveInt = 30
    # On SIGTERM, /health/ready answers 503 this long while requests are still served, so a load balancer
    # stops sending new ones before the listener closes; then the drain starts.
    unready_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    # The key for /admin/* (usage API, replica changes). With no keys configured (open, loopback-only
    # mode) the admin API is open too; with keys and no admin_key it is closed.
    admin_key: SecretStr | None = None
    # A dashboard session lasts this long (then sign in again); it also ends when the admin key changes.
    dashboard_session_ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 12 * 3600
    # /metrics names tenants, models and spend: it needs the admin key too, unless made public here
    # (for a scraper on a private network that cannot send a bearer token).
    public_metrics: bool = False
    # Connection limits (see README, "Limits"). A request head (request line + headers) larger than this,
    # or with more header fields, is refused with 431 (nginx allows 4 × 8 KiB, Node 16 KiB).
    max_head_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32 * 1024
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100
    # A client must send its whole head this soon after connecting (or after a new request's first byte),
    head_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # ...and may not pause longer than this in the middle of a body (both answered 408, then closed).
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    keep_alive_s: Annotated[float, Field(gt=0, le=3600)] = 5.0  # an idle connection between requests
    # Client connections held at most; past it the oldest idle one (no request running) is closed. Default:
    # what the file-descriptor limit leaves after fd_reserve. Above that it is obeyed, with a warning.
    max_connections: PositiveInt | None = None
    # Descriptors kept free of client connections, for upstream sockets, the store and files. Default: the
    # backends' max_connections plus 64, at most half of what the limit leaves.
    fd_reserve: Annotated[int, Field(ge=0)] | None = None


def default_store_url() -> str:
    """The embedded store's default place: ``$XDG_DATA_HOME/tokenyard/meter.sqlite3``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data_home) / 'tokenyard' / 'meter.sqlite3'}"


class MeterConfig(_Strict):
    """Where usage is kept and how often it is written there."""

    # redis://host:6379/0 or redis+cluster://node:6379 (shared by any number of replicas), sqlite:///path
    # (embedded), or "off".
    store: str = Field(default_factory=default_store_url)
    redis_prefix: str = "tokenyard"
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # ...or sooner, once this many request records are pending: measured on the bench, a flush of ~500
    # records costs less than holding thousands until the next second (they fall out of the CPU caches).
    flush_records: PositiveInt = 500
    retention_days: PositiveInt = 35  # five weekly cycles for the advisor
    records_max: PositiveInt = 200_000  # the recent-request log is capped at this many records
    # While the store is down, request records are held up to this many (then the oldest are dropped and
    # counted); aggregates are always held, they are small.
    max_pending_records: PositiveInt = 100_000
    max_gpu_gap_s: PositiveInt = 900  # a longer silence (no proxy metering) is not billed as provisioned

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        known = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://", "sqlite:///")
        if value != "off" and not value.startswith(known):
            raise ValueError(
                "must be redis://…, rediss://…, unix://…, redis+cluster://…, rediss+cluster://…, "
                "sqlite:///PATH or off"
            )
        return value

    @property
    def enabled(self) -> bool:
        """Whether metering writes anywhere."""
        return self.store != "off"


class TokenyardConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    routing: RoutingConfig = RoutingConfig()
    meter: MeterConfig = MeterConfig()
    backends: dict[str, BackendConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)
    keys: dict[str, KeyConfig] = {}
    budgets: BudgetsConfig = BudgetsConfig()
    advisor: AdvisorConfig = AdvisorConfig()
    async_track: AsyncTrackConfig = AsyncTrackConfig()
    capacity: CapacityConfig = CapacityConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    def cross_reference_problems(self) -> list[tuple[str, str]]:
        """Problems that span sections: names that point nowhere, duplicated secrets, unsafe listeners."""
        problems: list[tuple[str, str]] = []
        for model_name, model in self.models.items():
            problems += _model_problems(self.backends, model_name, model)
        seen: dict[str, str] = {}
        for key_name, key in self.keys.items():
            if key_name.startswith("key_"):
                problems.append((f"keys.{key_name}", "names starting with key_ are the admin API's key ids"))
            for i, model_name in enumerate(key.models or ()):
                if model_name not in self.models:
                    problems.append((f"keys.{key_name}.models.{i}", f"unknown model {model_name!r}"))
            secret = key.key.get_secret_value()
            if secret in seen:
                problems.append((f"keys.{key_name}.key", f"same key as keys.{seen[secret]}"))
            seen.setdefault(secret, key_name)
        budgeted = self.budgets.tenants or self.budgets.teams or any(k.budgets for k in self.keys.values())
        if budgeted and not self.meter.enabled:
            problems.append(("budgets", "budgets are counted in the meter's store: set meter.store, not off"))
        problems += _catalog_problems(self)
        problems += actuator_problems(self.capacity, {name: b.kind for name, b in self.backends.items()})
        if not self.keys and self.server.admin_key is None and not is_loopback(self.server.host):
            problems.append(
                (
                    "server.host",
                    "with no keys configured tokenyard accepts any bearer key, so it listens on "
                    "loopback only; configure keys (or an admin key, to make them through the admin API) "
                    "to listen on " + self.server.host,
                )
            )
        return problems


def _model_problems(
    backends: dict[str, BackendConfig], model_name: str, model: ModelConfig
) -> list[tuple[str, str]]:
    """A model's deployments must be real-time backends, and its batch backend one of kind batch."""
    problems: list[tuple[str, str]] = []
    for i, backend_name in enumerate(model.deployments):
        backend = backends.get(backend_name)
        path = f"models.{model_name}.deployments.{i}"
        if backend is None:
            problems.append((path, f"unknown backend {backend_name!r}"))
        elif backend.kind not in REALTIME_KINDS:
            problems.append(
                (path, f"backend {backend_name!r} is kind {backend.kind}: it cannot serve real-time")
            )
    if model.batch is not None:
        batch = backends.get(model.batch)
        path = f"models.{model_name}.batch"
        if batch is None:
            problems.append((path, f"unknown backend {model.batch!r}"))
        elif batch.kind != "batch":
            problems.append((path, f"backend {model.batch!r} is kind {batch.kind}, not batch"))
    return problems


def _catalog_problems(config: TokenyardConfig) -> list[tuple[str, str]]:
    """The advisor's catalog overrides, validated merged over the built-in catalog."""
    if not config.advisor.catalog:
        return []
    # Imported here: the proxy itself never reads the catalog (the advisor's worker process does).
    from tokenyard.advisor.catalog import load_catalog

    try:
        load_catalog(config.advisor.catalog)
    except ValidationError as exc:
        return [
            (f"advisor.catalog.{path}" if path else "advisor.catalog", msg)
            for path, msg in _pydantic_problems(exc)
        ]
    return []


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- loading ------------------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(
    tree: Any, env: dict[str, str] | os._Environ[str], path: str = ""
) -> tuple[Any, list[tuple[str, str]]]:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed YAML tree.

    Substitution happens after parsing, so a secret's characters can never change the YAML structure.
    Returns the new tree and the problems (unset variables, by path).
    """
    problems: list[tuple[str, str]] = []

    def substitute(value: str, where: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((where, f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(one, value)

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str):
            return substitute(node, where)
        if isinstance(node, dict):
            return {key: walk(value, _join(where, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, _join(where, i)) for i, value in enumerate(node)]
        return node

    return walk(tree, path), problems


def _join(path: str, part: object) -> str:
    return f"{path}.{part}" if path else str(part)


def _pydantic_problems(exc: ValidationError) -> Iterator[tuple[str, str]]:
    for error in exc.errors(include_url=False, include_input=False):
        # Discriminator/function tags in loc are not part of the file's structure.
        parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        yield ".".join(parts), _readable(error["type"], error["msg"], error.get("ctx") or {})


def _readable(kind: str, message: str, ctx: dict[str, Any]) -> str:
    simple = {
        "missing": "required",
        "extra_forbidden": "unknown field",
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than_equal": "must be <= {le}",
        "too_short": "must not be empty",
        "literal_error": "must be one of {expected}",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "string_type": "must be a string",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "list_type": "must be a list",
        "bool_parsing": "must be true or false",
    }
    if kind in simple:
        return simple[kind].format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})
    if kind == "value_error":
        return str(ctx.get("error", message))
    return message


def parse_config(text: str, *, source: str = "config", env: dict[str, str] | None = None) -> TokenyardConfig:
    """Parse and validate a YAML config text; raise ``ConfigError`` naming every problem by path."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")], source=source
        ) from exc
    if not isinstance(tree, dict):
        raise ConfigError([("", "the file must be a YAML mapping")], source=source)
    tree, problems = interpolate_env(tree, os.environ if env is None else env)
    try:
        config = TokenyardConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(problems + list(_pydantic_problems(exc)), source=source) from exc
    problems += config.cross_reference_problems()
    if problems:
        raise ConfigError(problems, source=source)
    return config


def load_config(path: str | Path | None, *, env: dict[str, str] | None = None) -> TokenyardConfig:
    """Load a config file, or the built-in quick-start config (simulated backends) when ``path`` is None."""
    if path is None:
        text = resources.files("tokenyard").joinpath("quickstart.yaml").read_text()
        return parse_config(text, source="built-in quick-start config", env=env)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror}")], source=str(path)) from exc
    return _files_beside(parse_config(text, source=str(path), env=env), Path(path).parent)


def _files_beside(config: TokenyardConfig, folder: Path) -> TokenyardConfig:
    """The config with the files it names by relative path (``advisor.profiles``) found beside it, so the
    advisor's worker reads the same files wherever it runs from."""
    profiles = config.advisor.profiles
    if not any(not Path(entry.path).is_absolute() for entry in profiles):
        return config
    moved = [
        entry
        if Path(entry.path).is_absolute()
        else entry.model_copy(update={"path": str(folder.absolute() / entry.path)})
        for entry in profiles
    ]
    return config.model_copy(update={"advisor": config.advisor.model_copy(update={"profiles": moved})})
