"""Read-model tables and analyst views, for PostgreSQL and SQLite.

Tables are created with a name suffix so ``rebuild`` can fill fresh copies and swap them in.
Views are dropped and recreated around a swap (PostgreSQL binds views to table identities).
See ``docs/analytics.md`` for every column and example queries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from leadflow.projections.db import Dialect

TABLES = ("lead_state", "lead_personal", "stage_transitions", "funnel_daily", "score_ledger",
          "owner_load", "account_state", "lead_model_state")
#: Tables holding a person's personal data (identities, job title): granted to an analyst role
#: only with ``db grant-analyst --with-personal-data``; every other read model is keyed by
#: lead id and holds none (free text that may carry an email or phone is masked).
PERSONAL_TABLES = ("lead_personal",)
#: The columns of ``lead_personal`` besides ``lead_id``; ``lead_state`` has none of them.
PERSONAL_COLUMNS = ("primary_key", "identities", "title")
VIEWS = ("leads_by_status", "leads_by_source", "leads_by_owner", "lead_funnel_facts",
         "funnel_by_cohort", "funnel_by_cohort_dimension", "lead_step_durations", "velocity",
         "scores_now", "score_ledger_resolved", "scores_now_by_model", "models_by_source")
FUNNEL = ("new", "mql", "sql", "opportunity", "customer")
# Numeric columns fed straight from stored event values. They were NOT NULL before stored
# values could be non-finite or out of range (which are written as NULL); ``setup`` relaxes
# tables created before then.
RELAXED = {"lead_state": ("fit", "engagement_value", "touchpoints"),
           "score_ledger": ("points",),
           "lead_personal": ("primary_key",)}  # NULL once the person is forgotten
# Columns added to tables after their first release, each the table's last column (so a
# table upgraded in place with ADD COLUMN has the column order of a fresh one: rows are
# written by position). ``setup`` adds the missing ones; a table made before has NULL there,
# which is what the column says of those rows (``score_ledger.model``: the primary model's).
ADDED = {"score_ledger": ("model",)}


def _types(dialect: Dialect) -> dict[str, str]:
    if dialect == "postgres":
        return {"ts": "TIMESTAMPTZ", "real": "DOUBLE PRECISION", "bool": "BOOLEAN",
                "big": "BIGINT", "day": "DATE"}
    return {"ts": "TEXT", "real": "REAL", "bool": "INTEGER", "big": "INTEGER", "day": "TEXT"}


def sql_type(dialect: Dialect, kind: str) -> str:
    """The SQL type of a column kind (``Column.kind``) in ``dialect``, as the DDL writes it."""
    return {"text": "TEXT", "int": "INTEGER", **_types(dialect)}[kind]


def tables_ddl(dialect: Dialect, suffix: str = "") -> str:
    t = _types(dialect)
    s = suffix
    return f"""
CREATE TABLE IF NOT EXISTS lead_state{s} (
    lead_id TEXT PRIMARY KEY,
    created_at {t['ts']} NOT NULL,
    source TEXT, campaign TEXT, landing_page TEXT,
    country TEXT, company TEXT, industry TEXT, employees INTEGER,
    segment TEXT,
    account_id TEXT,
    stage TEXT NOT NULL, stage_at {t['ts']} NOT NULL, stage_reason TEXT,
    owner TEXT, team TEXT, in_pool {t['bool']} NOT NULL, deal_owner TEXT,
    contacted_at {t['ts']},
    fit {t['real']}, fit_awards TEXT NOT NULL,
    engagement_value {t['real']}, engagement_as_of {t['ts']},
    half_life_days {t['real']} NOT NULL,
    last_touch_at {t['ts']}, touchpoints INTEGER, dormant {t['bool']} NOT NULL,
    reached_mql_at {t['ts']}, reached_sql_at {t['ts']},
    reached_opportunity_at {t['ts']}, reached_customer_at {t['ts']},
    disqualified_at {t['ts']}, disqualified_reason TEXT,
    recycled_at {t['ts']}, recycled_reason TEXT,
    lost_at {t['ts']}, lost_reason TEXT,
    deal_id TEXT, deal_amount {t['real']}, deal_currency TEXT,
    merged_into TEXT
)
;
CREATE INDEX IF NOT EXISTS lead_state{s}_stage ON lead_state{s} (stage)
;
CREATE INDEX IF NOT EXISTS lead_state{s}_owner ON lead_state{s} (owner)
;
CREATE INDEX IF NOT EXISTS lead_state{s}_created ON lead_state{s} (created_at)
;
CREATE TABLE IF NOT EXISTS lead_personal{s} (
    lead_id TEXT PRIMARY KEY,
    primary_key TEXT,
    identities TEXT NOT NULL,
    title TEXT
)
;
CREATE INDEX IF NOT EXISTS lead_personal{s}_primary_key ON lead_personal{s} (primary_key)
;
CREATE TABLE IF NOT EXISTS stage_transitions{s} (
    notification_id {t['big']} NOT NULL,
    seq INTEGER NOT NULL,
    lead_id TEXT NOT NULL,
    from_stage TEXT, to_stage TEXT NOT NULL,
    occurred_at {t['ts']} NOT NULL,
    owner TEXT, source TEXT, campaign TEXT, actor TEXT, reason TEXT,
    PRIMARY KEY (notification_id, seq)
)
;
CREATE INDEX IF NOT EXISTS stage_transitions{s}_lead ON stage_transitions{s} (lead_id)
;
CREATE INDEX IF NOT EXISTS stage_transitions{s}_time ON stage_transitions{s} (occurred_at)
;
CREATE TABLE IF NOT EXISTS funnel_daily{s} (
    day {t['day']} NOT NULL, stage TEXT NOT NULL, source TEXT NOT NULL, campaign TEXT NOT NULL,
    entries INTEGER NOT NULL,
    PRIMARY KEY (day, stage, source, campaign)
)
;
CREATE TABLE IF NOT EXISTS score_ledger{s} (
    notification_id {t['big']} NOT NULL, seq INTEGER NOT NULL,
    lead_id TEXT NOT NULL, event_id TEXT NOT NULL, kind TEXT NOT NULL,
    rule TEXT NOT NULL, rules_version TEXT NOT NULL, points {t['real']},
    occurred_at {t['ts']} NOT NULL, expires_at {t['ts']},
    model TEXT,
    PRIMARY KEY (notification_id, seq)
)
;
CREATE INDEX IF NOT EXISTS score_ledger{s}_lead ON score_ledger{s} (lead_id)
;
CREATE TABLE IF NOT EXISTS lead_model_state{s} (
    lead_id TEXT NOT NULL, model TEXT NOT NULL,
    fit {t['real']}, fit_awards TEXT NOT NULL,
    engagement_value {t['real']}, engagement_as_of {t['ts']},
    half_life_days {t['real']}, threshold {t['real']},
    above {t['bool']} NOT NULL, crossed_at {t['ts']},
    PRIMARY KEY (lead_id, model)
)
;
CREATE TABLE IF NOT EXISTS owner_load{s} (
    owner TEXT NOT NULL, stage TEXT NOT NULL, open_leads INTEGER NOT NULL,
    PRIMARY KEY (owner, stage)
)
;
CREATE TABLE IF NOT EXISTS account_state{s} (
    account_id TEXT PRIMARY KEY, account_key TEXT NOT NULL, name TEXT,
    engagements INTEGER NOT NULL, surges INTEGER NOT NULL,
    last_engaged_at {t['ts']}, last_surge_at {t['ts']}, surge_window_days {t['real']}
)
;
CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY, position {t['big']} NOT NULL
)
"""


@dataclass(frozen=True)
class Column:
    """One read-model column: its name, its kind (the PostgreSQL type, which is the
    narrower of the two dialects) and whether it may hold NULL."""

    name: str
    kind: str  # text, ts, real, int, big, bool, day
    nullable: bool


_KINDS = {"TEXT": "text", "TIMESTAMPTZ": "ts", "DOUBLE PRECISION": "real", "INTEGER": "int",
          "BIGINT": "big", "BOOLEAN": "bool", "DATE": "day"}
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", re.S)
_TABLE_KEY = re.compile(r"PRIMARY KEY \([^)]*\)")


@cache
def columns() -> dict[str, tuple[Column, ...]]:
    """Every table's columns in order, read from the PostgreSQL DDL above (one source)."""
    out: dict[str, tuple[Column, ...]] = {}
    for table, body in _CREATE.findall(tables_ddl("postgres")):
        cols = []
        definitions = _TABLE_KEY.sub("", body)  # without the constraint "PRIMARY KEY (a, b)"
        for part in (p.strip() for p in definitions.replace("\n", " ").split(",")):
            if not part:
                continue
            name, _, rest = part.partition(" ")
            decl = rest.replace("PRIMARY KEY", "").replace("NOT NULL", "").strip()
            cols.append(Column(name, _KINDS[decl],
                               "NOT NULL" not in rest and "PRIMARY KEY" not in rest))
        out[table] = tuple(cols)
    return out


def _days_between(dialect: Dialect, a: str, b: str) -> str:
    if dialect == "postgres":
        return f"(EXTRACT(EPOCH FROM ({b} - {a})) / 86400.0)"
    return f"(julianday({b}) - julianday({a}))"


def _month(dialect: Dialect, col: str) -> str:
    if dialect == "postgres":
        return f"to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM')"
    return f"strftime('%Y-%m', {col})"


def _seconds_since(dialect: Dialect, col: str) -> str:
    if dialect == "postgres":
        return f"EXTRACT(EPOCH FROM (now() - {col}))"
    return f"((julianday('now') - julianday({col})) * 86400.0)"


def _now(dialect: Dialect) -> str:
    return "now()" if dialect == "postgres" else "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"


def views_ddl(dialect: Dialect) -> str:
    live = "merged_into IS NULL"
    steps = [("new", "mql", "created_at", "reached_mql_at"),
             ("mql", "sql", "reached_mql_at", "reached_sql_at"),
             ("sql", "opportunity", "reached_sql_at", "reached_opportunity_at"),
             ("opportunity", "customer", "reached_opportunity_at", "reached_customer_at"),
             ("new", "customer", "created_at", "reached_customer_at")]
    durations = "\nUNION ALL\n".join(
        f"SELECT lead_id, '{a}->{b}' AS step, {i} AS step_order, "
        f"{_days_between(dialect, ca, cb)} AS days, source, campaign, owner "
        f"FROM lead_state WHERE {live} AND {ca} IS NOT NULL AND {cb} IS NOT NULL"
        for i, (a, b, ca, cb) in enumerate(steps)
    )

    def pct(num: str, den: str) -> str:
        return f"CASE WHEN {den} > 0 THEN ROUND(100.0 * {num} / {den}, 1) END"

    def cohort_columns() -> str:
        return (
            "COUNT(*) AS leads, COUNT(reached_mql_at) AS mql, COUNT(reached_sql_at) AS sql, "
            "COUNT(reached_opportunity_at) AS opportunity, "
            "COUNT(reached_customer_at) AS customer, "
            f"{pct('COUNT(reached_mql_at)', 'COUNT(*)')} AS new_to_mql_pct, "
            f"{pct('COUNT(reached_sql_at)', 'COUNT(reached_mql_at)')} AS mql_to_sql_pct, "
            f"{pct('COUNT(reached_opportunity_at)', 'COUNT(reached_sql_at)')} "
            "AS sql_to_opportunity_pct, "
            f"{pct('COUNT(reached_customer_at)', 'COUNT(reached_opportunity_at)')} "
            "AS opportunity_to_customer_pct"
        )

    by_dimension = "\nUNION ALL\n".join(
        f"SELECT cohort_month, '{dim}' AS dimension, {dim} AS value, {cohort_columns()} "
        f"FROM lead_funnel_facts GROUP BY cohort_month, {dim}"
        for dim in ("source", "campaign", "owner", "segment")
    )

    t = _types(dialect)

    def engagement_now(alias: str, ledger: str) -> str:
        """A lead's engagement at the database's now in one model (``ledger``: which of its
        ledger rows are that model's): the decaying value, plus its unexpired awards. A
        named model's row without engagement yet (its fit only) has none to decay."""
        as_of = f"{alias}.engagement_as_of"
        decaying = (f"{alias}.engagement_value * POWER(2.0, -{_seconds_since(dialect, as_of)}"
                    f" / ({alias}.half_life_days * 86400.0))")
        if alias != "l":
            decaying = f"CASE WHEN {as_of} IS NULL THEN 0.0 ELSE {decaying} END"
        return (f"{decaying} + COALESCE((SELECT SUM(e.points) FROM score_ledger e"
                f" WHERE e.lead_id = {alias}.lead_id AND {ledger} AND e.expires_at IS NOT NULL"
                f" AND e.expires_at > {_now(dialect)}), 0)")

    return f"""
CREATE VIEW leads_by_status AS
SELECT stage, COUNT(*) AS leads,
       SUM(CASE WHEN dormant THEN 1 ELSE 0 END) AS dormant,
       SUM(CASE WHEN owner IS NULL AND in_pool THEN 1 ELSE 0 END) AS in_pool
FROM lead_state WHERE {live} GROUP BY stage
;
CREATE VIEW leads_by_source AS
SELECT COALESCE(source, '(none)') AS source, COALESCE(campaign, '(none)') AS campaign,
       COUNT(*) AS leads,
       COUNT(reached_mql_at) AS mql, COUNT(reached_sql_at) AS sql,
       COUNT(reached_opportunity_at) AS opportunity, COUNT(reached_customer_at) AS customer,
       SUM(CASE WHEN stage = 'disqualified' THEN 1 ELSE 0 END) AS disqualified,
       SUM(CASE WHEN stage = 'lost' THEN 1 ELSE 0 END) AS lost
FROM lead_state WHERE {live} GROUP BY COALESCE(source, '(none)'), COALESCE(campaign, '(none)')
;
CREATE VIEW leads_by_owner AS
SELECT COALESCE(owner, CASE WHEN in_pool THEN '(pool)' ELSE '(unassigned)' END) AS owner,
       COUNT(*) AS leads,
       SUM(CASE WHEN stage IN ('new', 'mql', 'sql', 'opportunity') THEN 1 ELSE 0 END)
           AS open_leads,
       SUM(CASE WHEN stage = 'customer' THEN 1 ELSE 0 END) AS customers,
       SUM(CASE WHEN stage IN ('customer', 'lost', 'disqualified') THEN 1 ELSE 0 END) AS closed,
       {pct("SUM(CASE WHEN stage = 'customer' THEN 1 ELSE 0 END)",
            "SUM(CASE WHEN stage IN ('customer', 'lost') THEN 1 ELSE 0 END)")} AS win_rate_pct,
       SUM(CASE WHEN stage = 'customer' THEN deal_amount ELSE 0 END) AS won_amount
FROM lead_state WHERE {live}
GROUP BY COALESCE(owner, CASE WHEN in_pool THEN '(pool)' ELSE '(unassigned)' END)
;
CREATE VIEW lead_funnel_facts AS
SELECT lead_id, {_month(dialect, 'created_at')} AS cohort_month, created_at,
       COALESCE(source, '(none)') AS source, COALESCE(campaign, '(none)') AS campaign,
       COALESCE(owner, '(none)') AS owner, COALESCE(segment, '(none)') AS segment,
       stage, reached_mql_at, reached_sql_at, reached_opportunity_at, reached_customer_at
FROM lead_state WHERE {live}
;
CREATE VIEW funnel_by_cohort AS
SELECT cohort_month, COUNT(*) AS leads,
       COUNT(reached_mql_at) AS mql, COUNT(reached_sql_at) AS sql,
       COUNT(reached_opportunity_at) AS opportunity, COUNT(reached_customer_at) AS customer,
       {pct("COUNT(reached_mql_at)", "COUNT(*)")} AS new_to_mql_pct,
       {pct("COUNT(reached_sql_at)", "COUNT(reached_mql_at)")} AS mql_to_sql_pct,
       {pct("COUNT(reached_opportunity_at)", "COUNT(reached_sql_at)")} AS sql_to_opportunity_pct,
       {pct("COUNT(reached_customer_at)", "COUNT(reached_opportunity_at)")}
           AS opportunity_to_customer_pct
FROM lead_funnel_facts GROUP BY cohort_month
;
CREATE VIEW funnel_by_cohort_dimension AS
{by_dimension}
;
CREATE VIEW lead_step_durations AS
{durations}
;
CREATE VIEW velocity AS
WITH ranked AS (
    SELECT step, step_order, days,
           ROW_NUMBER() OVER (PARTITION BY step ORDER BY days) AS rn,
           COUNT(*) OVER (PARTITION BY step) AS n
    FROM lead_step_durations
)
SELECT step, MIN(step_order) AS step_order, MAX(n) AS leads,
       AVG(CASE WHEN rn IN ((n + 1) / 2, (n + 2) / 2) THEN days END) AS median_days,
       MIN(CASE WHEN rn * 10 >= n * 9 THEN days END) AS p90_days,
       AVG(days) AS mean_days
FROM ranked GROUP BY step
;
CREATE VIEW scores_now AS
SELECT l.lead_id, l.stage, l.owner, l.fit,
       {engagement_now('l', 'e.model IS NULL')} AS engagement_now,
       l.fit + {engagement_now('l', 'e.model IS NULL')} AS score_now
FROM lead_state l WHERE l.{live} AND l.engagement_as_of IS NOT NULL
;
CREATE VIEW score_ledger_resolved AS
SELECT COALESCE(l.merged_into, e.lead_id) AS lead_id, e.lead_id AS recorded_on, e.event_id,
       e.kind, e.rule, e.rules_version, e.points, e.occurred_at, e.expires_at, e.model
FROM score_ledger e LEFT JOIN lead_state l ON l.lead_id = e.lead_id
-- A survivor records the fit of the merged profile itself (each model's too), and each named
-- model's points the merge brought (a backfill, the merged lead's records too): the absorbed
-- lead's own rows of those would count twice.
WHERE NOT (l.merged_into IS NOT NULL AND (e.kind = 'fit' OR e.model IS NOT NULL))
;
CREATE VIEW scores_now_by_model AS
SELECT s.lead_id, CAST(NULL AS TEXT) AS model, s.stage, s.owner, l.source, s.fit,
       s.engagement_now, s.score_now,
       CAST(NULL AS {t['real']}) AS threshold, CAST(NULL AS {t['bool']}) AS above
FROM scores_now s JOIN lead_state l ON l.lead_id = s.lead_id
UNION ALL
SELECT m.lead_id, m.model, l.stage, l.owner, l.source, m.fit,
       {engagement_now('m', 'e.model = m.model')} AS engagement_now,
       m.fit + {engagement_now('m', 'e.model = m.model')} AS score_now,
       m.threshold, m.above
FROM lead_model_state m JOIN lead_state l ON l.lead_id = m.lead_id WHERE l.{live}
;
CREATE VIEW models_by_source AS
SELECT COALESCE(l.source, '(none)') AS source, m.model, COUNT(*) AS scored_leads,
       SUM(CASE WHEN m.above THEN 1 ELSE 0 END) AS above_threshold
FROM lead_model_state m JOIN lead_state l ON l.lead_id = m.lead_id WHERE l.{live}
GROUP BY COALESCE(l.source, '(none)'), m.model
"""


def drop_views_ddl() -> str:
    return "\n;\n".join(f"DROP VIEW IF EXISTS {v}" for v in reversed(VIEWS))
