"""The measured envelope drawn: the chart itself, and ``tokenyard advise --plot`` reading the stored curve."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
import yaml

from tests.support.clocks import T0
from tests.support.proxy import run_cli
from tests.support.stores import sqlite_url
from tokenyard.advisor import plot
from tokenyard.capacity import envelope
from tokenyard.capacity.observed import LatencySample
from tokenyard.capacity.settings import Sla
from tokenyard.meter.model import AGG_FIELDS, AggKey, FlushBatch
from tokenyard.meter.open_store import open_store

SVG = "{http://www.w3.org/2000/svg}"
POINTS = [(1, 400.0, 400.0), (10, 60.0, 600.0), (20, 30.0, 600.0), (25, 24.0, 600.0)]


def test_the_chart_draws_both_throughputs_the_sla_floor_and_the_capacity() -> None:
    svg = plot.envelope_svg("ded: envelope", POINTS, sla_tokens_per_s=30, capacity_at=20)
    root = ET.fromstring(svg)
    assert root.get("viewBox")
    curves = root.findall(f"{SVG}path[@class='curve']")
    assert len(curves) == 2
    assert len(root.findall(f"{SVG}circle")) == 2 * len(POINTS)
    assert len(root.findall(f"{SVG}line[@class='reference']")) == 1
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "capacity: 600 tok/s at c = 20" in labels
    assert "SLA: 30 tok/s per stream" in labels


@pytest.mark.parametrize(
    ("points", "capacity_at", "message"),
    [
        ([], None, "at least one"),
        ([(2, 1.0, 2.0), (1, 1.0, 1.0)], None, "ascending"),
        (POINTS, 7, "capacity_at=7"),
        ([(1, float("nan"), 1.0)], None, "finite"),
    ],
)
def test_the_chart_refuses_what_it_cannot_draw(
    points: list[tuple[int, float, float]], capacity_at: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plot.envelope_svg("x", points, capacity_at=capacity_at)


async def test_advise_plot_draws_each_backends_stored_envelope(tmp_path: Path) -> None:
    store_url = sqlite_url(tmp_path / "meter.sqlite3")
    config = {
        "meter": {"store": store_url},
        "backends": {
            "ded": {
                "kind": "dedicated",
                "base_url": "http://127.0.0.1:9/v1",
                "gpu_type": "H100-80GB",
                "gpus_per_replica": 1,
                "replicas": 1,
                "gpu_hour_price": 2.0,
                "max_concurrency": 64,
                "sla": {"min_stream_tokens_per_s": 30},
            }
        },
        "models": {"llama-3.1-8b-instruct": {"deployments": ["ded"]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    recorder = envelope.Recorder(Sla(min_stream_tokens_per_s=30))
    for concurrency, count in {5: 50, 10: 50, 20: 50, 25: 20}.items():
        rate = 600 / concurrency
        for _ in range(count):
            recorder.observe(LatencySample(0.1, 0.1 + 60 / rate, 300, 61, True, concurrency), 1)
    store = open_store(store_url, prefix="unused", retention_s=86400, records_max=100)
    try:
        fields = dict.fromkeys(AGG_FIELDS, 0) | {"requests": 1, "completion_tokens": 100}
        key = AggKey(T0, "acme", "llama-3.1-8b-instruct", "ded", "dedicated", "realtime")
        await store.write(FlushBatch(uuid.uuid4().hex, {key: fields}, [], []))
        document = envelope.merge_document(None, {"ded": recorder.take()}, now_wall=T0)
        await store.put_document(envelope.DOCUMENT, orjson.dumps(document))
    finally:
        await store.aclose()

    out = run_cli("advise", "--config", str(tmp_path / "config.yaml"), "--plot", str(tmp_path / "charts"))

    assert out.returncode == 0, out.stderr
    chart = tmp_path / "charts" / "ded-envelope.svg"
    labels = [t.text for t in ET.fromstring(chart.read_text()).iter(f"{SVG}text")]
    assert "capacity: 600 tok/s at c = 20" in labels
    assert "ded-envelope.svg" in (tmp_path / "charts" / "index.html").read_text()
