"""Which path a job takes: the cheapest that still meets its deadline."""

from __future__ import annotations

import pytest

from tokenyard.router.queue.model import Job
from tokenyard.router.queue.paths import Capacity, choose_path

NOW = 1_800_000_000.0
HOUR = 3600.0


def job(deadline_in_s: float, delivery: str = "poll") -> Job:
    return Job("job_1", "t", "m", "/v1/chat/completions", b"{}", NOW, NOW + deadline_in_s, delivery=delivery)


@pytest.mark.parametrize(
    ("deadline_in_s", "idle", "batch", "delivery", "expected"),
    [
        (24 * HOUR, True, True, "poll", "idle_dedicated"),  # already paid for: always first
        (24 * HOUR, False, True, "poll", "provider_batch"),
        (2 * HOUR, False, True, "poll", "provider_batch"),  # 1 h turnaround + 60 s margin fits
        (HOUR + 59, False, True, "poll", "wait"),  # it would not fit: wait for the deadline's margin
        (24 * HOUR, False, True, "hold", "wait"),  # a waiting connection never goes to a provider batch
        (24 * HOUR, False, False, "poll", "wait"),
        (60, False, True, "poll", "realtime"),  # the deadline is here
        (-5, False, False, "hold", "realtime"),  # past it: right now
        (30, True, False, "hold", "idle_dedicated"),
    ],
)
def test_the_cheapest_path_that_meets_the_deadline(
    deadline_in_s: float, idle: bool, batch: bool, delivery: str, expected: str
) -> None:
    path = choose_path(
        job(deadline_in_s, delivery),
        NOW,
        Capacity(idle_dedicated=idle, provider_batch=batch),
        realtime_margin_s=60,
        expected_turnaround_s=HOUR,
    )
    assert path == expected
