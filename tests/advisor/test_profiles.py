"""Imported capacity profiles, read as the benchmark tools write them.

Fixtures in ``profiles/`` follow the upstream schemas:

- ``vllm_*.json``: the result ``vllm bench serve --save-result`` writes (vllm-project/vllm
  ``vllm/benchmarks/serve.py``, ``benchmark()``'s ``result`` dict plus the run's ``request_rate``,
  ``max_concurrency``; ``request_goodput`` is None without ``--goodput``); per-request lists cut short.
- ``guidellm_sweep.json``: GuideLLM's report (vllm-project/guidellm
  ``src/guidellm/benchmark/schemas/generative/metrics.py`` at 06cef2910dc1517f863ce09ff118af07d463d055,
  ``GenerativeMetrics``: ``requests_per_second``, ``prompt_token_count``, ``output_token_count``,
  ``time_to_first_token_ms``, ``inter_token_latency_ms``, each a ``StatusDistributionSummary`` with
  ``successful`` mean, median and ``percentiles.p99``; older reports, ``benchmark/benchmark.py``, the same
  with the strategy under ``args``); numbers made up.
- ``silybench_capacity.csv``: the real ``derived/csv/capacity.csv`` of tgarg01/silybench-data at commit
  93e4887353137e64bd5605fa3d1f4529da0a1dc5 (data CC BY 4.0, silybench); ``silybench_capacity_bf16.csv`` its
  bf16 rows; ``silybench_perf_points_decode.csv`` three rows of ``derived/csv/perf_points.csv`` there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenyard.advisor.profiles import (
    ProfileError,
    ProfilePoint,
    Slo,
    cells,
    detect,
    load_profiles,
    parse_profile,
)
from tokenyard.advisor.settings import AdvisorConfig
from tokenyard.meter.shapes import shape_index

HERE = Path(__file__).parent / "profiles"
SILYBENCH_SLO = Slo(ttft_p99_ms=2000, itl_median_ms=50)


def read(name: str) -> str:
    return (HERE / name).read_text()


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("vllm_goodput.json", "vllm"),
        ("vllm_no_goodput.json", "vllm"),
        ("guidellm_sweep.json", "guidellm"),
        ("silybench_capacity.csv", "silybench"),
        ("silybench_perf_points_decode.csv", "silybench"),
    ],
)
def test_the_format_is_detected_from_the_content(name: str, fmt: str) -> None:
    assert detect(read(name), name) == fmt


def test_a_vllm_run_with_goodput_is_the_rate_that_met_its_slo() -> None:
    [point] = parse_profile(read("vllm_goodput.json"), name="v.json")
    assert (point.prompt_tokens, point.completion_tokens, point.requests_per_s) == (1000, 200, 8.5)
    assert point.meets_slo
    assert cells([point]) == {shape_index(1000, 200): 8.5}


def test_a_vllm_run_without_goodput_is_checked_against_the_slo_given() -> None:
    text = read("vllm_no_goodput.json")  # p99 TTFT 900 ms, median ITL 30 ms, 10 requests/s
    [met] = parse_profile(text, name="v.json", slo=Slo(ttft_p99_ms=1000, itl_median_ms=40))
    assert (met.requests_per_s, met.meets_slo) == (10.0, True)
    [missed] = parse_profile(text, name="v.json", slo=Slo(ttft_p99_ms=500))
    assert missed.meets_slo is False
    assert cells([missed]) == {}
    with pytest.raises(ProfileError, match=r"v\.json: vllm profile: no request_goodput .* no SLO given"):
        parse_profile(text, name="v.json")


def test_a_guidellm_sweep_keeps_the_fastest_rate_within_the_slo() -> None:
    points = parse_profile(read("guidellm_sweep.json"), name="g.json", slo=Slo(2000, 50))
    assert [(p.requests_per_s, p.meets_slo) for p in points] == [
        (0.9, True), (3.0, True), (5.9, True), (7.5, False),
    ]  # fmt: skip
    assert points[1].note.startswith("constant")
    assert cells(points) == {shape_index(512, 128): 5.9}
    tighter = parse_profile(read("guidellm_sweep.json"), name="g.json", slo=Slo(ttft_p99_ms=1000))
    assert cells(tighter) == {shape_index(512, 128): 3.0}
    with pytest.raises(ProfileError, match="give one"):
        parse_profile(read("guidellm_sweep.json"), name="g.json")


def test_silybench_capacity_is_output_tokens_at_the_slo_over_the_output_length() -> None:
    points = parse_profile(read("silybench_capacity_bf16.csv"), name="c.csv")
    decode = next(p for p in points if (p.prompt_tokens, p.completion_tokens) == (128, 1024))
    assert decode.requests_per_s == pytest.approx(13322.038133738903 / 1024)
    assert all(p.meets_slo for p in points)
    table = cells(points)
    assert len(table) == 5
    assert table[shape_index(8192, 512)] == pytest.approx(501.55567902110596 / 512)
    # A tighter SLO than the file's: none of its points can be said to meet it.
    assert cells(parse_profile(read("silybench_capacity_bf16.csv"), name="c.csv", slo=Slo(1000, 50))) == {}


def test_silybench_perf_points_pass_by_their_own_column_or_by_the_slo_given() -> None:
    text = read("silybench_perf_points_decode.csv")
    points = parse_profile(text, name="p.csv")
    assert [p.meets_slo for p in points] == [True, True, False]
    assert cells(points) == {shape_index(128, 1024): pytest.approx(14.906173436648762)}
    strict = parse_profile(text, name="p.csv", slo=Slo(ttft_p99_ms=1000))
    assert [p.meets_slo for p in strict] == [True, False, False]


def test_a_file_of_several_runs_is_refused_not_mixed() -> None:
    with pytest.raises(ProfileError, match="2 runs in one file"):
        parse_profile(read("silybench_capacity.csv"), name="c.csv")


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("{not json", "auto", "x: not valid JSON"),
        ('{"hello": 1}', "auto", "neither a vLLM bench serve result"),
        ("a,b\n1,2\n", "auto", "not JSON, nor a silybench CSV"),
        ('{"completed": 3, "total_input_tokens": "many"}', "vllm", "total_input_tokens is 'many'"),
        ('{"benchmarks": [{"metrics": {}}]}', "guidellm", r"benchmarks\[0\]\.metrics\.requests_per_second"),
        ("run_id,workload,max_users_slo\nr,chat,5\n", "silybench", "line 2: workload 'chat'"),
        ('{"completed": 0, "total_input_tokens": 0}', "vllm", "no operating point"),
    ],
)
def test_errors_name_the_file_and_what_is_wrong(text: str, fmt: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(text, name="x", fmt=fmt, slo=Slo(1000, 50))  # type: ignore[arg-type]


def test_cells_keep_the_best_rate_per_shape_that_met_the_slo() -> None:
    points = [
        ProfilePoint(1000, 200, 3.0),
        ProfilePoint(1100, 210, 4.0),
        ProfilePoint(1000, 200, 9.0, meets_slo=False),
        ProfilePoint(100, 20, 0.0),
    ]
    assert cells(points) == {shape_index(1000, 200): 4.0}


def test_load_profiles_reads_each_file_and_names_the_config_path_when_it_cannot(tmp_path: Path) -> None:
    config = AdvisorConfig.model_validate(
        {
            "profiles": [
                {"model": "qwen3-8b", "gpu_type": "H100", "path": "silybench_capacity_bf16.csv"},
                {"model": "qwen3-8b", "gpu_type": "H100", "path": str(HERE / "vllm_goodput.json")},
            ]
        }
    )
    tables = load_profiles(config, base=HERE)
    assert list(tables) == [("qwen3-8b", "H100", 1)]
    table = tables["qwen3-8b", "H100", 1]
    assert len(table) == 5  # vLLM's 1000/200 run is in silybench's prefill-1024-128 shape: the better kept
    assert table[shape_index(1000, 200)] == pytest.approx(3017.6797771705747 / 128)
    missing = AdvisorConfig.model_validate(
        {"profiles": [{"model": "m", "gpu_type": "g", "path": str(tmp_path / "nope.json")}]}
    )
    with pytest.raises(ProfileError, match=r"advisor\.profiles\[0\]\.path: cannot read"):
        load_profiles(missing)
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    bad = AdvisorConfig.model_validate({"profiles": [{"model": "m", "gpu_type": "g", "path": "bad.json"}]})
    with pytest.raises(ProfileError, match=r"advisor\.profiles\[0\]\.path: .*bad\.json: a JSON file"):
        load_profiles(bad, base=tmp_path)
