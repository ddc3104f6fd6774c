"""Strict tooling from day one: lint, format and strict typing are part of the suite."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "src", "tests", "bench"),
        ("ruff", "format", "--check", "src", "tests", "bench"),
        ("mypy",),
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_the_tree_is_clean(command: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_tests_share_helpers_through_tests_support_not_through_test_modules_or_conftests() -> None:
    """A file under tests/ may import shared helpers from ``tests.support``, and a folder's own helper
    module (not ``test_*``, not a conftest, e.g. ``tests/advisor/builders.py``) only from inside that
    folder. It never imports a test module or a conftest, from anywhere, however spelled (``import``,
    ``from``, relative, or ``from package import test_module``): a test module is not a library (what it
    exports can collect its tests twice and ties one suite to another's internals). Helpers that more than
    one folder needs go to ``tests.support``.
    """
    crossing = set()
    for path in (ROOT / "tests").rglob("*.py"):
        importer = path.relative_to(ROOT).parts[:-1]  # the package the file is in
        for imported in _imports(path, importer):
            if not _may_import(importer, imported):
                crossing.add((str(path.relative_to(ROOT)), ".".join(imported)))
    assert crossing == set()


def _imports(path: Path, package: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Every module a file imports, as absolute dotted parts; for ``from a import b`` it is ``a.b``, since
    ``b`` may be a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (tuple(alias.name.split(".")) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = base + tuple(node.module.split(".") if node.module else ())
            yield from (module if alias.name == "*" else (*module, alias.name) for alias in node.names)


def _may_import(importer: tuple[str, ...], imported: tuple[str, ...]) -> bool:
    """Whether a file in package ``importer`` may import ``imported`` (the rule in the test above)."""
    if any(part == "conftest" or part.startswith("test_") for part in imported):
        return False
    if imported[:1] != ("tests",) or imported[:2] == ("tests", "support"):
        return True
    return len(imported) > 2 and importer[:2] == imported[:2]  # a folder's own helper module
