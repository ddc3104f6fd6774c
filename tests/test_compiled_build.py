"""The opt-in compiled build (``HATCH_BUILD_HOOK_ENABLE_MYPYC=1 pip install .``) serves as the default does.

pyproject.toml names the modules every request runs through; mypyc compiles them to C. Compiled code keeps
Python's meaning only where mypyc can keep it: a generator expression becomes a list, a subclass's class
constant its base does not declare ``ClassVar`` is dropped. So the proxy's own tests run again here, on the
built wheel: the request path, the upstream's habits, the stream taps, keys and budgets.

The wheel is built once per machine and source (``~/.cache/tokenyard/compiled-…``, or under
``$TOKENYARD_CACHE_DIR``): a C compiler and about a minute, then nothing until the source changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import mypy.version
import pytest

from tests.support.machine_cache import CACHE

ROOT = Path(__file__).resolve().parent.parent
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation")
_KEPT_UNUSED_S = 2 * 86_400
# The proxy's tests that go through every compiled module; each file is run as it is, on the compiled wheel.
RERUN = (
    "tests/test_openai_compat.py",  # chat, completions, embeddings, streams: handler, exchange, legs, taps
    "tests/test_upstream_habits.py",  # the upstream client and its deadlines
    "tests/test_http1.py",  # the pool, resends, framing, TLS
    "tests/test_routing.py",  # routing, the breaker, spillover
    "tests/test_classify.py",
    "tests/test_wire.py",
    "tests/test_responses_api.py",  # the named-event stream taps
    "tests/test_messages_api.py",
    "tests/test_key_rate_limits.py",  # auth and a key's own limits
    "tests/test_spend_gate.py",  # budgets: reserve and settle
)


def compiled_modules() -> list[str]:
    """The modules pyproject.toml's mypyc hook compiles, as dotted names."""
    hook = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "hooks"
    ]["mypyc"]
    return [path.removeprefix("/src/").removesuffix(".py").replace("/", ".") for path in hook["include"]]


def _source_key() -> str:
    """What the compiled wheel depends on: the build's config, every source file, Python and mypy."""
    digest = hashlib.sha256(f"{sys.version}\0{mypy.version.__version__}\0".encode())
    for path in [ROOT / "pyproject.toml", *sorted((ROOT / "src" / "tokenyard").rglob("*"))]:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def compiled_tree() -> Path:
    """The compiled wheel, unpacked: a folder to put first on ``PYTHONPATH``."""
    tree = CACHE / f"compiled-{_source_key()}"
    if not tree.is_dir():
        _build(tree)
    os.utime(tree)  # in use: kept
    for stale in CACHE.glob("compiled-*"):  # other sources' builds, unused for two days
        if time.time() - stale.stat().st_mtime > _KEPT_UNUSED_S:
            shutil.rmtree(stale, ignore_errors=True)
    return tree


def _build(tree: Path) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # Built from a copy: hatch-mypyc compiles in place, leaving the modules beside their sources, where
        # this checkout's own (editable) install would load them instead of the sources.
        project = Path(tmp) / "project"
        shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, project / name)
        wheels = Path(tmp) / "wheels"
        # The test extra installs the build's own requirements (hatchling, hatch-mypyc, mypy), so the build
        # uses this virtualenv rather than downloading an isolated one.
        built = subprocess.run(
            [*PIP_WHEEL, "-w", str(wheels), "."],
            cwd=project,
            env={**os.environ, "HATCH_BUILD_HOOK_ENABLE_MYPYC": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, f"the build failed:\n{built.stdout[-6000:]}\n{built.stderr[-6000:]}"
        (wheel,) = wheels.glob("tokenyard-*.whl")
        unpacked = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        try:
            unpacked.rename(tree)  # whole or not at all: a build cut short leaves nothing behind
        except OSError:
            if not tree.is_dir():  # else another test run built the same source first
                raise


def _on(tree: Path) -> dict[str, str]:
    """This environment, with ``tree`` first on the module path."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def test_the_compiled_build_loads_every_module_it_names_as_native_code(compiled_tree: Path) -> None:
    modules = compiled_modules()
    assert len(modules) >= 10
    where = (
        "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)"
    )
    files = subprocess.run(
        [sys.executable, "-c", where, *modules],
        env=_on(compiled_tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [Path(file).suffix for file in files] == [".so"] * len(modules), files
    assert all(Path(file).is_relative_to(compiled_tree) for file in files)
    # The default build, which every other test runs on, is plain Python.
    plain = subprocess.run(
        [sys.executable, "-c", where, *modules], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [Path(file).suffix for file in plain] == [".py"] * len(modules)


def test_the_proxy_tests_pass_on_the_compiled_build(compiled_tree: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *RERUN],
        cwd=ROOT,
        env=_on(compiled_tree),
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, f"on the compiled build:\n{ran.stdout[-12000:]}\n{ran.stderr[-4000:]}"
    assert " passed" in ran.stdout.splitlines()[-1]
