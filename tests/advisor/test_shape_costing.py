"""Each minute priced by its own shape mix (hand-worked): chat-like by day, long-context at night, on a
replica whose capacity at the SLO depends on the shape."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.advisor.builders import DAY, REPLICA, T0, workload
from tokenyard.advisor.decide import evaluate
from tokenyard.advisor.shapes import IMPORTED, ShapeTable
from tokenyard.advisor.traffic import Traffic
from tokenyard.meter.shapes import SHAPE_COUNT, shape_index

CHAT = shape_index(100, 100)  # short prompt, short answer
LONG = shape_index(9000, 300)  # long context, a few hundred tokens out


def table(chat_per_s: float, long_per_s: float) -> ShapeTable:
    """A replica's capacity at the SLO: ``chat_per_s`` for chat, ``long_per_s`` for long context."""
    rates = [chat_per_s] * SHAPE_COUNT
    rates[LONG] = long_per_s
    return ShapeTable(tuple(rates), (IMPORTED,) * SHAPE_COUNT)


def day_and_night(days: int) -> Traffic:
    """Each day: 12 hours of 600 chat requests a minute, then 12 hours of 90 long-context ones."""
    minutes = days * DAY
    out = Traffic.empty(T0, minutes)
    for i in range(minutes):
        if i % DAY < DAY // 2:
            out.realtime.add(i, 600, 600 * 100, 0, 600 * 100, [(CHAT, 600, 600 * 100, 600 * 100)])
        else:
            out.realtime.add(i, 90, 90 * 9000, 0, 90 * 300, [(LONG, 90, 90 * 9000, 90 * 300)])
    out.first_seen, out.last_seen = float(T0), float(T0 + minutes * 60)
    return out


def test_the_night_sizes_the_replicas_not_the_average() -> None:
    # One replica serves 10 chat requests/s or 0.5 long-context ones within the SLO. By day 600 a minute
    # is 600 / (60 × 10) = 1 replica; by night 90 a minute is 90 / (60 × 0.5) = 3 replicas. Sized for the
    # busiest minute: 3. Priced at the average request instead (a day's 432,000 chat and 64,800 long ones
    # take 720 + 2,160 = 2,880 replica-minutes: 2,880 / 496,800 a request), the night's 90 a minute would
    # be 0.52 replicas and the day's 600 3.48: sized 4, for the wrong half of the day.
    option = replace(REPLICA, table=table(10, 0.5), utilization_cap=1.0)
    advice = evaluate(workload(options=(option,)), day_and_night(7), now=T0 + 7 * 86400)
    peak = next(c for c in advice.candidates if c.architecture == "dedicated")
    assert peak.label == "dedicated 3 × 1×H100"
    assert peak.cost.dedicated_usd == pytest.approx(3 * 2.0 * 24 * 7)
    # The replicas run 1/3 busy by day and fully by night: (1 + 3) / 2 / 3.
    assert peak.cost.utilization == pytest.approx(4 / 6)


def test_the_shape_table_decides_where_the_capacity_is() -> None:
    # With long context as cheap as chat (10/s), the night is 90 / 600 = 0.15 replicas: the day sizes 1.
    option = replace(REPLICA, table=table(10, 10), utilization_cap=1.0)
    advice = evaluate(workload(options=(option,)), day_and_night(7), now=T0 + 7 * 86400)
    peak = next(c for c in advice.candidates if c.architecture == "dedicated")
    assert peak.label == "dedicated 1 × 1×H100"
