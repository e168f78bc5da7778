"""Analyst queries over the read models: funnel, velocity, reports by source and owner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from leadflow.projections.db import ProjectionDB, from_db
from leadflow.projections.schema import FUNNEL

GroupBy = Literal["source", "campaign", "owner", "segment"]
_REACHED = {"new": "created_at", "mql": "reached_mql_at", "sql": "reached_sql_at",
            "opportunity": "reached_opportunity_at", "customer": "reached_customer_at"}


@dataclass(frozen=True)
class StageCount:
    stage: str
    count: int
    conversion_from_previous: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "count": self.count,
                "conversion_from_previous": self.conversion_from_previous}


@dataclass(frozen=True)
class Funnel:
    start: date | None
    end: date | None
    by: GroupBy | None
    stages: tuple[StageCount, ...]
    groups: tuple[tuple[str, tuple[StageCount, ...]], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "stages": [s.as_dict() for s in self.stages],
        }
        if self.by:
            out["by"] = self.by
            out["groups"] = [{"group": g, "stages": [s.as_dict() for s in stages]}
                             for g, stages in self.groups]
        return out


def _stages(counts: dict[str, int]) -> tuple[StageCount, ...]:
    out = []
    previous: int | None = None
    for stage in FUNNEL:
        n = int(counts.get(stage) or 0)
        conversion = None if not previous else round(n / previous, 4)
        out.append(StageCount(stage, n, conversion))
        previous = n
    return tuple(out)


def funnel(db: ProjectionDB, start: date | None = None, end: date | None = None,
           by: GroupBy | None = None) -> Funnel:
    """For each stage, the leads that reached it (or passed it) within [start, end].

    A lead that moved on still counts for every stage it passed: reaching SQL directly
    (an auto-qualified demo request) counts as reaching MQL at the same moment.
    """
    low = datetime.combine(start, datetime.min.time(), UTC) if start else None
    high = datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC) if end else None
    params: list[Any] = []
    columns = []
    for stage, col in _REACHED.items():
        cond = [f"{col} IS NOT NULL"]
        if low is not None:
            cond.append(f"{col} >= %s")
            params.append(low)
        if high is not None:
            cond.append(f"{col} < %s")
            params.append(high)
        columns.append(f"SUM(CASE WHEN {' AND '.join(cond)} THEN 1 ELSE 0 END) AS {stage}")
    if by:
        statement = (f"SELECT {by} AS grp, {', '.join(columns)} FROM lead_funnel_facts "
                     f"GROUP BY {by} ORDER BY {by}")
    else:
        statement = f"SELECT 'all' AS grp, {', '.join(columns)} FROM lead_funnel_facts"
    rows = db.query(statement, params)
    totals = {stage: sum(int(r[stage] or 0) for r in rows) for stage in FUNNEL}
    groups = tuple((str(r["grp"]), _stages(r)) for r in rows) if by else ()
    return Funnel(start, end, by, _stages(totals), groups)


def velocity(db: ProjectionDB) -> list[dict[str, Any]]:
    """Median and p90 days between consecutive stages (and new -> customer)."""
    return db.query("SELECT step, leads, median_days, p90_days, mean_days FROM velocity "
                    "ORDER BY step_order")


def by_source(db: ProjectionDB) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM leads_by_source ORDER BY leads DESC, source, campaign")


def by_owner(db: ProjectionDB) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM leads_by_owner ORDER BY owner")


def by_status(db: ProjectionDB) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM leads_by_status ORDER BY stage")


def cohorts(db: ProjectionDB) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM funnel_by_cohort ORDER BY cohort_month")


def period(db: ProjectionDB) -> tuple[datetime | None, datetime | None]:
    rows = db.query("SELECT MIN(created_at) AS lo, MAX(stage_at) AS hi FROM lead_state")
    return (from_db(rows[0]["lo"]), from_db(rows[0]["hi"])) if rows else (None, None)


def models_overview(db: ProjectionDB) -> list[dict[str, Any]]:
    """Each named model (``[models.<id>]``) over the live leads: how many it scored, how many
    are above its threshold (its latest recorded crossing), its thresholds and half-lives
    (one each, unless the rules changed between the leads' rows)."""
    return db.query(
        "SELECT m.model, COUNT(*) AS scored_leads, "
        "SUM(CASE WHEN m.above THEN 1 ELSE 0 END) AS above_threshold, "
        "MIN(m.threshold) AS threshold_min, MAX(m.threshold) AS threshold_max, "
        "MIN(m.half_life_days) AS half_life_min, MAX(m.half_life_days) AS half_life_max "
        "FROM lead_model_state m JOIN lead_state l ON l.lead_id = m.lead_id "
        "WHERE l.merged_into IS NULL GROUP BY m.model ORDER BY m.model")


def models_by_source(db: ProjectionDB) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM models_by_source ORDER BY source, model")
