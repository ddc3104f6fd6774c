"""The advice for people and programs: the JSON document of the advice API and ``--json``, and text tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tokenyard.advisor.decide import Advice, Candidate
from tokenyard.terminal import format_table

FORMAT_VERSION = 1


def _money(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def advice_json(advice: Advice) -> dict[str, Any]:
    """One workload's advice as JSON (the shape is documented in the README, "The advisor")."""
    per_month = advice.per_month
    curve = advice.curve
    current = advice.current
    return {
        "workload": advice.workload,
        "model": advice.model,
        "window": {
            "start": advice.window_start,
            "end": advice.window_end,
            "minutes": advice.window_minutes,
            "basis": advice.window_basis,
            "history_days": round(advice.history_days, 3),
        },
        "confidence": advice.confidence,
        "requests": round(advice.requests),
        "tokens": round(advice.tokens),
        "deferrable_share": round(advice.deferrable_share, 4),
        "recommended": {
            "architecture": advice.architecture,
            "realtime_architecture": advice.best.architecture,
            "label": advice.best.label,
            "gpu": advice.best.gpu,
            "replicas": round(advice.best.cost.replicas, 3),
            "cost_usd_per_month": _money(advice.best.cost.total_usd * per_month),
        },
        "current": None if current is None else current.to_json(per_month),
        "saving_usd_per_month": _money(advice.saving_usd_per_month),
        "saving_pct": None if advice.saving_pct is None else round(advice.saving_pct, 2),
        "material": advice.material,
        "change_recommended": advice.change_recommended,
        "stable_evaluations": advice.stable_evaluations,
        "breakeven_utilization": _round(advice.breakeven_utilization),
        "candidates": [c.to_json(per_month) for c in advice.candidates],
        "cost_curve": None
        if curve is None
        else {
            "gpu": curve.option.label,
            "every_n": curve.every_n,
            "capacity_source": curve.option.capacity_source,
            "points": [
                {"replicas": n, "cost_usd_per_month": _money(usd * per_month)} for n, usd in curve.points
            ],
            "optimum_replicas": curve.optimum_n,
            "breakeven_replicas": _round(curve.breakeven_n),
        },
        "reasons": advice.reasons,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def summary_table(advices: Sequence[Advice]) -> str:
    """One line per workload: what to run, what it costs a month against now, and how sure."""
    rows = []
    for a in advices:
        current = a.current.cost.total_usd * a.per_month if a.current else None
        saving = a.saving_usd_per_month
        pct = a.saving_pct
        rows.append(
            [
                a.workload,
                a.architecture,
                a.best.label,
                _usd(current),
                _usd(a.best.cost.total_usd * a.per_month),
                "-"
                if saving is None
                else f"{_usd(saving)} ({pct:.0f}%)"
                if pct is not None
                else _usd(saving),
                a.confidence,
                "yes" if a.change_recommended else "no",
            ]
        )
    headers = ["workload", "recommended", "how", "now $/mo", "best $/mo", "saving/mo", "confidence", "change"]
    return format_table(headers, rows)


def details(advice: Advice) -> str:
    """Every candidate of one workload, and why the recommendation is what it is."""
    per_month = advice.per_month

    def row(c: Candidate, mark: str) -> list[str]:
        util = "-" if c.cost.utilization is None else f"{c.cost.utilization:.0%}"
        return [mark + c.label, _usd(c.cost.total_usd * per_month), util]

    rows = [row(c, "* " if c is advice.best else "  ") for c in advice.candidates]
    if advice.current:
        rows.append(row(advice.current, "  "))
    lines = [
        f"{advice.workload}: {advice.requests:,.0f} requests, {advice.tokens:,.0f} tokens over "
        f"{advice.window_minutes / 1440:.1f} days (confidence {advice.confidence})",
        f"  window: {_when(advice.window_start)} to {_when(advice.window_end)}"
        + (f" ({advice.window_basis})" if advice.window_basis else ""),
        format_table(["candidate", "$/month", "utilization"], rows),
        *(f"  - {reason}" for reason in advice.reasons),
    ]
    return "\n".join(lines)
