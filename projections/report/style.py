"""The report's look: stage colours and labels, the page's CSS, and how values are written
(numbers, percentages, days, months; ``esc`` for every text that comes from data)."""

from __future__ import annotations

import html
from datetime import date, datetime
from decimal import Decimal
from typing import Any

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
#: The named scoring models' colours, in the models' order (repeating past eight).
MODEL_COLORS = ("#8b5cf6", "#ec4899", "#14b8a6", "#f97316", "#84cc16", "#06b6d4", "#eab308",
                "#ef4444")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FONT = ('system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
        '"Noto Sans", "Liberation Sans", sans-serif')

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


def fmt_range(low: Any, high: Any, unit: str = "") -> str:
    """One value, or "low–high" when they differ; "—" when unknown."""
    a, b = num(low), num(high)
    if a is None or b is None:
        return "—"
    text = f"{a:g}" if a == b else f"{a:g}–{b:g}"
    return text + unit


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
