"""Small builders for advisor tests: prices, replica shapes, workloads, traffic by the minute, logs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

from tokenyard.advisor.catalog import TokenPrices
from tokenyard.advisor.costs import DedicatedOption
from tokenyard.advisor.decide import CurrentSetup, Workload
from tokenyard.advisor.settings import Autoscaling, WorkloadNeeds
from tokenyard.advisor.traffic import Traffic

DAY = 1440
T0 = 1_795_132_800  # Friday 2026-11-20 00:00 UTC, minute-aligned
# One replica: 1 GPU at $2/h, 1,000 output or 10,000 input tokens/s at full capacity. A minute of full
# load is therefore 60,000 output tokens; at $2 per 1M tokens that costs $0.12 per token, against $2/60
# for the replica.
REPLICA = DedicatedOption("H100", 1, 2.0, input_tokens_per_s=10_000, output_tokens_per_s=1_000)
OUT_PER_LOAD = 60_000  # output tokens in one replica-minute of full load


def prices(per_1m: float, cached: float | None = None) -> TokenPrices:
    """Equal input and output prices, USD per 1M tokens."""
    return TokenPrices(
        input_per_1m=per_1m,
        cached_input_per_1m=cached,
        output_per_1m=per_1m,
        as_of=date(2026, 11, 29),
        source="test",
    )


def workload(
    *,
    serverless: float | None = 2.0,
    dedicated_serverless: float | None = None,
    batch: float | None = None,
    options: tuple[DedicatedOption, ...] = (REPLICA,),
    needs: WorkloadNeeds | None = None,
    current: CurrentSetup | None = None,
    autoscaling: Autoscaling | None = None,
) -> Workload:
    """A workload with the test replica and the given per-token prices (None: not offered)."""
    return Workload(
        name="m",
        model="m",
        needs=needs or WorkloadNeeds(),
        serverless=None if serverless is None else prices(serverless),
        dedicated_serverless=None if dedicated_serverless is None else prices(dedicated_serverless),
        batch=None if batch is None else prices(batch),
        options=options,
        current=current,
        utilization_cap=0.6,
        autoscaling=autoscaling or Autoscaling(),
    )


def traffic(days: float, load_at: Callable[[int], float], *, deferrable_share: float = 0.0) -> Traffic:
    """``days`` of output-only traffic; ``load_at(i)`` is minute i's load on the test replica."""
    minutes = round(days * DAY)
    out = Traffic.empty(T0, minutes)
    for i in range(minutes):
        tokens = load_at(i) * OUT_PER_LOAD
        if tokens:
            out.realtime.add(i, 1, 0, 0, tokens * (1 - deferrable_share))
            if deferrable_share:
                out.ran_async.add(i, 1, 0, 0, tokens * deferrable_share)
    out.first_seen, out.last_seen = float(T0), float(T0 + minutes * 60)
    return out


def write_log(path: Path, lines: Iterator[dict[str, Any]]) -> Path:
    """A traffic log for ``tokenyard replay``: one JSON object a line."""
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
