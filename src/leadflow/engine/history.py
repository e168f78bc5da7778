"""A lead's history as an auditor reads it: one entry per stored row.

A stored row is what one cause did to the lead (store/fold.py): a record as received, a
clock step, a merge, a person's command. Each entry shows

- the record time (when the row was written) and the event time;
- the cause: the record as received (type, event_id, context with source and campaign, the
  actor if the record named one), or the clock, the merge, the rules publication or the
  person that made the change;
- the events the row holds, the score before and after, the points per rule with the
  rules version that gave them, stage and owner changes (the pool named as the pool);
- the row's chain status (store/chain.py), so a damaged row is visible where it sits.

Plumbing (``WakeScheduled`` scheduling hints, legacy ``LoadRecounted``) is hidden unless
``all_events``; a row holding nothing else is then left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from leadflow.domain import Lead
from leadflow.engine.views import finite, record_time
from leadflow.store import chain

PLUMBING = frozenset({"WakeScheduled", "LoadRecounted"})
_SCORED = ("TouchpointScored", "Boosted", "InterestAbsorbed")
_FIT = ("ProfileUpdated", "Absorbed")
POOL = "pool"
# Events only the passing of time makes (a single one is stored without its cause).
_CLOCK = frozenset({"FirstContactSlaBreached", "WentDormant"})


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


@dataclass(frozen=True)
class HistoryRow:
    lead_id: UUID
    version: int
    last_version: int
    recorded_at: datetime
    occurred_at: datetime | None
    cause: dict[str, Any]
    events: tuple[str, ...]
    score_before: float | None
    score_after: float | None
    points: tuple[dict[str, Any], ...]
    rules_version: str | None
    stage: tuple[str | None, str] | None
    owner: tuple[str | None, str | None] | None
    reason: str | None
    chain: str

    @property
    def type(self) -> str:
        """What the row is, in one word: the record's type, or its first event's name."""
        return str(self.cause.get("type") or self.events[0] if self.events else "-")

    def as_dict(self) -> dict[str, Any]:
        return {
            "lead_id": str(self.lead_id), "version": self.version,
            "last_version": self.last_version, "type": self.type,
            "recorded_at": self.recorded_at.isoformat(), "occurred_at": _iso(self.occurred_at),
            "cause": self.cause, "events": list(self.events),
            "score_before": finite(self.score_before), "score_after": finite(self.score_after),
            "points": list(self.points), "rules_version": self.rules_version,
            "stage": list(self.stage) if self.stage else None,
            "owner": list(self.owner) if self.owner else None,
            "reason": self.reason, "chain": self.chain,
        }


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _cause(stored: dict[str, Any] | None, events: list[Any]) -> dict[str, Any]:
    """The row's cause: the envelope's, completed from its events (the record's context and
    actor live in the events), or read off a single event."""
    fields = [e.__dict__ for e in events]
    names = [type(e).__name__ for e in events]
    record = stored.get("record") if stored else None
    for name, f in zip(names, fields, strict=True):
        if name in ("TouchpointScored", "DispositionRecorded"):
            record = {**(record or {}), "event_id": f.get("event_id"),
                      "type": f.get("record_type"), "occurred_at": f.get("occurred_at")}
            if f.get("context") is not None:
                record["context"] = f["context"]
            if f.get("actor"):
                record["actor"] = f["actor"]
            break
    if record is not None:
        out = {"kind": "record", **record}
        context = out.get("context") or {}
        for key in ("source", "campaign"):
            if isinstance(context, dict) and context.get(key) is not None:
                out[key] = context[key]
        return _plain(out)
    if stored and "clock" in stored:
        return {"kind": "clock", "at": _jsonable(stored["clock"])}
    if stored and "absorb" in stored:  # a lead took up a queued interest (cookie race)
        return _plain({"kind": "absorb", **stored["absorb"]})
    if stored and "command" in stored:
        return _plain({"kind": "person", **{("command" if k == "command" else k): v
                                               for k, v in stored.items()}})
    for name, f in zip(names, fields, strict=True):
        if name == "Boosted":  # points a colleague's record gave (an account surge)
            return _plain({"kind": "surge", "by": f.get("cause")})
        if name in _CLOCK:
            return {"kind": "clock", "event": name}
        if name in ("MergedInto", "Absorbed"):
            other = f.get("survivor_id") or f.get("lead_id")
            return _plain({"kind": "merge", "event": name, "lead": other,
                              "event_id": f.get("event_id")})
        if name == "InterestAbsorbed":  # alone on its row: a queued interest taken up
            return _plain({"kind": "absorb", "interest": f.get("interest_id")})
        if name in ("Unmerged", "StateRestored"):
            return _plain({"kind": "person", "command": "unmerge", "actor": f.get("actor")})
        if name == "ModelBackfilled":  # a row of its own when the lead's timer stays
            return _plain({"kind": "person", "command": "backfill models",
                           "actor": f.get("actor"), "model": f.get("model"),
                           "rules_version": f.get("rules_version")})
        if name == "Created":
            return _plain({"kind": "record", "source": f.get("source"),
                              "campaign": f.get("campaign")})
        actor = f.get("actor")
        if isinstance(actor, str):
            kind = "clock" if actor.startswith("system:") else "person"
            return {"kind": kind, "actor": actor, "reason": f.get("reason")}
    return {"kind": "engine", "event": names[0] if names else None}


def _owner(lead: Lead | None) -> str | None:
    if lead is None:
        return None
    if lead.owner is None and getattr(lead, "in_pool", False):
        return POOL
    return lead.owner


def rows(app: Any, lead_id: UUID, half_life: float,
         all_events: bool = False) -> list[HistoryRow]:
    """One lead's stored rows as history entries (see the module doc); ``app`` is the
    LeadflowApp, ``half_life`` the engagement half-life in seconds."""
    stored = list(app.recorder.select_events(lead_id))
    verdict = chain.verify_events(lead_id, stored, app.codec.plain if app.codec.protected
                                  else None, app.keyring)
    problems: dict[int, list[str]] = {}
    for p in verdict.problems:
        problems.setdefault(p.version, []).append(p.problem)
    out: list[HistoryRow] = []
    lead: Lead | None = None
    for row in stored:
        cause, events = app.codec.expander.open(row)
        shown = [e for e in events if all_events or type(e).__name__ not in PLUMBING]
        first, last = events[0].originator_version, events[-1].originator_version
        times = [t for t in (e.__dict__.get("occurred_at") for e in events)
                 if isinstance(t, datetime)]
        when = max(times) if times else (lead.horizon if lead else None)
        before = lead.score_at(when, half_life) if lead and when else None
        stage_before, owner_before = (lead.stage if lead else None), _owner(lead)
        for event in events:
            lead = event.mutate(lead)
        assert lead is not None
        if not shown:
            continue
        points: list[dict[str, Any]] = []
        versions: list[str] = []
        reasons: list[str] = []
        for event in shown:
            name, f = type(event).__name__, event.__dict__
            if isinstance(f.get("rules_version"), str):
                versions.append(f["rules_version"])
            if isinstance(f.get("reason"), str):
                reasons.append(f["reason"])
            if name in _SCORED:
                points += [{"rule": a["rule"], "points": a["points"], "kind": "engagement",
                            "event_id": a["event_id"], "rules_version": f.get("rules_version")}
                           for a in f.get("awards") or []]
            elif name in _FIT:
                points += [{"rule": r, "points": p, "kind": "fit",
                            "rules_version": f.get("rules_version")}
                           for r, p in f.get("fit_awards") or []]
        owner_after = _owner(lead)
        owner_changed = owner_after != owner_before or any(
            type(e).__name__ == "OwnerAssigned" for e in shown)
        after = lead.score_at(when, half_life) if when else None
        out.append(HistoryRow(
            lead_id=lead_id, version=first, last_version=last,
            recorded_at=record_time(events[-1]), occurred_at=max(times) if times else None,
            cause=_cause(cause, events), events=tuple(type(e).__name__ for e in shown),
            score_before=before, score_after=after, points=tuple(points),
            rules_version=versions[-1] if versions else None,
            stage=(stage_before, lead.stage) if lead.stage != stage_before else None,
            owner=(owner_before, owner_after) if owner_changed else None,
            reason="; ".join(dict.fromkeys(reasons)) or None,
            chain="; ".join(p for v in range(row.originator_version, last + 1)
                            for p in problems.get(v, [])) or "ok",
        ))
    return out
