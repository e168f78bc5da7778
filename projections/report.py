"""Self-contained HTML report for analysts (written by `leadflow report --html FILE`).

One page, no scripts, no external fonts, styles or images: the charts are inline SVG drawn
here. The output depends only on the read models, so the same data gives the same bytes
(no generation time is printed). Every text that comes from data is escaped.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from leadflow.projections.db import ProjectionDB
from leadflow.projections.queries import (
    Funnel,
    by_owner,
    by_source,
    by_status,
    cohorts,
    funnel,
    period,
    velocity,
)
from leadflow.projections.schema import FUNNEL

STAGE_COLORS = {
    "new": "#6366f1", "mql": "#3b82f6", "sql": "#0ea5e9", "opportunity": "#10b981",
    "customer": "#f59e0b", "recycled": "#a78bfa", "disqualified": "#94a3b8", "lost": "#f43f5e",
}
STAGE_LABELS = {"new": "New", "mql": "MQL", "sql": "SQL", "opportunity": "Opportunity",
                "customer": "Customer", "recycled": "Recycled", "disqualified": "Disqualified",
                "lost": "Lost"}
STAGE_ORDER = (*FUNNEL, "recycled", "disqualified", "lost")
COHORT_STEPS = (("new_to_mql_pct", "New → MQL", "mql"), ("mql_to_sql_pct", "MQL → SQL", "sql"),
                ("sql_to_opportunity_pct", "SQL → Opportunity", "opportunity"),
                ("opportunity_to_customer_pct", "Opportunity → Customer", "customer"))
MEDIAN_COLOR, P90_COLOR = "#2563eb", "#93c5fd"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FONT = ('system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
        '"Noto Sans", "Liberation Sans", sans-serif')


# ---------------------------------------------------------------- formatting


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any) -> float | None:
    """A number from either driver (int, float, Decimal, numeric text) or None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | Decimal):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def count(value: Any) -> int:
    n = num(value)
    return 0 if n is None else round(n)


def fmt_int(value: Any) -> str:
    n = num(value)
    return "—" if n is None else f"{round(n):,}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}%"


def fmt_days(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} d"


def fmt_money(value: Any) -> str:
    n = num(value)
    if n is None:
        return "—"
    return f"{n:,.0f}"


def fmt_compact(value: float) -> str:
    """Short tick labels: 1,500 -> 1.5k, 2,000,000 -> 2M."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            text = f"{value / div:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.1f}"


def fmt_day(value: date | datetime | None) -> str:
    if value is None:
        return "—"
    return f"{value.day} {MONTHS[value.month - 1]} {value.year}"


def fmt_month(text: str) -> str:
    """'2026-03' -> 'Mar 2026' (falls back to the text itself)."""
    try:
        year, month = text.split("-")
        return f"{MONTHS[int(month) - 1]} {year}"
    except (ValueError, IndexError):
        return text


def ratio(part: float, whole: float) -> float | None:
    return None if whole <= 0 else 100.0 * part / whole


def as_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


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
    for tick in ticks:
        x = left + tick * scale
        parts.append(line(x, top_pad - 6, x, axis_y, "grid"))
        parts.append(text(x, axis_y + 16, fmt_compact(tick), "tick", "middle"))
    parts.append(line(left, axis_y, left + plot, axis_y, "axis"))
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
    parts = [svg_open(kind, label, width, height), legend(series, left, 16)]
    for tick in ticks:
        x = left + tick * scale
        parts.append(line(x, top_pad - 6, x, axis_y, "grid"))
        parts.append(text(x, axis_y + 16, fmt_compact(tick), "tick", "middle"))
    parts.append(line(left, axis_y, left + plot, axis_y, "axis"))
    parts.append(text(left + plot / 2, axis_y + 32, "days", "axis-title", "middle"))
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


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    title: str
    numeric: bool = False
    hint: str = ""


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]], empty: str,
          caption: str = "", footer: Sequence[str] | None = None) -> str:
    head = "".join(
        '<th scope="col"'
        + (' class="num"' if c.numeric else "")
        + (f' title="{esc(c.hint)}"' if c.hint else "")
        + f">{esc(c.title)}</th>"
        for c in columns)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{v}</td>' if c.numeric else f"<td>{v}</td>"
                        for c, v in zip(columns, row, strict=True))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td class="no-data" colspan="{len(columns)}">{esc(empty)}</td></tr>')
    foot = ""
    if footer is not None and len(body) > 1:
        cells = "".join(f'<td class="num">{v}</td>' if c.numeric else f"<td>{v}</td>"
                        for c, v in zip(columns, footer, strict=True))
        foot = f"<tfoot><tr>{cells}</tr></tfoot>"
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody>{foot}</table></div>")


def stage_cell(stage: str) -> str:
    color = STAGE_COLORS.get(stage, "#64748b")
    return (f'<span class="dot" style="background:{color}"></span>'
            f"{esc(STAGE_LABELS.get(stage, stage))}")


FUNNEL_COLUMNS = (Column("Leads", True), Column("MQL", True), Column("SQL", True),
                  Column("Opp.", True, "Opportunity"), Column("Customer", True),
                  Column("Disq.", True, "Disqualified"), Column("Lost", True),
                  Column("→ MQL", True, "Share of leads that reached MQL"),
                  Column("→ Customer", True, "Share of leads that became customers"))
FUNNEL_KEYS = ("leads", "mql", "sql", "opportunity", "customer", "disqualified", "lost")


def funnel_cells(totals: dict[str, int]) -> list[str]:
    cells = [fmt_int(totals[k]) for k in FUNNEL_KEYS]
    cells.append(fmt_pct(ratio(totals["mql"], totals["leads"])))
    cells.append(fmt_pct(ratio(totals["customer"], totals["leads"])))
    return cells


def source_tables(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    per_source: dict[str, dict[str, int]] = {}
    grand = dict.fromkeys(FUNNEL_KEYS, 0)
    for r in rows:
        totals = per_source.setdefault(str(r["source"]), dict.fromkeys(FUNNEL_KEYS, 0))
        for k in FUNNEL_KEYS:
            totals[k] += count(r.get(k))
            grand[k] += count(r.get(k))
    ordered = sorted(per_source.items(), key=lambda kv: (-kv[1]["leads"], kv[0]))
    sources = table(
        (Column("Source"), *FUNNEL_COLUMNS),
        ([esc(s), *funnel_cells(t)] for s, t in ordered),
        "No leads yet.", footer=["Total", *funnel_cells(grand)])
    campaigns = table(
        (Column("Source"), Column("Campaign"), *FUNNEL_COLUMNS),
        ([esc(r["source"]), esc(r["campaign"]),
          *funnel_cells({k: count(r.get(k)) for k in FUNNEL_KEYS})] for r in rows),
        "No leads yet.")
    return sources, campaigns


def owner_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = (Column("Owner"), Column("Leads", True), Column("Open", True),
               Column("Closed", True, "Customer, lost or disqualified"),
               Column("Customers", True),
               Column("Win rate", True, "Customers / (customers + lost)"),
               Column("Won amount", True, "Sum of deal amounts of customers"))
    body = []
    for r in rows:
        owner = str(r["owner"])
        name = f'<span class="muted">{esc(owner)}</span>' if owner.startswith("(") else esc(owner)
        body.append([name, fmt_int(r.get("leads")), fmt_int(r.get("open_leads")),
                     fmt_int(r.get("closed")), fmt_int(r.get("customers")),
                     fmt_pct(num(r.get("win_rate_pct"))), fmt_money(r.get("won_amount"))])
    return table(columns, body, "No leads yet.",
                 caption="(pool): waiting in a team pool · (unassigned): no owner")


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    rank = {s: i for i, s in enumerate(STAGE_ORDER)}
    ordered = sorted(rows, key=lambda r: (rank.get(str(r["stage"]), len(rank)), str(r["stage"])))
    total = sum(count(r.get("leads")) for r in rows)
    columns = (Column("Stage"), Column("Leads", True), Column("Share", True),
               Column("Dormant", True, "No touch for the dormancy period"),
               Column("In pool", True, "Waiting in a team pool without an owner"))
    body = [[stage_cell(str(r["stage"])), fmt_int(r.get("leads")),
             fmt_pct(ratio(count(r.get("leads")), total)), fmt_int(r.get("dormant")),
             fmt_int(r.get("in_pool"))] for r in ordered]
    footer = ["Total", fmt_int(total), fmt_pct(100.0 if total else None),
              fmt_int(sum(count(r.get("dormant")) for r in rows)),
              fmt_int(sum(count(r.get("in_pool")) for r in rows))]
    return table(columns, body, "No leads yet.", footer=footer)


# ---------------------------------------------------------------- page


CSS = """
:root { --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --bg: #f8fafc; --card: #fff;
        --accent: #2563eb; --zebra: #f1f5f9; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 14px/1.5 FONT;
       -webkit-font-smoothing: antialiased; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 48px; }
header.top { display: flex; flex-wrap: wrap; align-items: flex-end; justify-content: space-between;
             gap: 12px; border-bottom: 1px solid var(--line); padding-bottom: 16px; }
h1 { font-size: 26px; line-height: 1.2; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 17px; margin: 0 0 2px; }
.sub { color: var(--muted); margin: 0; }
.facts { display: flex; gap: 18px; margin: 0; color: var(--muted); font-size: 13px; }
.facts dt { text-transform: uppercase; letter-spacing: .05em; font-size: 11px; }
.facts dd { margin: 0; color: var(--ink); font-weight: 600; font-variant-numeric: tabular-nums; }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px;
        margin: 20px 0; }
.kpi { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
       padding: 12px 14px; }
.kpi .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
              letter-spacing: .05em; }
.kpi .value { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums;
              white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.kpi .note { color: var(--muted); font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
.grid.tables { grid-template-columns: minmax(0, 5fr) minmax(0, 7fr); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 16px 18px; margin-top: 16px; min-width: 0; }
.grid .card { margin-top: 0; }
.grid + .card, .card + .grid { margin-top: 16px; }
.card > .sub { font-size: 13px; margin-bottom: 10px; }
svg.chart { display: block; width: 100%; height: auto; max-width: 100%; }
svg.chart text { font-family: FONT; fill: var(--ink); font-size: 12px; }
svg.chart .tick, svg.chart .axis-title { fill: var(--muted); font-size: 11px; }
svg.chart .cat { font-weight: 600; font-size: 12.5px; }
svg.chart .value { font-weight: 600; }
svg.chart .value-in { fill: #fff; font-weight: 600; }
svg.chart .value-small { font-size: 10.5px; fill: #334155; }
svg.chart .conv { font-weight: 600; fill: #334155; }
svg.chart .muted { fill: var(--muted); font-weight: 400; }
svg.chart .legend-label { font-size: 12px; fill: #334155; }
svg.chart .grid { stroke: var(--line); stroke-width: 1; }
svg.chart .axis { stroke: #94a3b8; stroke-width: 1; }
svg.chart .panel { fill: #f8fafc; }
svg.chart .frame { fill: #f8fafc; stroke: var(--line); stroke-dasharray: 4 4; }
svg.chart .no-data { fill: var(--muted); font-size: 14px; }
svg.chart rect.bar { shape-rendering: crispEdges; }
svg.chart rect.bar:hover { opacity: .8; }
.table-wrap { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-size: 13px;
        font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 12px;
          padding-top: 6px; }
th, td { padding: 6px 9px; border-bottom: 1px solid var(--line); text-align: left;
         white-space: nowrap; }
thead th { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted);
           border-bottom: 2px solid var(--line); }
th[title] { cursor: help; text-decoration: underline dotted; text-underline-offset: 3px; }
tbody tr:nth-child(even) { background: var(--zebra); }
tbody tr:hover { background: #e0e7ff; }
tfoot td { font-weight: 650; border-top: 2px solid var(--line); border-bottom: 0; }
.num { text-align: right; }
td.no-data { text-align: center; color: var(--muted); padding: 18px; }
.muted { color: var(--muted); }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 7px; }
footer { color: var(--muted); font-size: 12px; margin-top: 28px; }
@media (max-width: 860px) { .grid, .grid.tables { grid-template-columns: 1fr; } }
@media print { html { background: #fff; } .card, .kpi { break-inside: avoid; } }
""".replace("FONT", FONT)


def card(title: str, note: str, body: str, extra_class: str = "") -> str:
    cls = f"card {extra_class}".strip()
    return (f'<section class="{cls}"><h2>{esc(title)}</h2><p class="sub">{esc(note)}</p>'
            f"{body}</section>")


def kpi(label: str, value: str, note: str = "") -> str:
    extra = f'<div class="note">{esc(note)}</div>' if note else ""
    return (f'<div class="kpi"><div class="label">{esc(label)}</div>'
            f'<div class="value" title="{esc(value)}">{esc(value)}</div>{extra}</div>')


def _won_by_currency(db: ProjectionDB) -> tuple[str, str]:
    """The won amount KPI: (value, note); one figure per currency, never summed across."""
    rows = db.query("SELECT deal_currency, SUM(deal_amount) AS amount FROM lead_state "
                    "WHERE merged_into IS NULL AND stage = 'customer' "
                    "AND deal_amount IS NOT NULL GROUP BY deal_currency ORDER BY deal_currency")
    if not rows:
        return "—", "deals won by customers"
    if len(rows) == 1:
        currency = rows[0]["deal_currency"] or "amount"
        return fmt_compact(num(rows[0]["amount"]) or 0.0), f"{currency}, deals won"
    return (" + ".join(f"{fmt_compact(num(r['amount']) or 0.0)} {r['deal_currency'] or '?'}"
                       for r in rows), "deals won, per currency")


def render_report(db: ProjectionDB, title: str = "leadflow report") -> str:
    """The whole report as one HTML document (deterministic for the same read models)."""
    lo, hi = period(db)
    counts = db.query("SELECT COUNT(*) AS n, "
                      "SUM(CASE WHEN merged_into IS NULL THEN 0 ELSE 1 END) AS merged "
                      "FROM lead_state")
    total = count(counts[0]["n"]) if counts else 0
    merged = count(counts[0]["merged"]) if counts else 0
    leads = total - merged
    tracking = db.query("SELECT position FROM projection_tracking WHERE name = 'analytics'")
    position = count(tracking[0]["position"]) if tracking else 0

    result = funnel(db)
    cohort_rows = cohorts(db)
    velocity_rows = velocity(db)
    weeks, entries = weekly_entries(db)
    source_rows = by_source(db)
    owner_rows = by_owner(db)
    status_rows = by_status(db)

    stage_n = {s.stage: s.count for s in result.stages}
    lost = sum(count(r.get("leads")) for r in status_rows if r["stage"] == "lost")
    customers = stage_n.get("customer", 0)
    period_text = (f"{fmt_day(lo)} – {fmt_day(hi)} (UTC)" if lo and hi
                   else "no events projected yet")
    merged_note = f" (+{merged:,} merged into other leads)" if merged else ""

    header = (
        '<header class="top"><div>'
        f"<h1>{esc(title)}</h1>"
        f'<p class="sub">Lead lifecycle analytics · period covered: '
        f"<strong>{esc(period_text)}</strong></p></div>"
        '<dl class="facts">'
        f"<div><dt>Leads</dt><dd>{leads:,}{esc(merged_note)}</dd></div>"
        f"<div><dt>Projection position</dt><dd>{position:,}</dd></div>"
        "</dl></header>"
    )
    kpis = '<section class="kpis" aria-label="Key figures">' + "".join((
        kpi("Leads", f"{leads:,}", "excluding merged duplicates"),
        kpi("Reached MQL", f"{stage_n.get('mql', 0):,}",
            f"{fmt_pct(ratio(stage_n.get('mql', 0), leads))} of leads"),
        kpi("Reached SQL", f"{stage_n.get('sql', 0):,}",
            f"{fmt_pct(ratio(stage_n.get('sql', 0), leads))} of leads"),
        kpi("Opportunities", f"{stage_n.get('opportunity', 0):,}",
            f"{fmt_pct(ratio(stage_n.get('opportunity', 0), leads))} of leads"),
        kpi("Customers", f"{customers:,}",
            f"win rate {fmt_pct(ratio(customers, customers + lost))}"),
        kpi("Won amount", *_won_by_currency(db)),
    )) + "</section>"

    sources_html, campaigns_html = source_tables(source_rows)
    body = "".join((
        '<div class="grid">',
        card("Funnel", "Leads that reached each stage (or passed it), and conversion from the "
                       "previous stage.", funnel_chart(result)),
        card("Velocity", "Days between stages for leads that made the step: median and "
                         "90th percentile.", velocity_chart(velocity_rows)),
        "</div>",
        card("Conversion by cohort month", "Leads grouped by the month they were created; "
             "each bar is a stage-to-stage conversion. Recent cohorts are still maturing.",
             cohort_chart(cohort_rows)),
        card("Stage entries per week", "Transitions into each stage per week (each panel has "
             "its own scale; first and last weeks may be partial).",
             entries_chart(weeks, entries)),
        '<div class="grid tables">',
        card("By status", "Where the leads are now.", status_table(status_rows)),
        card("By owner", "Current owner of each lead; win rate = customers / (customers + lost).",
             owner_table(owner_rows)),
        "</div>",
        card("By source", "Every lead counted once under its first-touch source; stage columns "
             "count leads that reached the stage.", sources_html),
        card("By source and campaign", "The same, per campaign.", campaigns_html),
    ))
    footer = ("<footer>Generated by leadflow from the analyst read models (lead_state, "
              "funnel_daily and the views over them). Leads merged into another lead are "
              "counted once, as the survivor. Times are UTC.</footer>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{header}{kpis}{body}{footer}</main></body></html>\n"
    )
