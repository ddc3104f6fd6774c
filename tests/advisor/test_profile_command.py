"""``tokenyard profile show`` and the start-up check of ``advisor.profiles``, through the real command."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.net import free_port
from tests.support.proxy import run_cli

PROFILES = Path(__file__).parent / "profiles"
QUICKSTART = Path(__file__).parents[2] / "src" / "tokenyard" / "quickstart.yaml"


def test_show_prints_the_points_and_the_requests_per_shape() -> None:
    result = run_cli("profile", "show", str(PROFILES / "silybench_capacity_bf16.csv"))
    assert result.returncode == 0, result.stderr
    assert "silybench profile, 5 points" in result.stdout
    assert "in128-511/out1024+" in result.stdout
    assert "13.010" in result.stdout  # 13 322 output tok/s at the SLO over 1 024 tokens a request


def test_show_json_checks_the_slo_given_where_the_file_has_no_goodput() -> None:
    path = str(PROFILES / "guidellm_sweep.json")
    result = run_cli("profile", "show", path, "--ttft-p99-ms", "1000", "--itl-median-ms", "50", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["format"] == "guidellm"
    assert [p["meets_slo"] for p in document["points"]] == [True, True, False, False]
    assert document["shapes"] == [{"shape": "in512-2047/out64-255", "requests_per_s": 3.0}]
    missing = run_cli("profile", "show", path)
    assert missing.returncode == 1
    assert "give one" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_serve_refuses_to_start_with_an_unreadable_profile(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        QUICKSTART.read_text()
        + "\nadvisor:\n  profiles:\n    - {model: llama-3.1-8b-instruct, gpu_type: L4, path: nope.json}\n"
    )
    result = run_cli("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode == 1
    assert "advisor.profiles[0].path: cannot read" in result.stderr
    assert "Traceback" not in result.stderr
