"""Auditor queries: history, bitemporal as-of, score explanation, the touchpoints a rules
backtest replays (``leadflow.engine.backtest``), and the leads a whole-store check visits.

Everything here is computed from the stored events alone (replayed event by event), so the
answers can be reproduced by anyone holding the log. "Event time" is when a fact happened
at the source; "record time" is when leadflow stored it (the event's ``timestamp``).

A damaged store (an event deleted by hand, a payload that is no JSON or lacks a field) makes
the replay of that aggregate raise ``AggregateUnloadableError`` naming it and the cause,
never the library's own errors; ``leadflow verify`` says what was changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError
from eventsourcing.utils import get_topic

from leadflow.domain import (
    AggregateUnloadableError,
    Interest,
    Lead,
    UnknownLeadError,
)
from leadflow.domain.ids import legacy_interest_id
from leadflow.domain.scoring import Award
from leadflow.engine.app import LeadflowApp
from leadflow.engine.history import HistoryRow
from leadflow.engine.history import rows as history_rows
from leadflow.engine.unit import INFRASTRUCTURE_ERRORS, unloadable
from leadflow.engine.views import finite, record_time
from leadflow.store.fold import OPENED

#: The events that record the primary model's points (with their rules version).
_SCORE_EVENTS = ("TouchpointScored", "Boosted", "InterestAbsorbed")


def _awards_of(event: Any, model: str | None) -> Iterator[tuple[dict[str, Any], str]]:
    """The awards ``event`` recorded for the primary model (``model`` None) or a named
    model, each with the rules version that gave it."""
    name = type(event).__name__
    if model is None:
        if name in _SCORE_EVENTS:
            for award in event.awards:
                yield award, event.rules_version
    elif name == "ModelsScored":
        for award in event.models.get(model, {}).get("awards", ()):
            yield award, event.rules_version
    elif name == "ModelBackfilled" and event.model == model:
        for award in event.awards:
            yield award, event.rules_version


class Auditor:
    """Read-only replays over a LeadflowApp's event store."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.half_life = app.rules.half_life_seconds
        self._preloaded: dict[UUID, list[Any]] = {}

    # ----------------------------------------------------------------- lookups

    def preload(self, ids: Sequence[UUID]) -> None:
        """Read many aggregates' events in one query and keep them, decoded, until the next
        preload: a scan over every lead then reads and decodes each lead's events once.

        An aggregate whose events cannot be decoded is simply not kept: ``events`` then
        reads it alone and names the damage (AggregateUnloadableError).
        """
        self._preloaded = {}
        for aggregate_id, stored in self.app.codec.select_many(list(ids)).items():
            events = self.decoded(stored)
            if events is not None:
                self._preloaded[aggregate_id] = events

    def decoded(self, stored: Sequence[Any]) -> list[Any] | None:
        """One aggregate's stored rows (``StoredEvent``) as its events, as ``preload`` keeps
        them; None when one cannot be decoded."""
        expand = self.app.codec.expander.expand
        try:
            return [e for s in stored for e in expand(s)]
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception:
            return None

    def events(self, lead_id: UUID, kind: str = "lead") -> list[Any]:
        """The aggregate's stored events, decoded (AggregateUnloadableError if one cannot be)."""
        preloaded = self._preloaded.get(lead_id)
        if preloaded is not None:
            return preloaded
        with unloadable(lead_id, kind):
            return list(self.app.events.get(lead_id))

    def family(self, lead_id: UUID) -> list[UUID]:
        """The lead and, recursively, every lead merged into it."""
        out, todo = [], [lead_id]
        while todo:
            current = todo.pop(0)
            if current in out:
                continue
            out.append(current)
            events = self.events(current)
            with unloadable(current):
                todo += [event.lead_id for event in events
                         if type(event).__name__ == "Absorbed"]
        return out

    def replay(self, events: Iterable[Any], kind: str = "lead") -> Any:
        """The aggregate the events make, checking each follows the previous one: a missing
        event (a version gap) raises AggregateUnloadableError, not the library's error."""
        aggregate: Any = None
        for event in events:
            with unloadable(event.originator_id, kind):
                aggregate = event.mutate(aggregate)
        return aggregate

    # ----------------------------------------------------------------- history

    def history(self, lead_id: UUID, all_events: bool = False) -> list[HistoryRow]:
        """Every stored row of the lead and of leads merged into it, in recorded order (see
        ``engine.history``)."""
        entries: list[HistoryRow] = []
        for member in self.family(lead_id):
            with unloadable(member):
                entries += history_rows(self.app, member, self.half_life, all_events)
        entries.sort(key=lambda e: (e.recorded_at, str(e.lead_id), e.version))
        return entries

    # ----------------------------------------------------------------- as of

    def lead_known_by(self, key: str, known_at: datetime) -> UUID:
        """Which lead an identity key belonged to, as recorded by ``known_at``.

        The identity index holds only where a key points now; where it pointed before is in
        the leads' own events. So: the key's current lead and every lead merged into it
        (recursively), each replayed as recorded by ``known_at``; the one that held the key
        then, following merges recorded by then.
        """
        index = self.app.directory.lookup([key]).get(key)
        if index is None:
            raise UnknownLeadError(f"no lead known by {key!r}")
        if index.is_interest:
            raise UnknownLeadError(f"{key!r} was anonymous interest at {known_at.isoformat()}")
        holders: list[Lead] = []
        for candidate in self.family(index.target_id):
            lead = self.as_known(candidate, known_at)
            if lead is not None and key in lead.identity_keys:
                holders.append(lead)
        if not holders:
            raise UnknownLeadError(f"no lead known by {key!r} at {known_at.isoformat()}")
        # The oldest holder: a merge leaves the key on the absorbed lead too.
        lead_id = min(holders, key=lambda h: (h.created_at, str(h.id))).id
        for _ in range(32):  # follow merges recorded by then
            lead = self.as_known(lead_id, known_at)
            if lead is None or lead.merged_into is None:
                return lead_id
            lead_id = lead.merged_into
        return lead_id

    def as_known(self, lead_id: UUID, known_at: datetime) -> Lead | None:
        events = self.events(lead_id)
        with unloadable(lead_id):
            lead = self.replay(e for e in events if record_time(e) <= known_at)
        if lead is not None and not isinstance(lead, Lead):
            raise AggregateUnloadableError(lead_id, "lead", TypeError(
                f"its events make a {type(lead).__name__}"))
        return lead

    def as_of(self, lead_id: UUID, at: datetime, known_at: datetime) -> dict[str, Any]:
        lead = self.as_known(lead_id, known_at)
        with unloadable(lead_id):
            return self._as_of(lead_id, lead, at, known_at)

    def _as_of(self, lead_id: UUID, lead: Lead | None, at: datetime,
               known_at: datetime) -> dict[str, Any]:
        if lead is None or lead.created_at > at:
            return {"lead_id": str(lead_id), "at": at.isoformat(),
                    "known_at": known_at.isoformat(), "stage": None, "owner": None,
                    "score": None, "fit": None, "engagement": None,
                    "note": "the lead did not exist yet at that event time, as known then"}
        fit = self._fit_at(lead_id, at, known_at)
        engagement = sum(a.value_at(at, self.half_life) for a in lead.awards)
        # The records whose points make the engagement at ``at``, as known then.
        used = sorted({a.event_id for a in lead.awards if a.at <= at})
        return {"lead_id": str(lead_id), "at": at.isoformat(), "known_at": known_at.isoformat(),
                "stage": lead.stage_on(at), "owner": lead.owner_on(at),
                "score": finite(fit + engagement), "fit": finite(fit, None),
                "engagement": finite(engagement), "records": used}

    def _fit_at(self, lead_id: UUID, at: datetime, known_at: datetime) -> float:
        fit = 0.0
        events = self.events(lead_id)
        with unloadable(lead_id):
            for event in events:
                if record_time(event) > known_at:
                    break
                if type(event).__name__ in ("ProfileUpdated", "Absorbed") and \
                        event.occurred_at <= at:
                    fit = float(event.fit)
        return fit

    # ----------------------------------------------------------------- explain

    def explain(self, lead_id: UUID, at: datetime, model: str | None = None
                ) -> dict[str, Any]:
        """Each point of the lead's score at ``at``: the record, the rule, its rules version,
        its original points and decayed value. ``model`` names a named model
        (``[models.<id>]`` of the app's rules) instead of the primary one: its points as the
        lead recorded them (``ModelsScored``, and a ``rescore --apply`` backfill)."""
        lead = self.replay(self.events(lead_id))
        if not isinstance(lead, Lead):
            raise AggregateUnloadableError(lead_id, "lead", TypeError(
                f"its events make {type(lead).__name__}, not a lead"))
        versions: dict[str, str] = {}
        # Merged leads first, the lead itself last: its own newer events (a backfill that
        # recomputed the merged points) name the version that gave each point now.
        for member in reversed(self.family(lead_id)):
            events = self.events(member)
            with unloadable(member):
                for event in events:
                    for award, version in _awards_of(event, model):
                        versions[award["event_id"]] = version
        with unloadable(lead_id):
            if model is None:
                return self._explain(lead_id, at, versions, lead.awards, lead.fit_awards,
                                     lead.fit, self.app.rules.scoring.half_life_days)
            definition = self.app.rules.models[model]
            state = lead.model_states.get(model) or {"awards": [], "fit_awards": [],
                                                     "fit": 0.0}
            result = self._explain(
                lead_id, at, versions, [Award.from_dict(a) for a in state["awards"]],
                [(str(r), float(p)) for r, p in state["fit_awards"]], float(state["fit"]),
                definition.half_life_days)
            return {**result, "model": model, "threshold": definition.threshold}

    def _explain(self, lead_id: UUID, at: datetime, versions: dict[str, str],
                 awards: Sequence[Award], fit_awards: Sequence[tuple[str, float]],
                 fit_total: float, half_life_days: float) -> dict[str, Any]:
        contributions: list[dict[str, Any]] = []
        engagement = 0.0
        half_life = half_life_days * 86400.0
        for award in sorted(awards, key=lambda a: (a.at, a.event_id, a.rule)):
            if award.at > at:
                continue
            value = award.value_at(at, half_life)
            engagement += value
            contributions.append({
                "event_id": award.event_id, "rule": award.rule, "points": award.points,
                "occurred_at": award.at.isoformat(),
                "expires_at": award.expires_at.isoformat() if award.expires_at else None,
                "value": finite(value),
                "rules_version": versions.get(award.event_id),
            })
        fit = [{"rule": r, "points": p} for r, p in fit_awards]
        return {"lead_id": str(lead_id), "at": at.isoformat(), "fit": fit,
                "fit_total": finite(fit_total, None), "engagement": contributions,
                "engagement_total": finite(engagement),
                "score": finite(fit_total + engagement),
                "records": sorted({c["event_id"] for c in contributions}),
                "half_life_days": half_life_days}

    # ----------------------------------------------------------------- rescore

    def touchpoints(self, lead_id: UUID) -> list[dict[str, Any]]:
        """The inbound touchpoints a lead (and leads merged into it) scored, as recorded."""
        out: list[dict[str, Any]] = []
        for member in self.family(lead_id):
            events = self.events(member)
            with unloadable(member):
                for event in events:
                    name = type(event).__name__
                    if name == "TouchpointScored":
                        out.append({"event_id": event.event_id, "type": event.record_type,
                                    "occurred_at": event.occurred_at,
                                    "context": event.context})
                    elif name == "InterestAbsorbed":
                        # Named by the event since format 5; before, derived from the cookie.
                        interest_id = getattr(event, "interest_id", None)
                        if interest_id is None:
                            if event.anonymous_id is None:
                                continue  # forgotten, and stored before format 5
                            interest_id = legacy_interest_id(event.anonymous_id)
                        interest = self.replay(self.events(interest_id, "interest"),
                                               "interest")
                        if isinstance(interest, Interest):
                            out += [tp for tp in interest.touchpoints
                                    if tp["event_id"] in set(event.event_ids)]
        with unloadable(lead_id):
            out.sort(key=lambda tp: (tp["occurred_at"], tp["event_id"]))
        return out


def stored_lead_ids(app: LeadflowApp) -> tuple[list[UUID], list[dict[str, Any]]]:
    """Every lead that has a stored Created event (as ``LeadflowApp.lead_ids``), and, as
    problems, the Created rows that cannot be read (an originator id that is no UUID, in a
    SQLite row edited by hand): one such row must not stop the check of all the others.

    The notification log is read in windows of ids; a window that cannot be read is halved
    until the unreadable rows are found.
    """
    topics = [get_topic(Lead.Created), get_topic(Lead.Created).rsplit(".", 1)[0] + OPENED]
    ids: list[UUID] = []
    unreadable: list[dict[str, Any]] = []

    def problem(notification_id: int, originator: str | None, exc: Exception) -> None:
        unreadable.append({
            "lead_id": originator, "version": 1,
            "problem": f"stored event {notification_id} (Lead.Created) cannot be read "
                       f"({type(exc).__name__}: {exc}): the row was edited outside leadflow"})

    # Without the rows' payloads where the store can (PostgreSQL): ids are all that is read.
    originators = getattr(app.recorder, "select_originators", None)

    def scan(low: int, high: int) -> None:
        if originators is not None:
            for notification_id, originator_id in originators(low, high, topics):
                try:
                    ids.append(originator_id if type(originator_id) is UUID
                               else UUID(str(originator_id)))
                except ValueError as exc:
                    problem(notification_id, str(originator_id), exc)
            return
        try:
            page = app.recorder.select_notifications(low, high - low + 1, stop=high,
                                                     topics=topics)
        except PersistenceError:
            raise
        except ValueError as exc:
            if low == high:
                problem(low, None, exc)
                return
            middle = (low + high) // 2
            scan(low, middle)
            scan(middle + 1, high)
            return
        for notification in page:
            try:
                ids.append(UUID(str(notification.originator_id)))
            except ValueError as exc:
                problem(notification.id, str(notification.originator_id), exc)

    top = app.recorder.max_notification_id() or 0
    window = 10_000
    for low in range(1, top + 1, window):
        scan(low, min(low + window - 1, top))
    return ids, unreadable
