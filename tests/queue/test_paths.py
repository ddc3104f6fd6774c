"""Which path a job takes: the cheapest that still meets its deadline."""

from __future__ import annotations

import pytest

from tokenyard.queue.model import Job
from tokenyard.queue.paths import Capacity, choose_path
from tokenyard.queue.settings import AsyncTrackConfig

NOW = 1_800_000_000.0
HOUR = 3600.0


def job(deadline_in_s: float, delivery: str = "poll") -> Job:
    return Job("job_1", "t", "m", "/v1/chat/completions", b"{}", NOW, NOW + deadline_in_s, delivery=delivery)


@pytest.mark.parametrize(
    ("deadline_in_s", "idle", "batch", "delivery", "expected", "has_dedicated"),
    [
        (24 * HOUR, True, True, "poll", "idle_dedicated", True),  # already paid for: always first
        (24 * HOUR, False, True, "poll", "provider_batch", True),
        (2 * HOUR, False, True, "poll", "provider_batch", True),  # 1 h turnaround + 60 s margin fits
        (HOUR + 59, False, True, "poll", "wait", True),  # it would not fit: wait for a replica, or the margin
        (24 * HOUR, False, True, "hold", "wait", True),  # a waiting connection never goes to a provider batch
        (24 * HOUR, False, False, "poll", "wait", True),  # a replica may free up
        (60, False, True, "poll", "realtime", True),  # the deadline is here
        (-5, False, False, "hold", "realtime", True),  # past it: right now
        (30, True, False, "hold", "idle_dedicated", True),
        # Nothing cheaper could ever take it: waiting would only make it later.
        (24 * HOUR, False, False, "poll", "realtime", False),
        (24 * HOUR, False, True, "hold", "realtime", False),
        (HOUR + 59, False, True, "poll", "realtime", False),  # no batch fits later if none fits now
    ],
)
def test_the_cheapest_path_that_meets_the_deadline(
    deadline_in_s: float, idle: bool, batch: bool, delivery: str, expected: str, has_dedicated: bool
) -> None:
    path = choose_path(
        job(deadline_in_s, delivery),
        NOW,
        Capacity(idle_dedicated=idle, provider_batch=batch, has_dedicated=has_dedicated),
        realtime_margin_s=60,
        expected_turnaround_s=HOUR,
    )
    assert path == expected


def test_with_the_default_settings_a_default_deadline_job_goes_to_a_provider_batch() -> None:
    track = AsyncTrackConfig()
    path = choose_path(
        job(track.default_deadline_s - 5),  # it waited a few seconds to be gathered
        NOW,
        Capacity(idle_dedicated=False, provider_batch=True),
        realtime_margin_s=track.realtime_margin_s,
        expected_turnaround_s=track.batches.expected_turnaround_s,
    )
    assert path == "provider_batch"
