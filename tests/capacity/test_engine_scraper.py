"""The scraper on a fake clock and a scripted source: its schedule, what each outcome leaves on the backend's
engine state, and the snapshot hand-off."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.support.clocks import FakeClock
from tests.support.raw_server import serving
from tokenyard.adapters.engine_metrics import EngineMetricsClient
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
    assert state.saturated(clock.monotonic()) is None  # one scrape saying "queue 3" is not yet saturation
    await scraper.scrape("a")
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
    assert dict(state.scrapes) == {"ok": 2, "http_error": 1, "unreachable": 1, "invalid": 1}
    assert len(seen) == 2
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


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Takes the connection and never answers: until the client gives up and closes it."""
    await reader.read()


async def metrics_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = VLLM.encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    writer.write(f"{head}Connection: close\r\n\r\n".encode() + body)
    await writer.drain()


async def test_an_engine_that_never_answers_holds_up_none_of_the_others() -> None:
    clock = FakeClock()
    # The good engine's timeout is generous (a busy machine); the hung one's the shortest that leaves the
    # good read time to land first.
    gives_up = EngineMetrics(interval_s=5.0, timeout_s=1.0)
    patient = EngineMetrics(interval_s=5.0, timeout_s=30.0)
    client = EngineMetricsClient()
    async with serving(silent) as hung_url, serving(metrics_page) as ok_url:
        states = {
            "hung": EngineState(f"{hung_url}/metrics", gives_up),
            "ok": EngineState(f"{ok_url}/metrics", patient),
        }
        hung = states["hung"]
        # When each good snapshot lands, how many reads of the hung engine had ended by then.
        hung_ended_before: list[int] = []
        scraper = EngineScraper(
            states,
            client,
            clock=clock.monotonic,
            wall=clock,
            on_snapshot=lambda name, s: hung_ended_before.append(sum(hung.scrapes.values())),
        )
        try:
            for _ in range(2):
                await scraper.scrape_due()
                clock.advance(5.0)
        finally:
            await client.aclose()
    assert hung_ended_before == [0, 1]  # each good read recorded while the hung one was still waiting
    assert dict(states["ok"].scrapes) == {"ok": 2}
    assert states["ok"].fresh(clock.monotonic() - 5.0)
    assert dict(hung.scrapes) == {"unreachable": 2}
    assert hung.last_error is not None
    assert "did not answer within 1 s" in hung.last_error
    assert not hung.fresh(clock.monotonic())


class Hanging(Source):
    """A source that ignores its timeout for one URL: the read never ends unless cancelled."""

    def __init__(self, pages: dict[str, str | UpstreamError], hangs: str) -> None:
        super().__init__(pages)
        self.hangs = hangs

    async def get_text(self, url: str, timeout_s: float) -> str:
        if url == self.hangs:
            self.reads.append(url)
            await asyncio.Event().wait()
        return await super().get_text(url, timeout_s)


async def test_the_scraper_keeps_each_read_to_its_timeout_whatever_the_source_does() -> None:
    clock = FakeClock()
    settings = EngineMetrics(interval_s=5.0, timeout_s=0.2)
    states = {name: EngineState(f"http://{name}/metrics", settings) for name in ("hung", "ok")}
    source = Hanging({"http://ok/metrics": VLLM}, hangs="http://hung/metrics")
    scraper = EngineScraper(states, source, clock=clock.monotonic, wall=clock)
    for _ in range(2):
        await scraper.scrape_due()  # ends: the hung read is cut off at its timeout
        clock.advance(5.0)
    assert dict(states["hung"].scrapes) == {"unreachable": 2}
    assert states["hung"].last_error == "http://hung/metrics did not answer within 0.2 s"
    assert dict(states["ok"].scrapes) == {"ok": 2}


class Broken(Source):
    """A source with a bug for one URL: an error no read is expected to raise."""

    async def get_text(self, url: str, timeout_s: float) -> str:
        if url == "http://bad/metrics":
            self.reads.append(url)
            raise ZeroDivisionError("a bug")
        return await super().get_text(url, timeout_s)


async def test_an_unexpected_error_is_logged_once_and_scraping_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    states = engines("a", "bad")
    source = Broken({"http://a/metrics": VLLM})
    sleeps = 0

    async def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 3:
            raise asyncio.CancelledError  # how the proxy stops it
        await clock.sleep(seconds)

    scraper = EngineScraper(states, source, clock=clock.monotonic, wall=clock, sleep=sleep)
    with caplog.at_level(logging.ERROR, logger="tokenyard.capacity"), pytest.raises(asyncio.CancelledError):
        await scraper.run()
    assert source.reads.count("http://bad/metrics") == 4
    assert source.reads.count("http://a/metrics") == 4
    assert dict(states["a"].scrapes) == {"ok": 4}
    failed = [r for r in caplog.records if "scraping failed" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
