"""Usage grouped by key and team: each request's key (its config name or its id) and the team it had then,
in the usage API, `tokenyard report` and the FOCUS export, in both stores, for real-time and async work."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.async_track import HELLO, MODEL, config_for, sims
from tests.support.config import ADMIN_KEY, CLIENT_KEY, OTHER_KEY
from tests.support.polling import eventually
from tests.support.proxy import ProxyProcess, run_cli, running_proxy
from tests.support.stores import PROXY_STORES, open_proxy_store

Seen = Counter[tuple[str, str, str, str]]  # (key, team, mode, what) -> count


@pytest.fixture(params=PROXY_STORES)
async def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    async with open_proxy_store(request.param, tmp_path) as store, sims() as s:
        config = config_for(s, store=store.url, prefix=store.prefix)
        config["keys"]["team-a"]["team"] = "ml"
        config["keys"]["team-b"]["team"] = "ml"  # mode async: its requests are jobs, held until answered
        async with running_proxy(config, tmp_path) as started:
            yield started


async def make_key(proxy: ProxyProcess, **fields: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        made = await http.post(f"{proxy.url}/admin/keys", json=fields)
    assert made.status_code == 201, made.text
    body: dict[str, str] = made.json()
    return body


async def ask(proxy: ProxyProcess, secret: str, key: str, team: str, mode: str, seen: Seen, n: int) -> None:
    async with proxy.client(secret) as client:
        for i in range(n):
            answer = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2 + i)
            assert answer.usage is not None
            seen[(key, team, mode, "requests")] += 1
            seen[(key, team, mode, "prompt_tokens")] += answer.usage.prompt_tokens
            seen[(key, team, mode, "completion_tokens")] += answer.usage.completion_tokens


async def test_usage_is_grouped_by_key_and_team_as_clients_saw_it(proxy: ProxyProcess) -> None:
    search = await make_key(proxy, name="search-bot", tenant="acme", team="search")
    seen: Seen = Counter()
    await asyncio.gather(
        ask(proxy, CLIENT_KEY, "team-a", "ml", "realtime", seen, 3),
        ask(proxy, OTHER_KEY, "team-b", "ml", "async", seen, 2),
        ask(proxy, search["value"], search["id"], "search", "realtime", seen, 4),
    )
    stored: Seen = Counter()

    async def all_metered() -> None:
        got = await proxy.admin("/admin/usage", start="1h", granularity="total", group_by="key,team,mode")
        assert got["group_by"] == ["key", "team", "mode"]
        stored.clear()
        for row in got["data"]:
            for what in ("requests", "prompt_tokens", "completion_tokens"):
                stored[(row["key"], row["team"], row["mode"], what)] += row[what]
        assert stored == seen

    await eventually(all_metered, timeout_s=30)
    by_team = await proxy.admin("/admin/usage", start="1h", granularity="total", group_by="team")
    assert {row["team"]: row["requests"] for row in by_team["data"]} == {"ml": 5, "search": 4}

    assert proxy.config_path is not None
    config = str(proxy.config_path)
    report = await asyncio.to_thread(run_cli, "report", "--config", config, "--since", "1h")
    assert report.returncode == 0, report.stderr
    assert section(report.stdout, "spend by team") == {"ml": "5", "search": "4"}
    assert section(report.stdout, "spend by key") == {  # a managed key by its name and its id
        "team-a": "3",
        "team-b": "2",
        f"search-bot ({search['id']})": "4",
    }

    focus = await asyncio.to_thread(
        run_cli, "export", "--config", config, "--since", "1h", "--format", "focus"
    )
    assert focus.returncode == 0, focus.stderr
    tagged: Counter[tuple[str | None, str | None]] = Counter()
    for row in csv.DictReader(io.StringIO(focus.stdout)):
        tags = json.loads(row["Tags"])
        tagged[(tags.get("tokenyard/key"), tags.get("tokenyard/team"))] += 1
    assert {who for who in tagged if who[0]} == {("team-a", "ml"), ("team-b", "ml"), (search["id"], "search")}


def section(report: str, heading: str) -> dict[str, str]:
    """A table of ``tokenyard report``: each row's first column (up to the two spaces before the next) and
    its requests."""
    table = report.split(f"{heading}\n")[1].split("\n\n")[0].splitlines()[2:]  # past the header and rule
    rows = [line.strip().split("  ") for line in table]
    return {cells[0]: next(cell.strip() for cell in cells[1:] if cell.strip()) for cells in rows}


async def test_grouping_by_an_unknown_dimension_names_the_ones_there_are(proxy: ProxyProcess) -> None:
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        got = await http.get(f"{proxy.url}/admin/usage", params={"start": "1h", "group_by": "key,user"})
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == ("cannot group by user; use tenant, model, backend, kind, mode, key, team"), (
        error
    )
