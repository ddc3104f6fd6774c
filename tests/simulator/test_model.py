"""The latency and capacity model, faults and wire helpers, tested with a fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support.clocks import FakeClock
from tokenyard.simulator import shapes
from tokenyard.simulator.capacity import Slots, TokenPacer, sample_ttft_s, stream_rate_per_s
from tokenyard.simulator.config import FaultConfig, SimulatorConfig
from tokenyard.simulator.state import SimulatorState


def test_serverless_decodes_at_a_fixed_rate_whatever_the_load() -> None:
    config = SimulatorConfig(tokens_per_s=50)
    assert stream_rate_per_s(config, 1) == stream_rate_per_s(config, 100) == 50


def test_dedicated_streams_share_the_aggregate_up_to_the_per_stream_cap() -> None:
    config = SimulatorConfig(mode="dedicated", tokens_per_s=100, aggregate_tokens_per_s=400)
    assert [stream_rate_per_s(config, n) for n in (0, 1, 4, 8)] == [100, 100, 100, 50]


def test_capacity_scale_multiplies_the_shared_aggregate_not_the_per_stream_cap() -> None:
    config = SimulatorConfig(mode="dedicated", tokens_per_s=100, aggregate_tokens_per_s=400)
    assert [stream_rate_per_s(config, n, 0.5) for n in (1, 2, 4, 8)] == [100, 100, 50, 25]
    assert stream_rate_per_s(config, 1, 3.0) == 100
    assert stream_rate_per_s(SimulatorConfig(tokens_per_s=50), 8, 0.5) == 50  # serverless: no shared pool


def test_ttft_is_fixed_when_dedicated_and_jittered_around_the_mean_when_serverless() -> None:
    rng = random.Random(0)
    assert sample_ttft_s(SimulatorConfig(mode="dedicated", ttft_ms=30), rng) == 0.03
    samples = [sample_ttft_s(SimulatorConfig(ttft_ms=30, ttft_jitter=0.5), rng) for _ in range(4000)]
    assert len(set(samples)) > 1
    assert sum(samples) / len(samples) == pytest.approx(0.03, rel=0.05)


async def test_slots_admit_at_most_the_limit_in_arrival_order() -> None:
    slots = Slots(limit=2)
    order: list[int] = []
    release = asyncio.Event()

    async def job(i: int) -> None:
        async with slots:
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(job(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert (slots.in_flight, slots.queued, order) == (2, 3, [0, 1])
    release.set()
    await asyncio.gather(*tasks)
    assert (order, slots.in_flight, slots.queued, slots.max_in_flight) == ([0, 1, 2, 3, 4], 0, 0, 2)


async def test_pacer_spaces_tokens_at_the_current_rate() -> None:
    clock = FakeClock()
    rates = iter([10.0, 10.0, 5.0])
    pacer = TokenPacer(clock, lambda: next(rates), fixed_rate=False)
    for _ in range(3):
        await pacer.next_token()
    assert clock.elapsed_s == pytest.approx(0.1 + 0.1 + 0.2)


async def test_pacer_does_not_burst_to_catch_up_after_a_stall() -> None:
    clock = FakeClock()
    pacer = TokenPacer(clock, lambda: 10.0, fixed_rate=True)
    clock.elapsed_s = 5.0  # the reader stalled for 5 s
    await pacer.next_token()
    await pacer.next_token()
    assert clock.slept_s == [0.0, pytest.approx(0.1)]


async def test_pacer_waits_once_for_a_non_streamed_answer_at_a_fixed_rate() -> None:
    clock = FakeClock()
    await TokenPacer(clock, lambda: 100.0, fixed_rate=True).advance(50)
    assert clock.slept_s == [pytest.approx(0.5)]


def test_fail_next_counts_down_before_the_error_rate_applies() -> None:
    state = SimulatorState(SimulatorConfig(faults=FaultConfig(fail_next=2, error_status=503)), FakeClock())
    assert [state.take_fault() for _ in range(3)] == [503, 503, None]
    assert (state.faults.fail_next, state.counters.errors_injected) == (0, 2)


def test_error_rate_draws_from_the_seeded_rng_and_reset_replays_it() -> None:
    state = SimulatorState(SimulatorConfig(seed=5, faults=FaultConfig(error_rate=0.5)), FakeClock())
    first = [state.take_fault() for _ in range(20)]
    assert set(first) == {None, 500}
    state.reset()
    assert [state.take_fault() for _ in range(20)] == first


def test_reset_restores_the_configured_faults_not_the_live_ones() -> None:
    state = SimulatorState(SimulatorConfig(faults=FaultConfig(fail_next=1)), FakeClock())
    state.take_fault()
    state.faults = FaultConfig(error_rate=1.0)
    state.reset()
    assert state.faults == FaultConfig(fail_next=1)


@pytest.mark.parametrize(("seconds", "header"), [(1.0, b"1"), (2, b"2"), (0.5, b"0.5"), (1.25, b"1.25")])
def test_retry_after_is_whole_seconds_when_it_can_be(seconds: float, header: bytes) -> None:
    assert shapes.retry_after_value(seconds) == header
