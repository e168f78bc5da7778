"""The report page: ``render_report`` assembles the HTML document from the read models
(header, key figures, chart cards, the tables by status, owner, source and campaign, and,
when the rules have named scoring models, the models side by side)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from leadflow.projections.db import ProjectionDB
from leadflow.projections.queries import (
    by_owner,
    by_source,
    by_status,
    cohorts,
    funnel,
    models_by_source,
    models_overview,
    period,
    velocity,
)
from leadflow.projections.report.charts import (
    Series,
    cohort_chart,
    entries_chart,
    funnel_chart,
    models_chart,
    velocity_chart,
    weekly_entries,
)
from leadflow.projections.report.style import (
    CSS,
    MODEL_COLORS,
    STAGE_COLORS,
    STAGE_LABELS,
    STAGE_ORDER,
    count,
    esc,
    fmt_compact,
    fmt_day,
    fmt_int,
    fmt_money,
    fmt_pct,
    fmt_range,
    num,
    ratio,
)

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


def models_section(db: ProjectionDB, source_rows: Sequence[dict[str, Any]]) -> str:
    """The named scoring models side by side: a table of the models, and per first-touch
    source the leads above each model's threshold beside the primary model's MQLs (a chart
    of the largest sources and a table of all). Empty when no lead has a model's score."""
    overview = models_overview(db)
    if not overview:
        return ""
    models = [str(r["model"]) for r in overview]
    per_source: dict[str, dict[str, int]] = {}
    for r in source_rows:
        totals = per_source.setdefault(str(r["source"]), {"leads": 0, "mql": 0})
        totals["leads"] += count(r.get("leads"))
        totals["mql"] += count(r.get("mql"))
    above: dict[tuple[str, str], int] = {
        (str(r["source"]), str(r["model"])): count(r.get("above_threshold"))
        for r in models_by_source(db)}
    leads = sum(t["leads"] for t in per_source.values())
    summary = table(
        (Column("Model"), Column("Threshold", True), Column("Half-life", True, "days"),
         Column("Leads scored", True, "Live leads the model has given points"),
         Column("Above threshold", True, "Live leads above the threshold at their latest "
                                         "recorded crossing"),
         Column("Share of leads", True, "Above threshold / all live leads")),
        ([esc(r["model"]), esc(fmt_range(r.get("threshold_min"), r.get("threshold_max"))),
          esc(fmt_range(r.get("half_life_min"), r.get("half_life_max"), " d")),
          fmt_int(r.get("scored_leads")), fmt_int(r.get("above_threshold")),
          fmt_pct(ratio(count(r.get("above_threshold")), leads))] for r in overview),
        "No model has scored a lead.")
    ordered = sorted(per_source.items(), key=lambda kv: (-kv[1]["leads"], kv[0]))
    columns = (Column("Source"), Column("Leads", True),
               Column("Reached MQL", True, "The primary model (the one that moves the "
                                           "lifecycle): leads that reached MQL"),
               *(Column(f"{m} ≥ threshold", True, f"Leads above {m}'s threshold")
                 for m in models))

    def cells(source: str, totals: dict[str, int]) -> list[str]:
        return [esc(source), fmt_int(totals["leads"]), fmt_int(totals["mql"]),
                *(fmt_int(above.get((source, m), 0)) for m in models)]

    grand = ["Total", fmt_int(leads), fmt_int(sum(t["mql"] for t in per_source.values())),
             *(fmt_int(sum(n for (_, m), n in above.items() if m == model))
               for model in models)]
    by_source = table(columns, (cells(s, t) for s, t in ordered), "No leads yet.",
                      footer=grand)
    series = [Series("Reached MQL (primary)", STAGE_COLORS["mql"]),
              *(Series(f"{m} above threshold", MODEL_COLORS[i % len(MODEL_COLORS)])
                for i, m in enumerate(models))]
    groups = [(s, [t["mql"], *(above.get((s, m), 0) for m in models)])
              for s, t in ordered[:CHART_SOURCES]]
    note = ("Named models ([models.<id>] in the rules) beside the primary model, which alone "
            "moves the lifecycle ([scoring], unless [lifecycle] primary_model names another; "
            "[scoring] is then the model 'scoring'). A lead counts as above a model's threshold "
            "after its latest recorded crossing up (decay below it is recorded at its exact "
            "time by the clock).")
    return card("Scoring models side by side", note, "".join((
        summary,
        models_chart(series, groups),
        by_source)))


#: Sources drawn in the models chart (the largest; the table has them all).
CHART_SOURCES = 10

# ---------------------------------------------------------------- page


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
        models_section(db, source_rows),
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
