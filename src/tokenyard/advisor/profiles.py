"""Capacity profiles a user imports, read as the benchmark tools write them (pure parsing; the caller reads
the file).

A profile says, for a model on one replica of a GPU type, how many requests per second it sustained at given
prompt and completion lengths while meeting the SLO. Three formats are accepted as they are written:

- vLLM's ``vllm bench serve --save-result`` JSON (with ``--goodput``: ``request_goodput`` is the rate that
  met the SLO; without it, ``request_throughput`` with the run's latency percentiles checked against the SLO
  given);
- GuideLLM's benchmark report (``guidellm benchmark --output-path x.json``), a sweep of rates;
- silybench's published results (CSV or JSON), capacity at the SLO per shape.

Each point lands in the shape bucket of its mean lengths; several points of one shape keep the best rate
that met the SLO. The table it gives is the ``imported`` layer of ``shapes.build_table``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenyard.advisor.settings import AdvisorConfig
from tokenyard.meter.shapes import shape_index

Format = Literal["auto", "vllm", "guidellm", "silybench"]
FORMATS: tuple[str, ...] = ("auto", "vllm", "guidellm", "silybench")
# silybench names a workload ``<kind>-<input_len>-<output_len>`` (``prefill-1024-128``).
_WORKLOAD = re.compile(r"-(\d+)-(\d+)$")


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """One measured operating point: mean lengths and the rate that met the SLO."""

    prompt_tokens: float
    completion_tokens: float
    requests_per_s: float
    meets_slo: bool = True
    note: str = ""  # what it was measured at (concurrency, rate, percentiles)


@dataclass(frozen=True, slots=True)
class Slo:
    """The SLO a point must meet when the file itself does not say it was met (no goodput)."""

    ttft_p99_ms: float | None = None
    itl_median_ms: float | None = None

    def given(self) -> bool:
        """Whether it has any target to check a point against."""
        return self.ttft_p99_ms is not None or self.itl_median_ms is not None

    def met(self, ttft_p99_ms: float | None, itl_median_ms: float | None) -> bool:
        """Whether a run's percentiles meet every target (a target the run has no figure for is not met)."""
        return _within(ttft_p99_ms, self.ttft_p99_ms) and _within(itl_median_ms, self.itl_median_ms)


def _within(value: float | None, target: float | None) -> bool:
    return target is None or (value is not None and value <= target)


class ProfileError(ValueError):
    """A file that is none of the accepted formats, or has no usable point (says which and why)."""


def parse_profile(
    text: str, *, name: str, fmt: Format = "auto", slo: Slo | None = None
) -> list[ProfilePoint]:
    """The points of one profile file's text (``name``: the file's name, for the format and messages)."""
    chosen = detect(text, name) if fmt == "auto" else fmt
    try:
        if chosen == "silybench":
            points = _silybench(text, slo or Slo())
        else:
            tree = _json(text, name)
            points = _vllm(tree, slo or Slo()) if chosen == "vllm" else _guidellm(tree, slo or Slo())
    except ProfileError as error:
        raise ProfileError(f"{name}: {chosen} profile: {error}") from None
    if not points:
        raise ProfileError(f"{name}: {chosen} profile: no operating point in it")
    return points


def detect(text: str, name: str) -> Format:
    """The format a file's content is in: a JSON report with ``benchmarks`` is GuideLLM's, one with
    ``request_throughput`` vLLM's; a CSV with silybench's ``workload`` column silybench's."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        tree = _json(text, name)
        first = tree[0] if isinstance(tree, list) and tree else tree
        if isinstance(first, dict) and isinstance(first.get("benchmarks"), list):
            return "guidellm"
        if isinstance(first, dict) and "request_throughput" in first:
            return "vllm"
        raise ProfileError(
            f"{name}: a JSON file that is neither a vLLM bench serve result (no request_throughput) "
            "nor a GuideLLM report (no benchmarks)"
        )
    header = stripped.partition("\n")[0].split(",")
    if "workload" in header and ("max_users_slo" in header or "slo_pass" in header):
        return "silybench"
    raise ProfileError(f"{name}: not JSON, nor a silybench CSV (capacity.csv or perf_points.csv)")


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ProfileError(f"{name}: not valid JSON ({error})") from None


def _number(tree: Mapping[str, Any], key: str, where: str) -> float:
    value = tree.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where}{key} is {value!r}, not a number")
    return float(value)


def _optional(tree: Mapping[str, Any], key: str) -> float | None:
    value = tree.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _vllm(tree: Any, slo: Slo) -> list[ProfilePoint]:
    """``vllm bench serve --save-result``: one run per file (a list of runs is accepted too). With
    ``--goodput`` the file says which requests met the SLO: ``request_goodput`` is the rate that did."""
    runs = tree if isinstance(tree, list) else [tree]
    points = []
    for i, run in enumerate(runs):
        where = f"run {i}: " if len(runs) > 1 else ""
        if not isinstance(run, dict):
            raise ProfileError(f"{where}not an object")
        completed = _number(run, "completed", where)
        if completed <= 0:
            continue
        prompt = _number(run, "total_input_tokens", where) / completed
        completion = _number(run, "total_output_tokens", where) / completed
        ttft, itl = _optional(run, "p99_ttft_ms"), _optional(run, "median_itl_ms")
        load = f"max_concurrency {run.get('max_concurrency')}, request_rate {run.get('request_rate')}"
        goodput = _optional(run, "request_goodput")
        if goodput is not None:  # the file's own SLO (its --goodput) decided
            points.append(ProfilePoint(prompt, completion, goodput, True, f"{load}, goodput"))
            continue
        if not slo.given():
            raise ProfileError(f"{where}no request_goodput (run without --goodput) and no SLO given to check")
        rate = _number(run, "request_throughput", where)
        note = f"{load}, p99 TTFT {ttft} ms, median ITL {itl} ms"
        points.append(ProfilePoint(prompt, completion, rate, slo.met(ttft, itl), note))
    return points


def _summary(metrics: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """A GuideLLM metric's distribution over the successful requests."""
    metric = metrics.get(key)
    successful = metric.get("successful") if isinstance(metric, dict) else None
    if not isinstance(successful, dict):
        raise ProfileError(f"{where}metrics.{key}.successful is missing")
    return successful


def _guidellm(tree: Any, slo: Slo) -> list[ProfilePoint]:
    """GuideLLM's report: ``benchmarks[]``, each a rate of the sweep with its ``metrics`` distributions
    (``successful`` requests: mean, median, percentiles). It has no goodput: the SLO is checked here."""
    if not slo.given():
        raise ProfileError("a GuideLLM report says nothing of an SLO: give one (TTFT p99, ITL median)")
    benchmarks = tree.get("benchmarks") if isinstance(tree, dict) else None
    if not isinstance(benchmarks, list):
        raise ProfileError("no benchmarks list")
    points = []
    for i, benchmark in enumerate(benchmarks):
        where = f"benchmarks[{i}]."
        metrics = benchmark.get("metrics") if isinstance(benchmark, dict) else None
        if not isinstance(metrics, dict):
            raise ProfileError(f"{where}metrics is missing")
        rate = _number(_summary(metrics, "requests_per_second", where), "mean", where)
        prompt = _number(_summary(metrics, "prompt_token_count", where), "mean", where)
        completion = _number(_summary(metrics, "output_token_count", where), "mean", where)
        ttft_percentiles = _summary(metrics, "time_to_first_token_ms", where).get("percentiles")
        ttft = _optional(ttft_percentiles, "p99") if isinstance(ttft_percentiles, dict) else None
        itl = _optional(_summary(metrics, "inter_token_latency_ms", where), "median")
        note = f"{_strategy(benchmark)}, p99 TTFT {ttft} ms, median ITL {itl} ms"
        points.append(ProfilePoint(prompt, completion, rate, slo.met(ttft, itl), note))
    return points


def _strategy(benchmark: Mapping[str, Any]) -> str:
    """What load a GuideLLM benchmark ran (``config.strategy`` in newer reports, ``args.strategy`` in
    older ones), for the note."""
    for section in ("config", "args"):
        part = benchmark.get(section)
        strategy = part.get("strategy") if isinstance(part, dict) else None
        if isinstance(strategy, dict):
            return str(strategy.get("type_", "strategy ?"))
    return "strategy ?"


def _silybench(text: str, slo: Slo) -> list[ProfilePoint]:
    """silybench's ``capacity.csv`` (the load that met its SLO per workload) or ``perf_points.csv`` (every
    concurrency it ran, with ``slo_pass``). One run per file: its rows are one model on one machine."""
    rows = list(csv.DictReader(io.StringIO(text)))
    runs = sorted({row.get("run_id", "") for row in rows})
    if len(runs) > 1:
        raise ProfileError(f"{len(runs)} runs in one file ({', '.join(runs)}): keep one run's rows")
    points = []
    for line, row in enumerate(rows, start=2):
        where = f"line {line}: "
        if "max_users_slo" in row:
            points.append(_capacity_row(row, slo, where))
        else:
            points.append(_perf_row(row, slo, where))
    return points


def _csv_number(row: Mapping[str, str | None], key: str, where: str) -> float:
    try:
        value = float(row.get(key) or "")
    except ValueError:
        raise ProfileError(f"{where}{key} is {row.get(key)!r}, not a number") from None
    if not math.isfinite(value):
        raise ProfileError(f"{where}{key} is {value}")
    return value


def _capacity_row(row: Mapping[str, str | None], slo: Slo, where: str) -> ProfilePoint:
    match = _WORKLOAD.search(row.get("workload") or "")
    if match is None:
        raise ProfileError(f"{where}workload {row.get('workload')!r} does not end in -<input>-<output>")
    prompt, completion = float(match[1]), float(match[2])
    rate = _csv_number(row, "output_throughput_at_max_users", where) / completion
    file_ttft = _csv_number(row, "slo_ttft_p99_ms", where)
    file_itl = _csv_number(row, "slo_itl_median_ms", where)
    # Its SLO is in the file: the point meets ours when its targets are at least as tight.
    meets = slo.met(file_ttft, file_itl)
    note = f"{row.get('max_users_slo')} users at p99 TTFT <= {file_ttft:g} ms, median ITL <= {file_itl:g} ms"
    return ProfilePoint(prompt, completion, rate, meets, note)


def _perf_row(row: Mapping[str, str | None], slo: Slo, where: str) -> ProfilePoint:
    prompt = _csv_number(row, "input_len", where)
    completion = _csv_number(row, "output_len", where)
    rate = _csv_number(row, "request_throughput", where)
    ttft = _csv_number(row, "ttft_p99_ms", where)
    itl = _csv_number(row, "itl_median_ms", where)
    meets = slo.met(ttft, itl) if slo.given() else row.get("slo_pass") == "True"
    note = f"concurrency {row.get('concurrency')}, p99 TTFT {ttft:.0f} ms, median ITL {itl:.1f} ms"
    return ProfilePoint(prompt, completion, rate, meets, note)


def cells(points: list[ProfilePoint]) -> dict[int, float]:
    """Shape index → the best requests/s that met the SLO (the ``imported`` layer)."""
    out: dict[int, float] = {}
    for point in points:
        if not point.meets_slo or point.requests_per_s <= 0:
            continue
        index = shape_index(round(point.prompt_tokens), round(point.completion_tokens))
        out[index] = max(out.get(index, 0.0), point.requests_per_s)
    return out


ProfileKey = tuple[str, str, int]  # (model, gpu_type, gpus_per_replica)


def load_profiles(config: AdvisorConfig, base: Path | None = None) -> dict[ProfileKey, dict[int, float]]:
    """Reads and parses every ``advisor.profiles`` file (relative paths from ``base``): per (model, GPU
    type, GPUs per replica), shape index → requests/s at the SLO. Raises ProfileError naming the entry's
    config path when a file is missing, unreadable or gives no point that meets its SLO."""
    tables: dict[ProfileKey, dict[int, float]] = {}
    for i, entry in enumerate(config.profiles):
        where = f"advisor.profiles[{i}].path"
        path = Path(entry.path)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ProfileError(f"{where}: cannot read {path}: {error}") from None
        slo = Slo(entry.slo.ttft_p99_ms, entry.slo.itl_median_ms)
        try:
            found = cells(parse_profile(text, name=str(path), fmt=entry.format, slo=slo))
        except ProfileError as error:
            raise ProfileError(f"{where}: {error}") from None
        if not found:
            raise ProfileError(f"{where}: {path}: no point in it meets the SLO")
        key = (entry.model, entry.gpu_type, entry.gpus_per_replica)
        merged = tables.setdefault(key, {})
        for index, rate in found.items():
            merged[index] = max(merged.get(index, 0.0), rate)
    return tables
