"""``tokenyard replay``: a traffic log in; advice out as text, JSON and pictures. Run as a real command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.advisor.builders import T0, write_log
from tests.support.proxy import run_cli


def steady_minutes(days: int, requests: int, **fields: Any) -> Iterator[dict[str, Any]]:
    """Per-minute aggregate lines (the `export --aggregates` shape): ``requests`` of 1,000 + 500 tokens."""
    for minute in range(days * 1440):
        yield {
            "ts": T0 + minute * 60,
            "requests": requests,
            "prompt_tokens": 1000 * requests,
            "completion_tokens": 500 * requests,
            **fields,
        }


def steady_requests(days: int, per_minute: int, **fields: Any) -> Iterator[dict[str, Any]]:
    """Minimal-format requests, ``per_minute`` a minute, every minute for ``days`` days."""
    for minute in range(days * 1440):
        for k in range(per_minute):
            yield {"ts": T0 + minute * 60 + k, "prompt_tokens": 1000, "completion_tokens": 500, **fields}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Two models, both on a serverless API today; the catalog knows what dedicated replicas would cost."""
    path = tmp_path / "config.yaml"
    path.write_text(
        """
backends:
  together:
    kind: serverless
    base_url: "http://127.0.0.1:9/v1"
    prices: {input_per_1m: 0.88, output_per_1m: 0.88}
models:
  llama-3.3-70b-instruct: {deployments: [together]}
  small-model: {deployments: [together]}
advisor:
  workloads:
    small-model: {catalog_model: llama-3.1-8b-instruct}
"""
    )
    return path


def test_json_advice_for_heavy_steady_traffic_says_dedicated_and_how_much_it_saves(
    tmp_path: Path, config: Path
) -> None:
    log = write_log(
        tmp_path / "t.jsonl", steady_minutes(8, 400, model="llama-3.3-70b-instruct", tenant="search")
    )
    result = run_cli("replay", str(log), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["format"] == 1
    [advice] = document["workloads"]
    assert advice["workload"] == "llama-3.3-70b-instruct"
    assert advice["requests"] == 8 * 1440 * 400
    assert advice["tokens"] == 8 * 1440 * 400 * 1500
    assert advice["confidence"] == "medium"
    assert advice["recommended"]["architecture"] in ("dedicated", "hybrid")
    assert advice["current"]["label"] == "current: serverless"
    # 400 requests a minute of 1,000 + 500 tokens at $0.88 per 1M: $0.528 a minute, $23,141 a month.
    assert advice["current"]["cost_usd_per_month"] == pytest.approx(0.528 * 1440 * 30.4375, rel=1e-3)
    assert advice["saving_usd_per_month"] > 0
    assert advice["saving_pct"] == pytest.approx(
        100 * advice["saving_usd_per_month"] / advice["current"]["cost_usd_per_month"], rel=1e-3
    )
    assert advice["change_recommended"] is True  # material, and the same over the last three daily runs
    architectures = {c["architecture"] for c in advice["candidates"]}
    assert {"serverless", "dedicated", "dedicated_autoscaled"} <= architectures
    curve = advice["cost_curve"]
    assert curve["points"][0]["replicas"] == 0
    assert curve["points"][0]["cost_usd_per_month"] == pytest.approx(
        advice["current"]["cost_usd_per_month"], rel=1e-3
    )
    assert curve["optimum_replicas"] >= 1
    assert advice["reasons"]


def test_text_advice_prints_a_summary_table_and_the_reasons(tmp_path: Path, config: Path) -> None:
    log = write_log(tmp_path / "t.jsonl", steady_requests(2, 1, model="small-model"))
    result = run_cli("replay", str(log), "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[2].split() == [
        "workload", "recommended", "how", "now", "$/mo", "best", "$/mo", "saving/mo", "confidence", "change"
    ]  # fmt: skip
    assert "small-model" in out
    assert "serverless" in out
    assert "only 2.0 days of history: observe a full week before acting" in out
    assert "\x1b" not in result.stderr, "no progress bar when stderr is not a terminal"


def test_every_accepted_format_gives_the_same_traffic(tmp_path: Path, config: Path) -> None:
    minimal = write_log(
        tmp_path / "minimal.jsonl",
        (
            {"ts": datetime.fromtimestamp(T0 + i * 60, UTC).isoformat(), "model": "small-model",
             "prompt_tokens": 100, "cached_tokens": 20, "completion_tokens": 10}
            for i in range(120)
        ),
    )  # fmt: skip
    # What `tokenyard export` writes: request records with more fields than the replay needs.
    records = write_log(
        tmp_path / "records.jsonl",
        (
            {"ts": T0 + i * 60 + 0.5, "request_id": f"r{i}", "tenant": "t", "model": "small-model",
             "backend": "together", "backend_kind": "serverless", "mode": "realtime", "route": "primary",
             "status": 200, "prompt_tokens": 100, "cached_tokens": 20, "completion_tokens": 10,
             "estimated": False, "ttfb_ms": 40, "latency_ms": 300, "cost_pusd": 0, "cost_usd": 0.0}
            for i in range(120)
        ),
    )  # fmt: skip
    # What `tokenyard export --aggregates` writes: one line per minute bucket, standing for `requests`.
    aggregates = write_log(
        tmp_path / "aggregates.jsonl",
        (
            {"ts": T0 + i * 600, "minute": T0 + i * 600, "tenant": "t", "model": "small-model",
             "backend": "together", "kind": "serverless", "mode": "realtime", "requests": 10, "errors": 0,
             "prompt_tokens": 1000, "cached_tokens": 200, "completion_tokens": 100, "cost_pusd": 0}
            for i in range(12)
        ),
    )  # fmt: skip
    answers = []
    for log in (minimal, records, aggregates):
        result = run_cli("replay", str(log), "--config", str(config), "--json")
        assert result.returncode == 0, result.stderr
        [advice] = json.loads(result.stdout)["workloads"]
        answers.append((advice["requests"], advice["tokens"], advice["current"]["cost_usd"]))
    assert answers[0] == answers[1] == answers[2] == (120, 13_200, pytest.approx(13_200 * 0.88 / 1e6))


def test_async_and_async_eligible_traffic_is_counted_as_deferrable(tmp_path: Path, config: Path) -> None:
    lines = [
        {"ts": T0 + i, "model": "small-model", "prompt_tokens": 100, "completion_tokens": 100, **extra}
        for i, extra in enumerate(
            [{}, {"mode": "async"}, {"async_eligible": True}, {"async_eligible": False}]
        )
    ]
    result = run_cli(
        "replay", str(write_log(tmp_path / "t.jsonl", iter(lines))), "--config", str(config), "--json"
    )
    assert result.returncode == 0, result.stderr
    [advice] = json.loads(result.stdout)["workloads"]
    assert advice["deferrable_share"] == 0.5


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ('{"ts": 1795132800, "model": "m", "completion_tokens": 1}', "line 2: prompt_tokens is missing"),
        (
            '{"ts": "yesterday", "model": "m", "prompt_tokens": 1, "completion_tokens": 1}',
            "line 2: ts must be",
        ),
        (
            '{"ts": 1795132800, "model": "m", "prompt_tokens": -5, "completion_tokens": 1}',
            "line 2: prompt_tokens must be",
        ),
        (
            '{"ts": 1795132800, "model": "m", "prompt_tokens": 5, "completion_tokens": 1, "mode": "later"}',
            "line 2: mode must",
        ),
        ("[1, 2]", "line 2: not a JSON object"),
        # Out of range: each once made the replay's work unbounded, or ended in a traceback.
        (
            '{"ts": 0, "model": "m", "prompt_tokens": 1, "completion_tokens": 1}',
            "line 2: ts must be between 2000-01-01 and 2100-01-01 UTC, not 0",
        ),
        (
            '{"ts": 1e20, "model": "m", "prompt_tokens": 1, "completion_tokens": 1}',
            "line 2: ts must be between 2000-01-01 and 2100-01-01 UTC",
        ),
        (
            '{"ts": "0001-01-01T00:00:00Z", "model": "m", "prompt_tokens": 1, "completion_tokens": 1}',
            "line 2: ts must be between 2000-01-01 and 2100-01-01 UTC",
        ),
        (
            '{"ts": 1795132800, "model": "m", "prompt_tokens": 1e300, "completion_tokens": 1}',
            "line 2: prompt_tokens must be a number from 0 to 10^12, not 1e+300",
        ),
        (
            '{"ts": 1795132800, "model": "m", "prompt_tokens": 1, "completion_tokens": 1, "requests": 1e13}',
            "line 2: requests must be a number from 0 to 10^12",
        ),
        (
            '{"window": {"start": 1795132800, "end": 1795132800}}',
            "line 2: window.end must be after window.start",
        ),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_half_reported(tmp_path: Path, line: str, message: str) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text(
        '{"ts": 1795132800, "model": "m", "prompt_tokens": 1, "completion_tokens": 1}\n' + line + "\n"
    )
    result = run_cli("replay", str(log))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_missing_or_empty_log_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("replay", str(tmp_path / "absent.jsonl"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    (tmp_path / "empty.jsonl").write_text("\n")
    result = run_cli("replay", str(tmp_path / "empty.jsonl"))
    assert result.returncode == 2
    assert "no requests in the log" in result.stderr


def test_stdin_works_and_the_progress_bar_can_be_forced(tmp_path: Path, config: Path) -> None:
    text = "".join(json.dumps(line) + "\n" for line in steady_requests(1, 3, model="small-model"))
    result = run_cli("replay", "-", "--config", str(config), "--progress", stdin=text)
    assert result.returncode == 0, result.stderr
    assert "reading stdin" in result.stderr
    log = write_log(tmp_path / "t.jsonl", steady_requests(1, 3, model="small-model"))
    result = run_cli("replay", str(log), "--config", str(config), "--progress")
    assert "reading t.jsonl  100% |████████████████████████|" in result.stderr


def test_plot_writes_three_pictures_per_workload_and_an_index(tmp_path: Path, config: Path) -> None:
    lines = [
        *steady_requests(1, 20, model="llama-3.3-70b-instruct"),
        *steady_requests(1, 1, model="small-model"),
    ]
    log = write_log(tmp_path / "t.jsonl", iter(lines))
    out = tmp_path / "plots"
    result = run_cli("replay", str(log), "--config", str(config), "--plot", str(out))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{w}-{kind}.svg" for w in ("llama-3.3-70b-instruct", "small-model")
         for kind in ("candidates", "cost-curve", "traffic")] + ["index.html"]
    )  # fmt: skip
    for svg in out.glob("*.svg"):
        ElementTree.parse(svg)  # well-formed
    index = (out / "index.html").read_text()
    assert index.count("<img ") == 6
    curve = (out / "llama-3.3-70b-instruct-cost-curve.svg").read_text()
    assert "cheapest" in curve


def test_help_explains_the_formats() -> None:
    result = run_cli("replay", "--help")
    assert result.returncode == 0
    assert "prompt_tokens" in result.stdout
    assert "--plot DIR" in result.stdout


def test_a_workload_counts_only_the_daily_evaluations_after_its_first_request(
    tmp_path: Path, config: Path
) -> None:
    early = steady_requests(3, 1, model="small-model")
    late = (
        {**line, "model": "llama-3.3-70b-instruct"}
        for line in steady_requests(3, 1)
        if line["ts"] >= T0 + 2.5 * 86400
    )
    log = write_log(tmp_path / "t.jsonl", iter([*early, *late]))
    result = run_cli("replay", str(log), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    streaks = {w["workload"]: w["stable_evaluations"] for w in json.loads(result.stdout)["workloads"]}
    assert streaks == {"small-model": 3, "llama-3.3-70b-instruct": 1}
