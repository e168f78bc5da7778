"""Backfill: a named model added or changed by a rules publication scores the history.

``rescore --apply`` publishes a rules version; a named model (``[models.<id>]``) it adds or
changes would otherwise score only the records that come after. ``backfill`` scores every
lead's recorded touchpoints with it (``Lead.backfill_model``) and records the result as one
``ModelBackfilled`` event on each lead it changes, stored like any other row (the keyed
chain, the cause naming the command): what was recorded before stays as it was, and a
replay gives the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from eventsourcing.persistence import PersistenceError

from leadflow.domain import Lead
from leadflow.domain.rules import Rules
from leadflow.engine.auditor import Auditor, stored_lead_ids

log = structlog.get_logger(__name__)

#: Leads read (one query) and committed (one transaction) together.
PAGE = 500


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """What a backfill did: the models, the leads it recorded a backfill on, the leads
    read, and the leads left out because their stored events cannot be loaded."""

    models: tuple[str, ...]
    leads: int
    scanned: int
    unloadable: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"models": list(self.models), "leads": self.leads, "scanned": self.scanned,
                "unloadable_leads": list(self.unloadable)}


def changed_models(before: Rules, after: Rules) -> tuple[str, ...]:
    """The named models of ``after`` that ``before`` lacks or defines otherwise."""
    return tuple(model_id for model_id, model in after.models.items()
                 if before.models.get(model_id) != model)


def backfill(app: Any, models: Sequence[str], actor: str,
             progress: Callable[[int, int], None] | None = None) -> BackfillResult:
    """Backfill ``models`` (ids of the app's rules, just published) on every lead.

    A lead merged into another gets its own history's points (an unmerge gives them back to
    it); the crossings are computed up to the later of the lead's own latest event time and
    the clock's position, and the lead's timer is set again (a model left above its
    threshold decays below it at a time the clock then finds). Leads are read and committed
    a page at a time; running the same backfill again records nothing more.
    """
    rules: Rules = app.rules
    unknown = [m for m in models if m not in rules.models]
    if unknown:
        raise ValueError(f"models not in rules {rules.version}: {', '.join(unknown)}")
    if not models:
        return BackfillResult((), 0, 0, ())
    lead_ids, unreadable = stored_lead_ids(app)
    left = [str(p["lead_id"]) for p in unreadable]
    auditor = Auditor(app)
    clock = app.clock_position()
    total, recorded = len(lead_ids), 0
    for start in range(0, total, PAGE):
        page = lead_ids[start:start + PAGE]
        auditor.preload(page)
        unit = app._unit()
        unit.cause = {"command": "backfill models", "actor": actor,
                      "models": list(models), "rules_version": rules.version}
        decide = app._decide(unit)
        app._load_into(unit, set(page))  # one query for the page's leads
        for lead_id in page:
            try:
                lead = unit.get(Lead, lead_id)
                touchpoints = [(tp["event_id"], tp["type"], tp["occurred_at"], tp["context"])
                               for tp in auditor.touchpoints(lead_id)]
            except PersistenceError:
                raise
            except Exception as exc:  # a damaged lead is left out, named, not the end
                log.warning("lead left out of the backfill: its stored events cannot be "
                            "loaded", lead=str(lead_id), error=f"{type(exc).__name__}: {exc}")
                left.append(str(lead_id))
                continue
            if not isinstance(lead, Lead):
                continue
            until = lead.horizon if clock is None else max(lead.horizon, clock)
            changed = [lead.backfill_model(m, rules, touchpoints, until, actor) for m in models]
            if any(changed):
                recorded += 1
                decide.settle(lead, until)
        app._commit(unit, None)
        if progress is not None:
            progress(min(start + PAGE, total), total)
    return BackfillResult(tuple(models), recorded, total, tuple(left))
