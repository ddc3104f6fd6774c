"""The lines DESIGN.md says are never crossed, checked on the import graph."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import TopologicalSorter
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "tokenyard"

# The rooms of the service: each a package under tokenyard/, in the order the data flows through them.
ROOMS = (
    "edge",
    "admission",
    "proxy",
    "queue",
    "tracing",
    "capacity",
    "meter",
    "advisor",
    "telemetry",
    "stores",
    "adapters",
    "simulator",
    "dialects",
    "wire",
)


def modules_imported(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def imports_of(room: str) -> dict[str, set[str]]:
    """Each module of ``room`` (a package, or a module at the top of tokenyard/) and what it imports."""
    paths = sorted((SRC / room).rglob("*.py")) if (SRC / room).is_dir() else [SRC / f"{room}.py"]
    return {str(path.relative_to(SRC)): set(modules_imported(path)) for path in paths}


def rooms_reached(room: str) -> set[str]:
    """The other rooms (and top-level modules) ``room`` imports from."""
    return {
        name.split(".")[1]
        for names in imports_of(room).values()
        for name in names
        if name.startswith("tokenyard.") and name.split(".")[1] != room
    }


TERMINAL = {"terminal"}  # tables and progress bars for the commands


@pytest.mark.parametrize(
    ("room", "may_import"),
    [
        ("wire", {"errors"}),
        ("dialects", {"errors", "wire"}),  # pure translation between client APIs and chat completions
        ("adapters", {"errors", "wire"}),
        ("simulator", {"errors", "wire"}),
        ("stores", {"errors"}),
        ("admission", {"errors", "config"}),
        ("meter", {"errors", "config", "stores"}),
        ("capacity", {"errors", "config", "wire", "adapters", "meter", "stores"}),
        ("advisor", {"errors", "config", "capacity", "meter", "stores"} | TERMINAL),
        ("queue", {"errors", "config", "wire", "adapters", "admission", "meter", "stores"}),
        ("tracing", {"meter", "queue"}),  # spans of requests and jobs, from what the meter and queue hold
        (
            "proxy",
            {
                "errors",
                "config",
                "live",
                "wire",
                "adapters",
                "admission",
                "capacity",
                "dialects",
                "meter",
                "queue",
                "tracing",
                "stores",  # the budget protocol only: a budgeted key's one atomic round trip (DESIGN.md)
            },
        ),
        (
            "telemetry",
            {
                "errors",
                "config",
                "live",
                "wire",
                "admission",
                "meter",
                "stores",
                "proxy",
                "queue",
                "advisor",
                "capacity",
                "terminal",
            },
        ),
    ],
)
def test_each_room_imports_only_the_rooms_below_it(room: str, may_import: set[str]) -> None:
    assert rooms_reached(room) <= may_import


def test_the_rooms_import_each_other_without_a_cycle() -> None:
    """``config`` is left out: it gathers each room's settings section, which imports nothing of the room."""
    graph = {room: rooms_reached(room) & set(ROOMS) for room in ROOMS}
    TopologicalSorter(graph).prepare()  # raises CycleError


def test_the_queue_is_handed_callables_not_the_proxy() -> None:
    """The dispatcher runs a job through a callable; adapters reach it only through their protocols."""
    for module, names in imports_of("queue").items():
        assert not {n for n in names if n.startswith("tokenyard.proxy")}, module
        assert {n for n in names if n.startswith("tokenyard.adapters")} <= {"tokenyard.adapters.base"}, module


def test_only_adapters_speak_http_to_other_servers() -> None:
    for room in ROOMS:
        if room in ("adapters", "edge", "simulator"):  # edge and simulator serve HTTP (uvicorn), not call it
            continue
        for module, names in imports_of(room).items():
            assert not {n for n in names if n.split(".")[0] in {"aiohttp", "httpx", "requests"}}, module


def test_only_the_tracing_rooms_exporting_half_imports_opentelemetry() -> None:
    """OpenTelemetry is an extra: the request path holds a ``tracing.trace.Tracer`` and imports none of it."""
    for room in ROOMS:
        for module, names in imports_of(room).items():
            if module in ("tracing/spans.py", "tracing/export.py"):
                continue
            assert not {n for n in names if n.startswith("opentelemetry")}, module


def test_the_service_depends_on_no_test_double() -> None:
    """Only the composition root (the CLI) starts simulators; the config only names their settings."""
    for room in ROOMS:
        if room == "simulator":
            continue
        for module, names in imports_of(room).items():
            assert not {n for n in names if n.startswith("tokenyard.simulator")}, module
    assert {n for n in imports_of("config")["config.py"] if n.startswith("tokenyard.simulator")} <= {
        "tokenyard.simulator.config"
    }


PURE = (
    "proxy/routing.py",
    "admission/classify.py",
    "queue/paths.py",
    "proxy/breaker.py",
    "proxy/whole_as_stream.py",
    "proxy/whole_as_events.py",
    "proxy/endpoints.py",
    "dialects/responses.py",
    "dialects/messages.py",
    "meter/usage.py",
    "edge/routes.py",
    "meter/pricing.py",
    "meter/engine_usage.py",
    "capacity/truth.py",
    "advisor/traffic.py",
    "advisor/costs.py",
    "advisor/decide.py",
    "advisor/workloads.py",
    "advisor/service.py",
    "advisor/plot.py",
    "capacity/envelope.py",
    "capacity/limiter.py",
    "wire/openai.py",
    "wire/sse.py",
    "capacity/desired.py",
    "capacity/engine.py",
)


@pytest.mark.parametrize("module", PURE)
def test_pure_decisions_do_no_io(module: str) -> None:
    io_modules = (
        "asyncio",
        "aiohttp",
        "socket",
        "redis",
        "sqlite3",
        "time",
        "tokenyard.adapters",
        "tokenyard.meter.store",
        "tokenyard.stores",
        "uvicorn",
    )
    names = set(modules_imported(SRC / module))
    assert not {n for n in names if n.startswith(io_modules)}
