"""What a test proxy's configuration is made of: keys, backend sections, a dedicated backend's config."""

from __future__ import annotations

from typing import Any

from tokenyard.config import BackendConfig

CLIENT_KEY = "sk-test-team-a-0123456789"
OTHER_KEY = "sk-test-team-b-0123456789"
ADMIN_KEY = "sk-admin-0123456789abcdef"
UPSTREAM_SECRET = "sk-upstream-SECRET-do-not-leak-42"


def backend(kind: str, base_url: str, *, max_concurrency: int | None = None, **extra: Any) -> dict[str, Any]:
    """A backend section for a config dict (dedicated ones get GPU fields)."""
    section: dict[str, Any] = {"kind": kind, "base_url": base_url, "api_key": UPSTREAM_SECRET, **extra}
    if kind == "dedicated":
        section.update(
            gpu_type="H100-80GB",
            gpus_per_replica=1,
            replicas=1,
            gpu_hour_price=2.5,
            max_concurrency=max_concurrency or 4,
        )
    elif max_concurrency is not None:
        section["max_concurrency"] = max_concurrency
    return section


def keys_section() -> dict[str, Any]:
    """Two tenants: team-a may use every model, team-b only ``small``."""
    return {
        "team-a": {"key": CLIENT_KEY},
        "team-b": {"key": OTHER_KEY, "models": ["small"]},
    }


def dedicated_config(
    *,
    gpus_per_replica: int = 1,
    replicas: int = 1,
    gpu_hour_price: float = 1.0,
    max_concurrency: int = 4,
    **extra: Any,
) -> BackendConfig:
    """A dedicated backend's config (nothing listens at its URL: for tests of the meter alone)."""
    return BackendConfig(
        kind="dedicated",
        base_url="http://127.0.0.1:9/v1",
        gpu_type="H100",
        gpus_per_replica=gpus_per_replica,
        replicas=replicas,
        gpu_hour_price=gpu_hour_price,
        max_concurrency=max_concurrency,
        **extra,
    )
