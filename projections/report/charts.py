"""The report's charts, drawn as inline SVG: funnel, conversion by cohort, velocity, stage
entries per week and the scoring models side by side. Each chart says "No data yet" rather
than drawing nothing."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from leadflow.projections.db import ProjectionDB
from leadflow.projections.queries import Funnel
from leadflow.projections.report.style import (
    COHORT_STEPS,
    MEDIAN_COLOR,
    MONTHS,
    P90_COLOR,
    STAGE_COLORS,
    STAGE_LABELS,
    STAGE_ORDER,
    as_date,
    count,
    esc,
    fmt_compact,
    fmt_day,
    fmt_days,
    fmt_month,
    fmt_pct,
    num,
    ratio,
)
from leadflow.projections.schema import FUNNEL


def nice_ticks(top: float, target: int = 5) -> list[float]:
    """0 .. a round maximum >= top, in round steps (1, 2, 2.5, 5 x 10^k)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def f(value: float) -> str:
    """SVG coordinates with at most one decimal, no trailing zeros."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


# ---------------------------------------------------------------- SVG building blocks


@dataclass(frozen=True)
class Series:
    label: str
    color: str


def svg_open(kind: str, label: str, width: int, height: int) -> str:
    return (f'<svg class="chart" data-chart="{esc(kind)}" role="img" aria-label="{esc(label)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{esc(label)}</title>")


def no_data(kind: str, label: str, message: str, width: int = 560) -> str:
    height = 120
    return (svg_open(kind, label, width, height).replace('class="chart"',
                                                          'class="chart empty"', 1)
            + f'<rect class="frame" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" '
              f'rx="8"/>'
            + f'<text class="no-data" x="{width / 2:g}" y="{height / 2 + 5:g}" '
              f'text-anchor="middle">{esc(message)}</text></svg>')


def bar(x: float, y: float, w: float, h: float, color: str, tip: str) -> str:
    """A bar with a hover tooltip; never thinner than 1 unit when it stands for a value."""
    w, h = max(w, 1.0), max(h, 1.0)
    return (f'<rect class="bar" x="{f(x)}" y="{f(y)}" width="{f(w)}" height="{f(h)}" '
            f'fill="{color}"><title>{esc(tip)}</title></rect>')


def text(x: float, y: float, content: str, cls: str = "", anchor: str = "start",
         extra: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text{klass} x="{f(x)}" y="{f(y)}" text-anchor="{anchor}"{extra}>'
            f"{esc(content)}</text>")


def line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line class="{cls}" x1="{f(x1)}" y1="{f(y1)}" x2="{f(x2)}" y2="{f(y2)}"/>'


def legend(items: Sequence[Series], x: float, y: float) -> str:
    parts = ['<g class="legend">']
    for item in items:
        parts.append(f'<rect class="swatch" x="{f(x)}" y="{f(y - 9)}" width="10" height="10" '
                     f'rx="2" fill="{item.color}"/>')
        parts.append(text(x + 15, y, item.label, "legend-label"))
        x += 15 + 7.0 * len(item.label) + 18
    parts.append("</g>")
    return "".join(parts)


def value_axis(ticks: Sequence[float], scale: float, left: float, plot: float, top: float,
               axis_y: float, title: str | None = None) -> str:
    """The value axis under horizontal bars: a grid line and a label per tick, the axis
    line, and its title."""
    parts = []
    for tick in ticks:
        x = left + tick * scale
        parts.append(line(x, top - 6, x, axis_y, "grid"))
        parts.append(text(x, axis_y + 16, fmt_compact(tick), "tick", "middle"))
    parts.append(line(left, axis_y, left + plot, axis_y, "axis"))
    if title is not None:
        parts.append(text(left + plot / 2, axis_y + 32, title, "axis-title", "middle"))
    return "".join(parts)


# ---------------------------------------------------------------- charts


def funnel_chart(result: Funnel) -> str:
    kind = "funnel"
    stages = result.stages
    top = max((s.count for s in stages), default=0)
    label = "Funnel: " + ", ".join(f"{STAGE_LABELS[s.stage]} {s.count:,}" for s in stages)
    if top <= 0:
        return no_data(kind, "Funnel: no data", "No data yet: no leads have been projected.")
    width, row, left, right, top_pad = 560, 46, 100, 110, 34
    plot = width - left - right
    height = top_pad + row * len(stages) + 34
    ticks = nice_ticks(top)
    scale = plot / ticks[-1]
    parts = [svg_open(kind, label, width, height)]
    parts.append('<g class="legend">')
    for j, key in enumerate(FUNNEL):
        parts.append(f'<rect class="swatch" x="{left + j * 7}" y="7" width="6" height="10" '
                     f'fill="{STAGE_COLORS[key]}"/>')
    parts.append(text(left + 7 * len(FUNNEL) + 5, 16, "Leads reaching the stage",
                      "legend-label"))
    parts.append("</g>")
    parts.append(text(width - 4, 16, "conv. from prev.", "axis-title", "end"))
    axis_y = top_pad + row * len(stages) + 4
    parts.append(value_axis(ticks, scale, left, plot, top_pad, axis_y))
    first = stages[0].count
    for i, stage in enumerate(stages):
        y = top_pad + i * row
        bar_h = row - 16
        w = stage.count * scale
        color = STAGE_COLORS[stage.stage]
        parts.append(text(left - 10, y + bar_h / 2 + 5, STAGE_LABELS[stage.stage], "cat",
                          "end"))
        share = ratio(stage.count, first)
        tip = f"{STAGE_LABELS[stage.stage]}: {stage.count:,} leads ({fmt_pct(share)} of new)"
        if stage.count > 0:
            parts.append(bar(left, y, w, bar_h, color, tip))
        inside = w > 70
        parts.append(text(left + w - 8 if inside else left + max(w, 1) + 6, y + bar_h / 2 + 5,
                          f"{stage.count:,}", "value-in" if inside else "value",
                          "end" if inside else "start"))
        conversion = stage.conversion_from_previous
        if i > 0:
            conv = "—" if conversion is None else f"{100 * conversion:.1f}%"
            parts.append(text(width - 4, y + bar_h / 2 + 5, f"↓ {conv}", "conv", "end"))
        else:
            parts.append(text(width - 4, y + bar_h / 2 + 5, "100%", "conv muted", "end"))
    parts.append("</svg>")
    return "".join(parts)


def cohort_chart(rows: Sequence[dict[str, Any]]) -> str:
    kind = "cohorts"
    values = [[num(r.get(key)) for key, _, _ in COHORT_STEPS] for r in rows]
    if not rows or not any(v for vs in values for v in vs):
        return no_data(kind, "Conversion by cohort month: no data",
                       "No data yet: no cohort has converted a lead.", 1100)
    series = [Series(name, STAGE_COLORS[stage]) for _, name, stage in COHORT_STEPS]
    label = "Conversion by cohort month: " + "; ".join(
        f"{r['cohort_month']}: " + ", ".join(f"{s.label} {fmt_pct(v)}"
                                            for s, v in zip(series, vs, strict=True))
        for r, vs in zip(rows, values, strict=True))
    width, height, left, right, top_pad, bottom = 1100, 320, 48, 10, 44, 52
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = max((v for vs in values for v in vs if v is not None), default=0.0)
    ticks = nice_ticks(max(top, 10.0))
    if ticks[-1] > 100:
        ticks = [t for t in ticks if t <= 100] + ([100.0] if ticks[-2] < 100 else [])
    scale = plot_h / ticks[-1]
    base = top_pad + plot_h
    parts = [svg_open(kind, label, width, height), legend(series, left, 18)]
    for tick in ticks:
        y = base - tick * scale
        parts.append(line(left, y, left + plot_w, y, "grid" if tick else "axis"))
        parts.append(text(left - 6, y + 4, f"{tick:g}%", "tick", "end"))
    group_w = plot_w / len(rows)
    inner = min(group_w * 0.78, 260.0)
    bar_w = inner / len(COHORT_STEPS)
    for i, (row, vs) in enumerate(zip(rows, values, strict=True)):
        gx = left + i * group_w + (group_w - inner) / 2
        month = str(row["cohort_month"])
        for j, (value, s) in enumerate(zip(vs, series, strict=True)):
            x = gx + j * bar_w + 1
            if value is None:
                parts.append(text(x + (bar_w - 2) / 2, base - 4, "–", "value-small muted",
                                  "middle"))
                continue
            h = value * scale
            if value > 0:
                parts.append(bar(x, base - h, bar_w - 2, h, s.color,
                                 f"{fmt_month(month)} cohort, {s.label}: {fmt_pct(value)}"))
            if bar_w >= 22:
                parts.append(text(x + (bar_w - 2) / 2, base - h - 4, f"{value:.0f}%",
                                  "value-small", "middle"))
        cx = left + i * group_w + group_w / 2
        parts.append(text(cx, base + 18, fmt_month(month), "cat", "middle"))
        parts.append(text(cx, base + 34, f"{count(row.get('leads')):,} leads", "tick",
                          "middle"))
    parts.append("</svg>")
    return "".join(parts)


def velocity_chart(rows: Sequence[dict[str, Any]]) -> str:
    kind = "velocity"
    steps = [(str(r["step"]), count(r.get("leads")), num(r.get("median_days")),
              num(r.get("p90_days"))) for r in rows]
    top = max((v for _, _, m, p in steps for v in (m, p) if v is not None), default=0.0)
    if not steps or top <= 0:
        return no_data(kind, "Velocity: no data",
                       "No data yet: no lead has moved between funnel stages.")
    series = [Series("Median days", MEDIAN_COLOR), Series("p90 days", P90_COLOR)]
    label = "Velocity in days per step: " + "; ".join(
        f"{step}: median {fmt_days(m)}, p90 {fmt_days(p)} (n={n})" for step, n, m, p in steps)
    width, row, left, right, top_pad = 560, 52, 150, 56, 34
    plot = width - left - right
    height = top_pad + row * len(steps) + 40
    ticks = nice_ticks(top)
    scale = plot / ticks[-1]
    axis_y = top_pad + row * len(steps)
    parts = [svg_open(kind, label, width, height), legend(series, left, 16),
             value_axis(ticks, scale, left, plot, top_pad, axis_y, "days")]
    for i, (step, n, median, p90) in enumerate(steps):
        y = top_pad + i * row
        name = step.replace("->", " → ").replace("opportunity", "opp.")
        parts.append(text(left - 10, y + 18, name, "cat", "end"))
        parts.append(text(left - 10, y + 33, f"n = {n:,}", "tick", "end"))
        for j, (value, s) in enumerate(((median, series[0]), (p90, series[1]))):
            by = y + 4 + j * 20
            if value is None:
                continue
            w = value * scale
            if value > 0:
                parts.append(bar(left, by, w, 17, s.color, f"{step}: {s.label.lower()} "
                                                         f"{fmt_days(value)} (n={n})"))
            parts.append(text(left + max(w, 1) + 5, by + 13, fmt_days(value), "value-small"))
    parts.append("</svg>")
    return "".join(parts)


def weekly_entries(db: ProjectionDB) -> tuple[list[date], dict[str, list[int]]]:
    """Transitions into each stage per ISO week (Monday start), gaps filled with zeros."""
    rows = db.query("SELECT day, stage, SUM(entries) AS entries FROM funnel_daily "
                    "GROUP BY day, stage ORDER BY day, stage")
    per: dict[tuple[date, str], int] = defaultdict(int)
    for r in rows:
        day = as_date(r["day"])
        if day is not None:
            per[(day - timedelta(days=day.weekday()), str(r["stage"]))] += count(r["entries"])
    if not per:
        return [], {}
    first, last = min(w for w, _ in per), max(w for w, _ in per)
    weeks = [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]
    present = {s for _, s in per}
    stages = [s for s in STAGE_ORDER if s in present] + sorted(present - set(STAGE_ORDER))
    return weeks, {s: [per.get((w, s), 0) for w in weeks] for s in stages}


def entries_chart(weeks: Sequence[date], series: dict[str, list[int]]) -> str:
    kind = "entries"
    if not weeks or not any(v for vs in series.values() for v in vs):
        return no_data(kind, "Stage entries per week: no data",
                       "No data yet: no stage transitions recorded.", 1100)
    label = (f"Stage entries per week from {fmt_day(weeks[0])} to {fmt_day(weeks[-1])}: "
             + ", ".join(f"{STAGE_LABELS.get(s, s)} {sum(v):,}" for s, v in series.items()))
    width, left, right, top_pad, panel, gap, bottom = 1100, 150, 10, 30, 56, 10, 36
    plot_w = width - left - right
    height = top_pad + len(series) * (panel + gap) + bottom
    slot = plot_w / len(weeks)
    bar_w = max(min(slot * 0.72, 48.0), 1.0)
    parts = [svg_open(kind, label, width, height)]
    parts.append(legend([Series(STAGE_LABELS.get(s, s), STAGE_COLORS.get(s, "#64748b"))
                         for s in series], left, 16))
    for i, (stage, values) in enumerate(series.items()):
        y0 = top_pad + i * (panel + gap)
        base = y0 + panel
        color = STAGE_COLORS.get(stage, "#64748b")
        top = max(values) or 1
        scale = (panel - 16) / top
        parts.append(f'<rect class="panel" x="{left}" y="{f(y0)}" width="{f(plot_w)}" '
                     f'height="{panel}"/>')
        parts.append(text(left - 10, y0 + 24, STAGE_LABELS.get(stage, stage), "cat", "end"))
        parts.append(text(left - 10, y0 + 40, f"{sum(values):,} total · max {max(values):,}",
                          "tick", "end"))
        for j, value in enumerate(values):
            if value <= 0:
                continue
            x = left + j * slot + (slot - bar_w) / 2
            h = value * scale
            parts.append(bar(x, base - h, bar_w, h, color,
                             f"{STAGE_LABELS.get(stage, stage)}, week of "
                             f"{fmt_day(weeks[j])}: {value:,}"))
            if slot >= 26:
                parts.append(text(x + bar_w / 2, base - h - 3, f"{value:,}", "value-small",
                                  "middle"))
        parts.append(line(left, base, left + plot_w, base, "axis"))
    axis_y = top_pad + len(series) * (panel + gap)
    every = max(1, math.ceil(len(weeks) / 14))
    for j, week in enumerate(weeks):
        if j % every == 0:
            parts.append(text(left + j * slot + slot / 2, axis_y + 8,
                              f"{week.day} {MONTHS[week.month - 1]}", "tick", "middle"))
    parts.append(text(left + plot_w / 2, axis_y + 26, "week starting (Monday, UTC)",
                      "axis-title", "middle"))
    parts.append("</svg>")
    return "".join(parts)


def models_chart(series: Sequence[Series], groups: Sequence[tuple[str, Sequence[int]]]) -> str:
    """Grouped horizontal bars, one group per source: for each series (the primary model's
    MQL count, then each named model's leads above its threshold) a bar."""
    kind = "models"
    if not groups or not any(v for _, values in groups for v in values):
        return no_data(kind, "Scoring models by source: no data",
                       "No data yet: no lead has reached MQL or a model's threshold.", 1100)
    label = "Scoring models by source: " + "; ".join(
        f"{source}: " + ", ".join(f"{s.label} {v:,}"
                                  for s, v in zip(series, values, strict=True))
        for source, values in groups)
    width, left, right, top_pad, bar_h, gap = 1100, 150, 60, 40, 14, 16
    plot = width - left - right
    group_h = bar_h * len(series) + gap
    axis_y = top_pad + group_h * len(groups)
    height = axis_y + 36
    top = max(v for _, values in groups for v in values)
    ticks = nice_ticks(top)
    scale = plot / ticks[-1]
    parts = [svg_open(kind, label, width, height), legend(series, left, 16),
             value_axis(ticks, scale, left, plot, top_pad, axis_y, "leads")]
    for i, (source, values) in enumerate(groups):
        y0 = top_pad + i * group_h
        parts.append(text(left - 10, y0 + bar_h * len(series) / 2 + 5, source, "cat", "end"))
        for j, (value, s) in enumerate(zip(values, series, strict=True)):
            y = y0 + j * bar_h
            w = value * scale
            if value > 0:
                parts.append(bar(left, y + 1, w, bar_h - 2, s.color,
                                 f"{source}, {s.label}: {value:,} leads"))
            parts.append(text(left + max(w, 1) + 5, y + bar_h - 3, f"{value:,}",
                              "value-small"))
    parts.append("</svg>")
    return "".join(parts)
