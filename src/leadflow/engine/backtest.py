"""Rules backtesting: replay each lead's recorded touchpoints under two rule sets.

``run_backtest`` is what `leadflow rescore` computes: for every live lead, when it would
have become MQL under the current rules and under a candidate, compared with what the
recorded history says happened next (SQL, customer). It only reads the store; publishing a
candidate is ``LeadflowApp.publish_rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from eventsourcing.persistence import PersistenceError

from leadflow.domain import STAGES, Lead, scoring
from leadflow.domain.rules import Rules
from leadflow.domain.scoring import Award
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor, stored_lead_ids

log = structlog.get_logger(__name__)

#: Leads whose events are read in one query during a backtest.
PRELOAD = 500


def run_backtest(app: LeadflowApp, candidate: Rules, *, since: datetime | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Backtest ``candidate`` against the app's current rules over every live lead (created
    at or after ``since``, when given); writes nothing.

    The result is ``compare``'s report plus ``unloadable_leads``: leads whose stored events
    cannot be read or loaded are left out and named, never the end of the backtest (only
    the database failing is). ``progress(done, total)`` is called as each lead is taken up.
    """
    auditor = Auditor(app)
    old, new = Backtest(app.rules), Backtest(candidate)
    outcomes: dict[str, set[str]] = {"sql": set(), "customer": set()}
    stages: dict[str, str] = {}
    lead_ids, unreadable = stored_lead_ids(app)
    unloadable = [str(p["lead_id"]) for p in unreadable]
    total = len(lead_ids)
    if progress is not None:
        progress(0, total)
    for done, lead_id in enumerate(lead_ids, 1):
        if progress is not None:
            progress(done, total)
        if (done - 1) % PRELOAD == 0:
            auditor.preload(lead_ids[done - 1:done - 1 + PRELOAD])
        try:
            # Each lead's events are read (in bulk) and decoded once, for its state and its
            # touchpoints alike.
            lead: Any = auditor.replay(auditor.events(lead_id))
            if not isinstance(lead, Lead) or lead.merged_into is not None:
                continue
            if since is not None and lead.created_at < since:
                continue
            touchpoints = auditor.touchpoints(lead_id)
        except PersistenceError:
            raise
        except Exception as exc:  # a damaged lead is left out, not the whole backtest
            unloadable.append(str(lead_id))
            log.warning("lead left out of the backtest: its stored events cannot be "
                        "loaded", lead=str(lead_id), error=f"{type(exc).__name__}: {exc}")
            continue
        key = lead.primary_key
        old.simulate(key, lead.profile, touchpoints)
        new.simulate(key, lead.profile, touchpoints)
        reached = set(lead.first_reached)
        if reached & {"sql", "opportunity", "customer"}:
            outcomes["sql"].add(key)
        if "customer" in reached:
            outcomes["customer"].add(key)
        stages[key] = lead.stage
    result = compare(old, new, outcomes, stages)
    result["unloadable_leads"] = unloadable
    return result


@dataclass
class Backtest:
    """MQL timing and predictive quality of one rule set over recorded touchpoints."""

    rules: Rules
    mql_at: dict[str, datetime | None] = field(default_factory=dict)

    def simulate(self, lead_key: str, profile: dict[str, Any],
                 touchpoints: Sequence[dict[str, Any]]) -> None:
        fit = sum(p for _, p in scoring.fit_awards(self.rules, profile))
        value, as_of = 0.0, None
        expiring: list[Award] = []
        counts: dict[str, int] = {}
        totals: dict[str, float] = {}
        half_life = self.rules.half_life_seconds
        for tp in touchpoints:
            for award in scoring.score_touchpoint(self.rules, tp["type"], tp["context"],
                                                  tp["occurred_at"], tp["event_id"], counts,
                                                  totals):
                counts[award.rule] = counts.get(award.rule, 0) + 1
                totals[award.rule] = totals.get(award.rule, 0.0) + award.points
                if award.expires_at is None:
                    value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                        half_life)
                else:
                    expiring.append(award)
            when = max(tp["occurred_at"], as_of) if as_of else tp["occurred_at"]
            score = fit + scoring.decayed(value, as_of, when, half_life) + \
                scoring.expiring_total(expiring, when)
            if score >= self.rules.scoring.mql_threshold:
                self.mql_at[lead_key] = when
                return
        self.mql_at[lead_key] = None


def quality(predicted: dict[str, datetime | None], outcome: set[str]) -> dict[str, float | None]:
    chosen = {k for k, v in predicted.items() if v is not None}
    hits = len(chosen & outcome)
    return {
        "precision": round(hits / len(chosen), 4) if chosen else None,
        "recall": round(hits / len(outcome), 4) if outcome else None,
    }


def compare(old: Backtest, new: Backtest, outcomes: dict[str, set[str]],
            recorded_stages: dict[str, str]) -> dict[str, Any]:
    leads = []
    summary = {"earlier": 0, "later": 0, "never": 0, "newly": 0, "same": 0}
    for key in sorted(old.mql_at):
        before, after = old.mql_at[key], new.mql_at.get(key)
        if before == after:
            change = "same"
        elif after is None:
            change = "never"
        elif before is None:
            change = "newly"
        else:
            change = "earlier" if after < before else "later"
        summary[change] += 1
        if change != "same":
            leads.append({"lead": key, "change": change,
                          "mql_at_current": before.isoformat() if before else None,
                          "mql_at_new": after.isoformat() if after else None})
    stage_counts = {stage: sum(1 for s in recorded_stages.values() if s == stage)
                    for stage in STAGES}
    return {
        "current_version": old.rules.version, "new_version": new.rules.version,
        "leads": len(old.mql_at), "changes": summary, "changed_leads": leads,
        "mql_count": {"current": sum(v is not None for v in old.mql_at.values()),
                      "new": sum(v is not None for v in new.mql_at.values())},
        "recorded_stage_counts": stage_counts,
        "quality": {
            outcome: {"current": quality(old.mql_at, keys), "new": quality(new.mql_at, keys)}
            for outcome, keys in outcomes.items()
        },
    }
