"""The scraper on a fake clock and a scripted source: its schedule, what each outcome leaves on the backend's
engine state, and the snapshot hand-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.clocks import FakeClock
from tokenyard.capacity.engine import EngineSnapshot, EngineState
from tokenyard.capacity.scraper import GROUP, EngineScraper
from tokenyard.capacity.settings import EngineMetrics
from tokenyard.errors import UpstreamConnectError, UpstreamError, UpstreamStatusError

VLLM = (Path(__file__).parent / "fixtures" / "vllm.txt").read_text()
SGLANG = (Path(__file__).parent / "fixtures" / "sglang.txt").read_text()


class Source:
    """Answers each URL with what the test put there: text, or an error to raise."""

    def __init__(self, pages: dict[str, str | UpstreamError]) -> None:
        self.pages = pages
        self.reads: list[str] = []

    async def get_text(self, url: str, timeout_s: float) -> str:
        self.reads.append(url)
        page = self.pages[url]
        if isinstance(page, UpstreamError):
            raise page
        return page


def engines(*names: str, interval_s: float = 5.0) -> dict[str, EngineState]:
    settings = EngineMetrics(interval_s=interval_s, stale_after_s=15.0)
    return {name: EngineState(f"http://{name}/metrics", settings) for name in names}


async def test_reads_come_in_groups_staggered_over_the_interval_then_every_interval() -> None:
    clock = FakeClock()
    names = [f"e{i}" for i in range(GROUP + 1)]
    states = engines(*names)
    source = Source({f"http://{name}/metrics": VLLM for name in names})
    scraper = EngineScraper(states, source, clock=clock.monotonic, wall=clock)
    await scraper.scrape_due()
    assert len(source.reads) == GROUP  # the first group now; the last one half an interval later
    clock.advance(2.5)
    await scraper.scrape_due()
    assert source.reads[GROUP:] == [f"http://e{GROUP}/metrics"]
    clock.advance(2.4)
    await scraper.scrape_due()
    assert len(source.reads) == GROUP + 1
    clock.advance(0.1)
    await scraper.scrape_due()
    assert len(source.reads) == 2 * GROUP + 1


async def test_run_sleeps_until_the_next_read_is_due() -> None:
    clock = FakeClock()
    source = Source({"http://a/metrics": VLLM})
    scraper = EngineScraper(engines("a"), source, clock=clock.monotonic, wall=clock, sleep=clock.sleep)
    # Stop after three sleeps: the loop is otherwise endless.
    sleeps = 0

    async def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 3:
            raise RuntimeError("enough")
        await clock.sleep(seconds)

    scraper.sleep = sleep
    with pytest.raises(RuntimeError, match="enough"):
        await scraper.run()
    assert clock.slept_s == [5.0, 5.0, 5.0]
    assert len(source.reads) == 4


async def test_outcomes_leave_their_mark_and_good_snapshots_are_handed_on() -> None:
    clock = FakeClock()
    states = engines("a")
    source = Source({"http://a/metrics": VLLM})
    seen: list[tuple[str, EngineSnapshot]] = []
    scraper = EngineScraper(
        states, source, clock=clock.monotonic, wall=clock, on_snapshot=lambda n, s: seen.append((n, s))
    )
    state = states["a"]
    await scraper.scrape("a")
    assert state.latest is not None
    assert state.profile == "vllm"
    assert [name for name, _ in seen] == ["a"]
    assert seen[0][1] is state.latest
    assert state.saturated(clock.monotonic()) == "queue 3"

    source.pages["http://a/metrics"] = UpstreamStatusError("http://a/metrics answered 404", status=404)
    clock.advance(5)
    await scraper.scrape("a")
    source.pages["http://a/metrics"] = UpstreamConnectError("refused")
    await scraper.scrape("a")
    source.pages["http://a/metrics"] = "<html>oops</html>"
    await scraper.scrape("a")
    assert state.failures == 3
    assert state.last_error == "the metrics text has none of vllm's metrics"
    assert state.profile is None  # auto: detected afresh at the next good read
    assert dict(state.scrapes) == {"ok": 1, "http_error": 1, "unreachable": 1, "invalid": 1}
    assert len(seen) == 1
    assert state.saturated(clock.monotonic()) == "queue 3"  # 5 s old: still fresh
    clock.advance(11)
    assert state.saturated(clock.monotonic()) is None  # stale: the engine says nothing now

    source.pages["http://a/metrics"] = SGLANG  # another engine behind the same URL
    await scraper.scrape("a")
    assert state.profile == "sglang"
    assert state.failures == 0
    assert state.saturated(clock.monotonic()) is None


async def test_a_failing_consumer_does_not_stop_scraping() -> None:
    clock = FakeClock()
    states = engines("a")

    def broken(name: str, snapshot: EngineSnapshot) -> None:
        raise ZeroDivisionError

    scraper = EngineScraper(
        states, Source({"http://a/metrics": VLLM}), clock=clock.monotonic, wall=clock, on_snapshot=broken
    )
    await scraper.scrape("a")
    assert states["a"].latest is not None
