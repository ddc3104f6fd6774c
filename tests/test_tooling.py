"""Strict tooling from day one: lint, format and strict typing are part of the suite."""

from __future__ import annotations

import ast
import subprocess
import sys
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
    crossing = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = "." * node.level + (node.module or "")
            last = module.rsplit(".", 1)[-1]
            # Not yet: the store contract suites' record builders are still defined in the contract
            # modules (test_*contract*); they move to tests/support once those are regrouped by protocol.
            if last == "conftest" or (last.startswith("test_") and "contract" not in last):
                crossing.add((str(path.relative_to(ROOT)), module))
    assert crossing == set()
