"""Deadlines on one shared timer (``adapters.deadlines``) behave as ``asyncio.timeout_at`` does.

No test waits on the clock: a deadline is either already past (its timer fires on the loop's next pass)
or an hour away (it never fires while the test runs), and everything else is events.
"""

from __future__ import annotations

import asyncio

import pytest

from tokenyard.adapters.deadlines import Deadlines

HOUR = 3600.0


async def _stuck() -> None:
    await asyncio.Event().wait()


async def test_a_past_deadline_times_the_wait_out() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    with pytest.raises(TimeoutError), deadlines.wait(deadlines.time() - 1):
        await _stuck()
    assert not deadlines._waits


async def test_a_far_deadline_lets_the_wait_finish_and_the_same_wait_times_out_later() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    done = asyncio.Event()
    asyncio.get_running_loop().call_soon(done.set)
    wait = deadlines.wait(deadlines.time() + HOUR)
    with wait:
        await done.wait()
    wait.due_in(-1)  # the next wait is due at once
    with pytest.raises(TimeoutError), wait:
        await _stuck()
    # The task is not left cancelled: it goes on awaiting.
    await asyncio.sleep(0)


async def test_only_the_waits_that_are_due_expire_and_an_earlier_deadline_rearms_the_timer() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    release = asyncio.Event()
    entered = asyncio.Event()

    async def far() -> str:
        with deadlines.wait(deadlines.time() + HOUR):  # arms the timer an hour out
            entered.set()
            await release.wait()
        return "finished"

    async def due() -> str:
        await entered.wait()
        try:
            with deadlines.wait(deadlines.time() - 1):  # earlier: the timer must be re-armed for it
                await _stuck()
        except TimeoutError:
            release.set()
            return "timed out"
        return "finished"

    assert await asyncio.gather(far(), due()) == ["finished", "timed out"]
    assert not deadlines._waits


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    entered = asyncio.Event()

    async def waiting() -> None:
        with deadlines.wait(deadlines.time() + HOUR):
            entered.set()
            await _stuck()

    task = asyncio.create_task(waiting())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._waits


async def test_expiry_and_a_cancellation_from_outside_together_stay_a_cancellation() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    entered = asyncio.Event()

    async def waiting() -> None:
        wait = deadlines.wait(deadlines.time() + HOUR)
        with wait:
            entered.set()
            await _stuck()

    task = asyncio.create_task(waiting())
    await entered.wait()
    (wait,) = deadlines._waits
    wait.expire()  # the deadline passes …
    task.cancel()  # … and a shutdown cancels the task too
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timer_that_fires_for_a_wait_already_over_rearms_for_the_next_one() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    with deadlines.wait(deadlines.time() - 1):  # arms the timer for a moment already past …
        pass  # … and is over before the loop runs it
    later = deadlines.wait(deadlines.time() + HOUR)
    with later:
        for _ in range(3):
            await asyncio.sleep(0)  # the loop runs the timer: nothing is due
        assert not later.expired
        assert deadlines._due == later.deadline  # armed again, for the wait still running
