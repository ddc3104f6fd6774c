"""SVG charts of the advisor's findings: traffic by hour of week, cost against replicas, candidate costs,
and a backend's measured envelope (throughput against concurrency).

Pure string building with the standard library and no I/O: ``tokenyard replay --plot DIR`` writes the
strings to files, and a dashboard may inline them. Every chart has a viewBox (so it scales), a white
background, the system sans-serif font and a colour-blind-safe palette, and defines no element ids (two
charts inlined in one page cannot clash). All text is XML-escaped::

    svg = candidate_costs_svg("Last 30 days", [("all serverless", 1234.0), ("2 × H100", 980.0)],
                              recommended="2 × H100", current="all serverless")
    Path("costs.svg").write_text(svg)
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

_Attrs = Mapping[str, str | float]

_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
_INK, _MUTED, _GRID, _AXIS, _WHITE = "#222222", "#666666", "#e6e6e6", "#888888", "#ffffff"
# Okabe & Ito (2008): told apart under the common colour-vision deficiencies.
_BLUE, _VERMILLION, _OTHER_BAR = "#0072B2", "#D55E00", "#B8C4CE"
_REFERENCE_COLOURS = ("#E69F00", "#009E73", "#CC79A7", "#56B4E9", _INK)
_DASHES = ("6 4", "2 3", "10 3 2 3")
# ColorBrewer "Blues": one hue from light to dark, so the order reads without telling colours apart.
_RAMP = ((0xF7, 0xFB, 0xFF), (0xC6, 0xDB, 0xEF), (0x6B, 0xAE, 0xD6), (0x21, 0x71, 0xB5), (0x08, 0x30, 0x6B))
_CELL: _Attrs = {"class_": "cell", "rx": 2, "stroke": "#dde3ea", "stroke_width": 0.5}
_CURRENT: _Attrs = {"stroke": _INK, "stroke_width": 1.5}  # the current architecture's bar is outlined
_DOT: _Attrs = {"class_": "optimum", "r": 6, "fill": _VERMILLION, "stroke": _WHITE, "stroke_width": 2}
# A white stroke painted under the fill (a halo) keeps the label legible over gridlines and the curve.
_HALO: _Attrs = {"paint_order": "stroke", "stroke": _WHITE, "stroke_width": 3, "stroke_linejoin": "round"}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
# Escaping is not enough for these: XML 1.0 forbids them outright, and a parser would reject the document.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def traffic_heatmap_svg(title: str, tokens_by_hour_of_week: Sequence[float]) -> str:
    """Traffic by hour of the week: a 7 × 24 heatmap (rows Monday..Sunday, columns 00..23 UTC)."""
    values = [float(v) for v in tokens_by_hour_of_week]
    if len(values) != 7 * 24:
        raise ValueError(f"need 168 values (7 days × 24 hours, Monday 00:00 UTC first), got {len(values)}")
    _check_finite(values, "tokens_by_hour_of_week")
    if min(values) < 0:
        raise ValueError("token counts cannot be negative")
    peak, left, top, bottom = max(values), 48.0, 48.0, 48.0 + 7 * 24
    body = [_text(left - 8, top + 24 * d + 16, day, text_anchor="end") for d, day in enumerate(_DAYS)]
    for i, value in enumerate(values):
        day, hour = divmod(i, 24)
        shade = _heat_colour(value / peak if peak > 0 else 0.0)
        tip = _tip(f"{_hour_name(i)}: {_compact(value)} tokens")  # "Tue 14:00 UTC: 1.2M tokens"
        body.append(_rect(left + 28 * hour, top + 24 * day, 26, 22, tip, fill=shade, **_CELL))
    for hour in range(24):
        body.append(
            _text(left + 28 * hour + 13, bottom + 14, f"{hour:02d}", 10, fill=_MUTED, text_anchor="middle")
        )
    body.append(_text(left + 12 * 28, bottom + 34, "hour of day (UTC)", text_anchor="middle"))
    return _document(left + 24 * 28 + 16, bottom + 104, title, body + _heat_legend(values, left, bottom + 56))


def cost_curve_svg(
    title: str,
    points: Sequence[tuple[int, float]],
    *,
    optimum_n: int | None = None,
    breakeven_n: float | None = None,
    references: Mapping[str, float] = {},
) -> str:
    """Cost per month against the number of always-on dedicated replicas, the optimum and breakeven marked."""
    _check_curve(points, optimum_n, breakeven_n, references)
    left, right = 84.0, 696.0
    labels = ["cost per month", *(f"{name} ({_usd(usd)}/mo)" for name, usd in references.items())]
    styles = [{"stroke": _BLUE}, *(_reference_style(i) for i in range(len(references)))]
    legend, legend_h = _legend(list(zip(labels, styles, strict=True)), left, 52, right - left)
    top = 60 + legend_h
    bottom = top + 300
    ns = [float(n) for n, _ in points] + ([] if breakeven_n is None else [breakeven_n])
    dollars = [c for _, c in points] + list(references.values())
    x_ticks = _nice_ticks(min(0.0, *ns), max(ns), integer=True)
    y_ticks = _nice_ticks(min(0.0, *dollars), max(0.0, *dollars))
    x, y = _Scale(x_ticks[0], x_ticks[-1], left, right), _Scale(y_ticks[0], y_ticks[-1], bottom, top)
    body = legend + _y_grid(y, y_ticks, left, right, money=True)
    body += _x_grid(x, x_ticks, top, bottom, money=False)
    body.append(_el("path", d=f"M{left},{top:.1f} V{bottom:.1f} H{right}", fill="none", stroke=_AXIS))
    for (name, usd), style in zip(references.items(), styles[1:], strict=True):
        tip = _tip(f"{name}: {_usd(usd)}/mo")
        body.append(_line(left, y(usd), right, y(usd), tip, class_="reference", stroke_width=1.5, **style))
    if breakeven_n is not None:
        body += _breakeven_marker(x(breakeven_n), breakeven_n, top, bottom, right)
    body += _curve(points, x, y)
    if optimum_n is not None:
        body += _optimum_marker(optimum_n, dict(points)[optimum_n], x, y)
    mid, x_title = (top + bottom) / 2, "always-on dedicated replicas (N)"
    body.append(_text((left + right) / 2, bottom + 42, x_title, text_anchor="middle"))
    body.append(_text(22, mid, "USD / month", text_anchor="middle", transform=f"rotate(-90 22 {mid:.1f})"))
    return _document(720, bottom + 56, title, body)


def candidate_costs_svg(
    title: str,
    costs: Sequence[tuple[str, float]],
    *,
    recommended: str | None = None,
    current: str | None = None,
) -> str:
    """Cost per month of each candidate architecture as horizontal bars, the recommended one highlighted."""
    if not costs:
        raise ValueError("candidate_costs_svg needs at least one candidate")
    names, values = [name for name, _ in costs], [value for _, value in costs]
    _check_finite(values, "costs")
    for role, name in (("recommended", recommended), ("current", current)):
        if name is not None and name not in names:
            raise ValueError(f"{role} {name!r} is not one of the candidates")
    notes = [_bar_note(name, value, recommended, current) for name, value in costs]
    label_w, note_w = min(max(map(_text_width, names)), 240.0), max(map(_text_width, notes)) + 16
    left, top, bottom = 28 + label_w, 52.0, 52.0 + 30 * len(costs)
    right = max(760 - note_w, left + 240)  # long names widen the chart rather than squeeze the bars
    ticks = _nice_ticks(min(0.0, *values), max(0.0, *values))
    x = _Scale(ticks[0], ticks[-1], left, right)
    body = _x_grid(x, ticks, top, bottom, money=True)
    for row, ((name, value), note) in enumerate(zip(costs, notes, strict=True)):
        mid, weight = top + 30 * row + 15, 600 if name == recommended else 400
        start, end = x(min(0.0, value)), x(max(0.0, value))
        body.append(_text(left - 8, mid + 4, _fit(name, label_w), text_anchor="end", font_weight=weight))
        tip, fill = _tip(f"{name}: {_usd(value)}/mo"), _BLUE if name == recommended else _OTHER_BAR
        bar: _Attrs = {"class_": "bar", "fill": fill, "rx": 2, **(_CURRENT if name == current else {})}
        body.append(_rect(start, mid - 10, max(end - start, 1), 20, tip, **bar))
        body.append(_text(end + 6, mid + 4, note, class_="value", font_weight=weight))
    body.append(_line(x(0), top, x(0), bottom, class_="axis", stroke=_AXIS))
    body.append(_text((left + right) / 2, bottom + 42, "USD / month", text_anchor="middle"))
    return _document(right + note_w, bottom + 56, title, body)


def envelope_svg(
    title: str,
    points: Sequence[tuple[int, float, float]],
    *,
    sla_tokens_per_s: float | None = None,
    capacity_at: int | None = None,
) -> str:
    """A measured envelope: aggregate and per-stream tokens/s against requests in flight per replica (the
    seed's per-stream vs aggregate trade-off), the SLA's per-stream floor and the capacity level marked.

    ``points`` are (concurrency, per-stream tokens/s, aggregate tokens/s), in ascending concurrency."""
    if not points:
        raise ValueError("envelope_svg needs at least one (concurrency, per-stream, aggregate) point")
    _check_finite([v for _, a, b in points for v in (a, b)], "throughputs")
    if any(b <= a for (a, _, _), (b, _, _) in pairwise(points)):
        raise ValueError("points must be in strictly ascending concurrency")
    if capacity_at is not None and capacity_at not in {c for c, _, _ in points}:
        raise ValueError(f"capacity_at={capacity_at} is not one of the points")
    left, right = 84.0, 696.0
    items: list[tuple[str, _Attrs]] = [
        ("aggregate tokens/s", {"stroke": _BLUE}),
        ("per-stream tokens/s", {"stroke": _VERMILLION}),
    ]
    if sla_tokens_per_s is not None:
        items.append((f"SLA: {_number(sla_tokens_per_s)} tok/s per stream", _reference_style(0)))
    legend, legend_h = _legend(items, left, 52, right - left)
    top = 60 + legend_h
    bottom = top + 300
    levels = [float(c) for c, _, _ in points]
    rates = [v for _, a, b in points for v in (a, b)] + ([sla_tokens_per_s] if sla_tokens_per_s else [])
    x_ticks = _nice_ticks(0.0, max(levels), integer=True)
    y_ticks = _nice_ticks(0.0, max(rates))
    x, y = _Scale(x_ticks[0], x_ticks[-1], left, right), _Scale(y_ticks[0], y_ticks[-1], bottom, top)
    body = (
        legend + _y_grid(y, y_ticks, left, right, money=False) + _x_grid(x, x_ticks, top, bottom, money=False)
    )
    body.append(_el("path", d=f"M{left},{top:.1f} V{bottom:.1f} H{right}", fill="none", stroke=_AXIS))
    if sla_tokens_per_s is not None:
        tip = _tip(f"SLA: {_number(sla_tokens_per_s)} tok/s per stream")
        sla_y = y(sla_tokens_per_s)
        body.append(
            _line(left, sla_y, right, sla_y, tip, class_="reference", stroke_width=1.5, **items[2][1])
        )
    for index, colour, what in ((2, _BLUE, "aggregate"), (1, _VERMILLION, "per stream")):
        path = " ".join(f"{'L' if i else 'M'}{x(p[0]):.1f},{y(p[index]):.1f}" for i, p in enumerate(points))
        body.append(_el("path", class_="curve", d=path, fill="none", stroke=colour, stroke_width=2))
        for p in points:
            tip = _tip(f"c = {p[0]}: {_number(p[index])} tok/s {what}")
            body.append(_el("circle", tip, cx=x(p[0]), cy=y(p[index]), r=3.5, fill=colour))
    if capacity_at is not None:
        aggregate = next(a for c, _, a in points if c == capacity_at)
        label = f"capacity: {_number(aggregate)} tok/s at c = {capacity_at}"
        px = x(capacity_at)
        body.append(_line(px, top, px, bottom, class_="capacity", stroke=_INK, stroke_dasharray="5 4"))
        half = _text_width(label) / 2
        anchor = "start" if px - half < left else "end" if px + half > right else "middle"
        style: _Attrs = {"class_": "capacity", "fill": _INK, "font_weight": 600, **_HALO}
        body.append(_text(px, top + 12, label, text_anchor=anchor, **style))
    mid = (top + bottom) / 2
    x_title = "requests in flight per replica (concurrency)"
    body.append(_text((left + right) / 2, bottom + 42, x_title, text_anchor="middle"))
    body.append(_text(22, mid, "tokens / s", text_anchor="middle", transform=f"rotate(-90 22 {mid:.1f})"))
    return _document(720, bottom + 56, title, body)


@dataclass(frozen=True, slots=True)
class _Scale:
    """A linear map from data values (lo..hi) to pixels (px_lo..px_hi); lo != hi by construction."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float

    def __call__(self, value: float) -> float:
        return self.px_lo + (value - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)


def _nice_ticks(lo: float, hi: float, *, integer: bool = False, count: int = 5) -> list[float]:
    """Round ticks (1, 2, 2.5 or 5 × 10^k apart) from at or below lo to at or above hi."""
    if hi <= lo:  # a flat series still gets an axis: widen it upwards
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multiples if raw <= m * magnitude * (1 + 1e-9))
    if integer:
        step = max(1.0, float(round(step)))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    # 12 significant digits drop float noise such as 0.30000000000000004.
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def _tick_labels(ticks: Sequence[float], *, money: bool = False) -> list[str]:
    """Tick values as labels sharing one precision: 7,500 · 12.5k · 1.2M, with $ for money."""
    top = max(abs(t) for t in ticks)
    # Four-digit thousands stay whole ("7,500"); from 10k on, the suffix is shorter.
    scale, suffix = next(((s, u) for s, u in _UNITS if top >= (1e4 if u == "k" else s)), (1.0, ""))
    scaled = [t / scale for t in ticks]
    tolerance = 1e-6 * min(b - a for a, b in pairwise(scaled))
    decimals = next((d for d in range(15) if all(abs(v - round(v, d)) < tolerance for v in scaled)), 15)
    if money and decimals == 1:
        decimals = 2  # $0.50, not $0.5
    return [
        _signed(v, f"{abs(v):,.{decimals}f}", money) + suffix if v else _signed(0, "0", money) for v in scaled
    ]


def _usd(value: float) -> str:
    """An amount of money for a label: $1,234 · $12.50 · $0.004 · $2.5M."""
    amount = abs(value)
    if amount >= 1e6:
        text = _compact(amount)
    elif amount >= 100:
        text = f"{amount:,.0f}"
    elif amount >= 0.01 or amount == 0:
        text = f"{amount:.2f}".removesuffix(".00")
    else:
        text = _two_digits(amount)
    return _signed(value, text, money=True)


def _compact(value: float) -> str:
    """A count for a label: 950 · 12.5k · 1.2M (one decimal below 10 of the unit)."""
    amount = abs(value)
    scale, suffix = next(((s, u) for s, u in _UNITS if amount >= s * 0.9995), (1.0, ""))  # 999,960 is "1M"
    x = amount / scale
    text = f"{x:.{1 if x < 9.95 else 0}f}".removesuffix(".0") if x >= 1 else _two_digits(x)
    return _signed(value, text + suffix, money=False)


def _two_digits(amount: float) -> str:
    """A non-negative amount below 1 to two significant digits, never in exponent notation: 0.0042."""
    if amount == 0:
        return "0"
    return f"{amount:.{1 - math.floor(math.log10(amount))}f}".rstrip("0").rstrip(".")


def _signed(value: float, digits: str, money: bool) -> str:
    sign = "-" if value < 0 and digits.strip("0.,") else ""  # no "-$0"
    return f"{sign}{'$' if money else ''}{digits}"


def _check_finite(values: Sequence[float], what: str) -> None:
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"{what} must be finite numbers, got {bad!r}")


def _check_curve(
    points: Sequence[tuple[int, float]],
    optimum_n: int | None,
    breakeven_n: float | None,
    refs: Mapping[str, float],
) -> None:
    if not points:
        raise ValueError("cost_curve_svg needs at least one (N, USD/month) point")
    _check_finite([c for _, c in points] + list(refs.values()), "costs and references")
    _check_finite([] if breakeven_n is None else [breakeven_n], "breakeven_n")
    if any(b <= a for (a, _), (b, _) in pairwise(points)):
        raise ValueError("points must be in strictly ascending N")
    if optimum_n is not None and optimum_n not in {n for n, _ in points}:
        raise ValueError(f"optimum_n={optimum_n} is not one of the points")


def _esc(text: str) -> str:
    """Text made safe for XML content and attribute values."""
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _text_width(text: str, size: float = 12) -> float:
    """A guess at rendered width: the font is the reader's, so layouts leave room for error."""
    return 0.6 * size * len(text)


def _fit(text: str, max_px: float, size: float = 12) -> str:
    keep = int(max_px / (0.6 * size))
    return text if len(text) <= keep else text[: max(keep - 1, 1)] + "…"


def _el(tag: str, content: str = "", /, **attrs: str | float) -> str:
    """One element; content is markup, taken as given (escape text with ``_esc``)."""
    return f"<{tag}{_attrs(attrs)}>{content}</{tag}>" if content else f"<{tag}{_attrs(attrs)}/>"


def _attrs(attrs: _Attrs) -> str:
    """Attributes from keywords: ``stroke_width`` is stroke-width, ``class_`` class; "" is left out."""
    named = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items() if v != ""}
    return "".join(f' {k}="{_esc(v) if isinstance(v, str) else _number(v)}"' for k, v in named.items())


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _line(x1: float, y1: float, x2: float, y2: float, content: str = "", /, **attrs: str | float) -> str:
    return _el("line", content, x1=x1, y1=y1, x2=x2, y2=y2, **attrs)


def _rect(x: float, y: float, width: float, height: float, content: str = "", /, **attrs: str | float) -> str:
    return _el("rect", content, x=x, y=y, width=width, height=height, **attrs)


def _text(x: float, y: float, text: str, size: float = 12, /, **attrs: str | float) -> str:
    return _el("text", _esc(text), x=x, y=y, font_size=size, **attrs)


def _tip(text: str) -> str:
    """A tooltip: a <title> child, shown on hover by browsers and read by screen readers."""
    return f"<title>{_esc(text)}</title>"


def _document(width: float, height: float, title: str, body: Sequence[str]) -> str:
    """A whole SVG document: viewBox, white background, font, an accessible title and the visible one."""
    box = f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}"'
    look = _attrs({"role": "img", "font_family": _FONT, "fill": _INK})
    background = _el("rect", width="100%", height="100%", fill=_WHITE)
    heading = _text(16, 28, title, 16, font_weight=600, class_="title")
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" {box}{look}>'
    return "\n".join([svg, _tip(title), background, heading, *body, "</svg>\n"])


def _y_grid(y: _Scale, ticks: Sequence[float], left: float, right: float, *, money: bool) -> list[str]:
    """Horizontal gridlines at the ticks of the vertical axis, labelled on the left."""
    parts = []
    for tick, label in zip(ticks, _tick_labels(ticks, money=money), strict=True):
        parts.append(_line(left, y(tick), right, y(tick), class_="grid", stroke=_GRID))
        parts.append(_text(left - 8, y(tick) + 4, label, 11, fill=_MUTED, text_anchor="end", class_="y-tick"))
    return parts


def _x_grid(x: _Scale, ticks: Sequence[float], top: float, bottom: float, *, money: bool) -> list[str]:
    """Vertical gridlines at the ticks of the horizontal axis, labelled below."""
    parts = []
    for tick, label in zip(ticks, _tick_labels(ticks, money=money), strict=True):
        px = x(tick)
        parts.append(_line(px, top, px, bottom, class_="grid", stroke=_GRID))
        parts.append(_text(px, bottom + 18, label, 11, fill=_MUTED, text_anchor="middle", class_="x-tick"))
    return parts


def _legend(items: Sequence[tuple[str, _Attrs]], x: float, y: float, width: float) -> tuple[list[str], float]:
    """Legend items (label, line style) flowed into rows; returns the SVG and the height used."""
    parts, cx, cy = [], x, y
    for label, style in items:
        item = 28 + _text_width(label) + 12
        if cx > x and cx + item > x + width:
            cx, cy = x, cy + 20
        parts.append(_line(cx, cy, cx + 22, cy, class_="legend", stroke_width=2, **style))
        parts.append(_text(cx + 28, cy + 4, label))
        cx += item
    return parts, cy - y + 20


def _reference_style(i: int) -> _Attrs:
    """Colour and dash of the i-th reference line; the dash changes once the colours run out."""
    laps, colour = divmod(i, len(_REFERENCE_COLOURS))
    return {"stroke": _REFERENCE_COLOURS[colour], "stroke_dasharray": _DASHES[laps % len(_DASHES)]}


def _curve(points: Sequence[tuple[int, float]], x: _Scale, y: _Scale) -> list[str]:
    path = " ".join(f"{'L' if i else 'M'}{x(n):.1f},{y(c):.1f}" for i, (n, c) in enumerate(points))
    parts = [_el("path", class_="curve", d=path, fill="none", stroke=_BLUE, stroke_width=2)]
    for n, cost in points:
        parts.append(_el("circle", _tip(f"N = {n}: {_usd(cost)}/mo"), cx=x(n), cy=y(cost), r=3.5, fill=_BLUE))
    return parts


def _optimum_marker(n: int, cost: float, x: _Scale, y: _Scale) -> list[str]:
    px, py, label = x(n), y(cost), f"cheapest: N = {n}, {_usd(cost)}/mo"
    # The cheapest point has the curve above it on both sides, so the label goes below it (unless the point
    # sits on the floor), shifted sideways to stay inside the plot.
    half = _text_width(label) / 2
    anchor = "start" if px - half < x.px_lo else "end" if px + half > x.px_hi else "middle"
    label_y = py - 14 if py + 24 > y.px_lo - 4 else py + 24
    style: _Attrs = {"class_": "optimum", "fill": _VERMILLION, "font_weight": 600, **_HALO}
    return [_el("circle", cx=px, cy=py, **_DOT), _text(px, label_y, label, text_anchor=anchor, **style)]


def _breakeven_marker(px: float, n: float, top: float, bottom: float, right: float) -> list[str]:
    label = f"breakeven N ≈ {_number(n)}"
    near_right = px + 8 + _text_width(label, 11) > right
    anchor, label_x = ("end", px - 6) if near_right else ("start", px + 6)
    line = _line(px, top, px, bottom, class_="breakeven", stroke=_INK, stroke_dasharray="5 4")
    return [line, _text(label_x, top + 12, label, 11, text_anchor=anchor, class_="breakeven")]


def _bar_note(name: str, value: float, recommended: str | None, current: str | None) -> str:
    roles = [role for role, who in (("current", current), ("recommended", recommended)) if who == name]
    return f"{_usd(value)}/mo" + (f" · {', '.join(roles)}" if roles else "")


def _heat_colour(t: float) -> str:
    """The colour at t in [0, 1] on the light-to-dark ramp, interpolated between its stops."""
    pos = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(pos), len(_RAMP) - 2)
    a, b = _RAMP[i], _RAMP[i + 1]
    return "#" + "".join(f"{round(p + (q - p) * (pos - i)):02x}" for p, q in zip(a, b, strict=True))


def _hour_name(index: int) -> str:
    day, hour = divmod(index, 24)
    return f"{_DAYS[day]} {hour:02d}:00 UTC"


def _heat_legend(values: Sequence[float], x: float, y: float) -> list[str]:
    """The colour ramp from 0 to the peak, then where the busiest and quietest hours were."""
    peak, low, ramp_x = max(values), min(values), x + _text_width("tokens per hour:  0", 11) + 8
    parts = [_text(x, y + 10, "tokens per hour:  0", 11, fill=_MUTED, class_="legend-min")]
    parts += [_rect(ramp_x + 20 * i, y, 20, 12, fill=_heat_colour(i / 8)) for i in range(9)]
    parts.append(_text(ramp_x + 186, y + 10, _compact(peak), 11, fill=_MUTED, class_="legend-max"))
    where = (
        f"busiest: {_hour_name(values.index(peak))}, {_compact(peak)} tokens · "
        f"quietest: {_hour_name(values.index(low))}, {_compact(low)} tokens"
        if peak > 0
        else "no traffic in this week"
    )
    return [*parts, _text(x, y + 32, where, 11, fill=_MUTED)]
