"""The lines DESIGN.md says are never crossed, checked on the import graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "tokenyard"


def imports_of(package: str) -> set[str]:
    found: set[str] = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


SERVICE = tuple(
    f"tokenyard.{room}"
    for room in ("advisor", "config", "edge", "meter", "proxy", "queue", "stores", "telemetry")
)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("adapters", (*SERVICE, "tokenyard.simulator")),
        ("simulator", (*SERVICE, "tokenyard.adapters")),
    ],
)
def test_lower_rooms_know_nothing_of_the_router(package: str, forbidden: tuple[str, ...]) -> None:
    crossing = {name for name in imports_of(package) if name.startswith(forbidden)}
    assert not crossing


PURE = (
    "proxy/routing.py",
    "proxy/classify.py",
    "queue/paths.py",
    "proxy/breaker.py",
    "proxy/whole_as_stream.py",
    "meter/pricing.py",
    "advisor/traffic.py",
    "advisor/costs.py",
    "advisor/decide.py",
    "advisor/workloads.py",
    "advisor/service.py",
    "advisor/plot.py",
)


def test_pure_decisions_do_no_io() -> None:
    io_modules = (
        "asyncio",
        "aiohttp",
        "socket",
        "redis",
        "sqlite3",
        "time",
        "tokenyard.adapters",
        "tokenyard.meter.store",
        "uvicorn",
    )
    for module in PURE:
        tree = ast.parse((SRC / module).read_text())
        names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {n for n in names if n.startswith(io_modules)}, module
