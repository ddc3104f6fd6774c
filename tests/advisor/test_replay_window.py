"""The window a replay covers: whole UTC days (or one given), never cut to the first and last request.

Worked by hand: a one-day log (Friday 2026-11-20) with two requests, at 06:00 and 17:59 UTC, each of
1,000,000 input tokens at $1 per 1M, is $2 of serverless traffic in a day, so $2 × 30.4375 = $60.875 a
month. Cut to the first and last request (06:00 to 18:00, 720 minutes) the same $2 came to
$2 × 43,830 / 720 = $121.75 a month, twice too much, while a replica's cost a month does not depend on the
window at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.advisor.builders import T0, write_log
from tests.support.proxy import run_cli
from tokenyard.advisor.catalog import load_catalog
from tokenyard.advisor.evaluation import evaluate_store
from tokenyard.config import parse_config
from tokenyard.meter.model import AGG_FIELDS, AggKey, FlushBatch
from tokenyard.meter.sqlite_store import SqliteMeterStore

DAY_S = 86400
PER_MONTH_DAYS = 30.4375
CONFIG = """
backends:
  api:
    kind: serverless
    base_url: "http://127.0.0.1:9/v1"
    prices: {input_per_1m: 1.0, output_per_1m: 1.0}
models:
  m: {deployments: [api]}
advisor:
  workloads:
    m: {catalog_model: llama-3.1-8b-instruct}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def two_requests(day: int = T0) -> list[dict[str, Any]]:
    """The worked example's log: 06:00 and 17:59 UTC, 1M input tokens each."""
    return [
        {"ts": day + 6 * 3600, "model": "m", "prompt_tokens": 1_000_000, "completion_tokens": 0},
        {"ts": day + 18 * 3600 - 60, "model": "m", "prompt_tokens": 1_000_000, "completion_tokens": 0},
    ]


def replay_json(log: Path, config: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("replay", str(log), "--config", str(config), "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    [advice] = json.loads(result.stdout)["workloads"]
    assert isinstance(advice, dict)
    return advice


def by_architecture(advice: dict[str, Any]) -> dict[str, float]:
    return {c["architecture"]: c["cost_usd_per_month"] for c in advice["candidates"]}


def test_a_log_is_replayed_over_whole_utc_days_and_the_advice_says_so(tmp_path: Path, config: Path) -> None:
    advice = replay_json(write_log(tmp_path / "t.jsonl", iter(two_requests())), config)
    assert advice["window"]["start"] == T0
    assert advice["window"]["end"] == T0 + DAY_S
    assert advice["window"]["minutes"] == 1440
    assert advice["window"]["basis"] == "whole UTC days of the log"
    assert advice["current"]["cost_usd"] == pytest.approx(2.0)
    assert advice["current"]["cost_usd_per_month"] == pytest.approx(2.0 * PER_MONTH_DAYS, abs=0.01)  # 60.88
    assert by_architecture(advice)["serverless"] == pytest.approx(60.88, abs=0.01)  # was 121.75


def test_start_and_end_choose_the_window_and_replicas_cost_the_same_a_month(
    tmp_path: Path, config: Path
) -> None:
    lines = [*two_requests(), *two_requests(T0 + 5 * DAY_S)]  # the second pair is outside the window
    log = write_log(tmp_path / "t.jsonl", iter(lines))
    one_day = replay_json(log, config, "--end", str(T0 + DAY_S))
    two_days = replay_json(log, config, "--start", "2026-11-20", "--end", "2026-11-22T00:00:00Z")
    assert two_days["window"] == {
        "start": T0,
        "end": T0 + 2 * DAY_S,
        "minutes": 2880,
        "basis": "--start/--end",
        "history_days": pytest.approx(2.0 - 6 / 24),
    }
    assert one_day["window"]["minutes"] == 1440
    assert "--start/--end" in one_day["window"]["basis"]
    # The same $2 over twice the days is half as much a month; a replica costs what it costs a month.
    assert two_days["current"]["cost_usd_per_month"] == pytest.approx(PER_MONTH_DAYS, abs=0.01)
    assert one_day["current"]["cost_usd_per_month"] == pytest.approx(2 * PER_MONTH_DAYS, abs=0.01)
    assert by_architecture(two_days)["dedicated"] == by_architecture(one_day)["dedicated"]
    result = run_cli("replay", str(log), "--config", str(config), "--end", str(T0 + DAY_S))
    assert "2 requests outside the window left out" in result.stdout
    assert "window: 2026-11-20 00:00 UTC to 2026-11-21 00:00 UTC (--start/--end" in result.stdout


def test_the_logs_own_window_line_is_honoured(tmp_path: Path, config: Path) -> None:
    window = {"window": {"start": "2026-11-20T00:00:00Z", "end": "2026-11-27T00:00:00Z"}}
    advice = replay_json(write_log(tmp_path / "t.jsonl", iter([window, *two_requests()])), config)
    assert advice["window"]["minutes"] == 7 * 1440
    assert advice["window"]["basis"] == "the log's window"
    assert advice["current"]["cost_usd_per_month"] == pytest.approx(2.0 * PER_MONTH_DAYS / 7, abs=0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--start", "yesterday"), "--start must be unix seconds or ISO 8601"),
        (("--start", "2026-11-21", "--end", "2026-11-21"), "the window ends before it starts"),
        (("--start", "2026-12-24"), "the window ends before it starts"),
        (("--end", "2026-11-19"), "the window ends before it starts"),
        (("--end", "1e20"), "--end must be between 2000-01-01 and 2100-01-01 UTC"),
    ],
)
def test_a_bad_window_is_a_clear_error(
    tmp_path: Path, config: Path, args: tuple[str, ...], message: str
) -> None:
    log = write_log(tmp_path / "t.jsonl", iter(two_requests()))
    result = run_cli("replay", str(log), "--config", str(config), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_times_without_a_zone_are_utc_whatever_the_machines_zone(tmp_path: Path, config: Path) -> None:
    # 22:00 with no zone: in New York's local time that would be 03:00 UTC the next day.
    line = {"ts": "2026-11-20T22:00:00", "model": "m", "prompt_tokens": 1, "completion_tokens": 1}
    log = write_log(tmp_path / "t.jsonl", iter([line]))
    advice = replay_json(log, config, env={**os.environ, "TZ": "America/New_York"})
    assert advice["window"]["start"] == T0
    assert advice["window"]["history_days"] == pytest.approx(2 / 24, abs=1e-3)  # 22:00 to midnight UTC


async def test_the_live_advice_counts_the_quiet_hours_of_a_workloads_first_day(tmp_path: Path) -> None:
    # The store holds the worked example on one day; the advisor evaluates just before its midnight.
    now = T0 + DAY_S - 1
    store = SqliteMeterStore(
        str(tmp_path / "meter.db"), retention_s=35 * DAY_S, records_max=1000, clock=lambda: now
    )
    try:
        fields = dict.fromkeys(AGG_FIELDS, 0) | {"requests": 1, "prompt_tokens": 1_000_000}
        await store.write(
            FlushBatch(
                "b1",
                aggregates={
                    AggKey(line["ts"], "", "m", "api", "serverless", "realtime"): dict(fields)
                    for line in two_requests()
                },
            )
        )
        config = parse_config(CONFIG)
        result = await evaluate_store(store, config, load_catalog(), now=now, keep_state=False)
    finally:
        await store.aclose()
    [advice] = result.advices
    assert advice.window_start == T0  # not 06:00, the first request's minute
    assert advice.window_minutes == 1440
    assert "from 00:00 UTC of the day of its first request" in advice.window_basis
    assert advice.current is not None
    # $2 in a day: $60.88 a month (cut at 06:00, 1,080 minutes, it came to $81.17).
    assert advice.current.cost.total_usd * advice.per_month == pytest.approx(2.0 * PER_MONTH_DAYS)
