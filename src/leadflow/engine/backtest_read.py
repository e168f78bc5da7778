"""Reading a backtest's leads: each lead's rows read in bulk and folded into what a backtest
needs, without replaying the aggregate (see ``backtest``'s module doc for the whole design).

``LeadReader`` is the Auditor with the leads' rows read a chunk at a time and the anonymous
interests they absorbed read ahead in bulk; ``read_chunk`` gives each lead of a chunk as
``Found`` (key, profile, touchpoints in order, stage, stages reached), ``_fold`` being the
fast way (the rows as ``RowDecoder`` parses them) and the Auditor's replay and
``touchpoints`` the general one, for anything the fold is not sure of.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import decorated_funcs
from eventsourcing.persistence import PersistenceError, StoredEvent
from eventsourcing.utils import resolve_topic

from leadflow.domain import Interest, Lead
from leadflow.engine.auditor import Auditor
from leadflow.engine.backtest_rows import Pair, RowDecoder
from leadflow.engine.unit import INFRASTRUCTURE_ERRORS

#: A touchpoint as the scoring loop reads it: (occurred_at, event_id, type, context).
Touch = tuple[datetime, str, str, Mapping[str, Any]]

#: What a backtest takes from one lead: key, profile, touchpoints in order, stage, the
#: stages it ever reached.
Found = tuple[str, dict[str, Any], list[Touch], str, set[str]]
#: The same from the lead's own events, its touchpoints (None) left to the Auditor.
Folded = tuple[str, dict[str, Any], list[Touch] | None, str, set[str]]




class LeadReader(Auditor):
    """The Auditor, with anonymous interests read ahead in bulk.

    ``touchpoints`` reads the interests a lead absorbed one by one. While ``collecting``, an
    interest not read ahead is noted in ``missing`` and taken as empty (the caller then reads
    the noted ones in one query and asks again); an interest asked for once more after that
    is read as the Auditor reads it, so one that cannot be read is named as before.
    """

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._bulk = Auditor(app)
        self.ahead: dict[UUID, list[Any]] = {}
        self.tried: set[UUID] = set()
        self.missing: list[UUID] = []
        self.collecting = False
        self.rows: dict[UUID, list[StoredEvent]] = {}
        self.decoder = RowDecoder(app, READS)

    def read(self, chunk: Sequence[UUID]) -> None:
        """``preload``, with each lead's rows made events only when they are asked for
        (``events``): most leads are folded from their rows (``_fold_rows``)."""
        self._preloaded = {}
        self.rows = self.app.codec.select_many(list(chunk))

    def events(self, lead_id: UUID, kind: str = "lead") -> list[Any]:
        if lead_id not in self._preloaded:
            rows = self.rows.get(lead_id)
            if rows is not None:  # as ``preload`` keeps it
                decoded = self.decoded(rows)
                if decoded is not None:
                    self._preloaded[lead_id] = decoded
        if kind != "lead":
            found = self.ahead.get(lead_id)
            if found is not None:
                return found
            if self.collecting and lead_id not in self.tried:
                self.missing.append(lead_id)
                return []
        return super().events(lead_id, kind)

    def read_ahead(self, ids: Sequence[UUID], kind: str) -> None:
        """Read ``ids`` (interests) in one query; one that cannot be read is left to be read
        (and named) where it is asked for."""
        fresh = [i for i in dict.fromkeys(ids) if i not in self.tried]
        self.tried.update(fresh)
        self._bulk.preload(fresh)
        for aggregate_id in fresh:
            try:
                self.ahead[aggregate_id] = self._bulk.events(aggregate_id, kind)
            except PersistenceError:
                raise
            except Exception:  # damaged: read again, and named, where it is asked for
                continue

    def forget(self) -> None:
        self.ahead, self.tried, self.missing = {}, set(), []

    def fold(self, lead_id: UUID, since: datetime | None, interests: list[Absorbing]
             ) -> Folded | _Marker | None:
        """``_fold`` of the lead's events, from its rows when they can be read without
        making events (``RowDecoder``: the interests it absorbed are then noted in
        ``interests``), else from its events."""
        pairs = self._pairs(self.rows.get(lead_id))
        if pairs is not None:
            return _fold(pairs, since, interests)
        return _fold([(type(e), e.__dict__) for e in self.events(lead_id)], since)

    def _pairs(self, rows: list[StoredEvent] | None) -> list[Pair] | None:
        if not rows:
            return None
        try:
            return self.decoder.pairs(rows)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception:  # read the Auditor's way: it says what is wrong
            return None

    def read_members(self, lead_ids: Sequence[UUID]) -> None:
        """The rows of the leads merged into ``lead_ids`` (one level down), read in one
        query: ``family`` then finds them here instead of reading each alone."""
        members: list[UUID] = []
        for lead_id in lead_ids:
            try:
                events = self.events(lead_id)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception:  # unloadable: named where it is read again
                continue
            for event in events:
                member = event.__dict__.get("lead_id") if type(event) is _ABSORBED else None
                if type(member) is UUID and member not in self.rows:
                    members.append(member)
        if members:
            self.rows.update(self.app.codec.select_many(list(dict.fromkeys(members))))

    def interest_touches(self, ids: Sequence[UUID]) -> dict[UUID, list[Touch] | None]:
        """The touchpoints each interest noted, read in one query, folded from its rows
        (``_interest_touches``); None for one that must be read the Auditor's way."""
        rows = self.app.codec.select_many(list(ids))
        out: dict[UUID, list[Touch] | None] = {}
        for interest_id in ids:
            pairs = self._pairs(rows.get(interest_id))
            try:
                out[interest_id] = _interest_touches(pairs) if pairs is not None else None
            except Exception:  # whatever the fold is not sure of
                out[interest_id] = None
        return out


def read_chunk(reader: LeadReader, chunk: Sequence[UUID], since: datetime | None
                ) -> list[Found | Exception | None]:
    """What the backtest takes from each lead of ``chunk``, in order: None for a lead it
    skips (merged away, created before ``since``), the error for one that cannot be loaded."""
    reader.read(chunk)
    reader.forget()
    out: list[Found | Exception | None] = []
    gather: list[tuple[int, Folded]] = []  # leads whose touchpoints the Auditor gathers
    pending: list[tuple[int, Folded, list[Absorbing]]] = []  # and those of interests
    for lead_id in chunk:
        interests: list[Absorbing] = []
        try:
            folded = reader.fold(lead_id, since, interests)
        except PersistenceError:
            raise
        except Exception:  # whatever the fold is not sure of: the general way, below
            folded = _GENERAL
        if isinstance(folded, _Marker):
            out.append(_general(reader, lead_id, since))
        elif folded is None:
            out.append(None)
        else:
            key, profile, touches, stage, reached = folded
            if touches is None:
                gather.append((len(out), folded))
                out.append(None)
            elif interests:
                pending.append((len(out), folded, interests))
                out.append(None)
            else:
                out.append((key, profile, touches, stage, reached))
    if pending:
        _add_interests(reader, pending, gather, out)
    if gather:
        gather.sort(key=_first)
        _gather(reader, chunk, gather, out)
    return out


def _first(item: tuple[int, Folded]) -> int:
    return item[0]


def _add_interests(reader: LeadReader, pending: list[tuple[int, Folded, list[Absorbing]]],
                   gather: list[tuple[int, Folded]], out: list[Found | Exception | None]
                   ) -> None:
    """The leads that absorbed anonymous interests, with the touchpoints the Auditor would
    add (``Auditor.touchpoints``: an interest's touchpoints the absorbing event names, where
    that event is, then all in time order); the interests are read in one query. A lead with
    an interest that must be read the Auditor's way goes to ``gather``."""
    found = reader.interest_touches(
        list(dict.fromkeys(i for _, _, interests in pending for _, i, _ in interests)))
    for position, folded, interests in pending:
        key, profile, touches, stage, reached = folded
        assert touches is not None
        merged: list[Touch] = []
        start = 0
        try:
            for at, interest_id, event_ids in interests:
                noted = found[interest_id]
                if noted is None:
                    raise LookupError(interest_id)
                wanted = set(event_ids)
                merged += touches[start:at]
                merged += [touch for touch in noted if touch[1] in wanted]
                start = at
        except Exception:  # the Auditor's way: it says what is wrong
            gather.append((position, folded))
            continue
        merged += touches[start:]
        merged.sort(key=_when)
        out[position] = (key, profile, merged, stage, reached)


def _general(reader: LeadReader, lead_id: UUID, since: datetime | None
             ) -> Found | Exception | None:
    """One lead, read exactly as the backtest always did: its replayed aggregate and the
    Auditor's touchpoints (merged leads and absorbed interests included)."""
    try:
        lead: Any = reader.replay(reader.events(lead_id))
        if not isinstance(lead, Lead) or lead.merged_into is not None:
            return None
        if since is not None and lead.created_at < since:
            return None
        touches = as_touches(reader.touchpoints(lead_id))
    except PersistenceError:
        raise
    except Exception as exc:  # a damaged lead is left out, not the whole backtest
        return exc
    key: Any = lead.primary_key
    return key, lead.profile, touches, lead.stage, set(lead.first_reached)


def _gather(reader: LeadReader, chunk: Sequence[UUID], leads: list[tuple[int, Folded]],
            out: list[Found | Exception | None]) -> None:
    """The touchpoints of the leads of ``chunk`` that absorbed a lead or anonymous interest,
    as the Auditor gathers them (``touchpoints``), with the interests they name read in one
    query: a first pass notes them, a second asks again for the leads that named any."""
    reader.read_members([chunk[position] for position, _ in leads])
    reader.collecting = True
    reader.missing = []
    try:
        waiting = []
        for position, folded in leads:
            asked = len(reader.missing)
            out[position] = _with_touches(reader, chunk[position], folded)
            if len(reader.missing) > asked:
                waiting.append((position, folded))
        if waiting:
            reader.read_ahead(reader.missing, "interest")
            for position, folded in waiting:  # each interest is read ahead or tried now
                out[position] = _with_touches(reader, chunk[position], folded)
    finally:
        reader.collecting = False
        reader.missing = []


def _with_touches(reader: LeadReader, lead_id: UUID, folded: Folded) -> Found | Exception:
    try:
        touches = as_touches(reader.touchpoints(lead_id))
    except PersistenceError:
        raise
    except Exception as exc:  # a damaged lead is left out, not the whole backtest
        return exc
    key, profile, _, stage, reached = folded
    return key, profile, touches, stage, reached


def as_touches(touchpoints: Sequence[dict[str, Any]]) -> list[Touch]:
    return [(tp["occurred_at"], tp["event_id"], tp["type"], tp["context"])
            for tp in touchpoints]


# The fold: what a backtest needs of a lead, from its events, without the aggregate.

class _Marker:
    pass


_GENERAL = _Marker()

def _event(name: str, aggregate: type = Lead) -> type:
    """A lead (or ``aggregate``) event class (the ones made by ``@event`` are not known to
    the type checker)."""
    cls: type = getattr(aggregate, name)
    return cls


_CREATED = _event("Created")
_TOUCHED = _event("TouchpointScored")
_STAGE = _event("StageChanged")
_PROFILE = _event("ProfileUpdated")
_MERGED = _event("MergedInto")
_UNMERGED = _event("Unmerged")
_ABSORBED = _event("Absorbed")
_INTEREST_ABSORBED = _event("InterestAbsorbed")
#: Events after which the Auditor gathers the touchpoints (other leads', interests').
_ABSORBING = (_ABSORBED, _INTEREST_ABSORBED)
_INTEREST_CREATED = _event("Created", Interest)
_NOTED = _event("TouchpointNoted", Interest)
_LINKED = _event("LinkedToLead", Interest)
#: An interest a lead absorbed, as the fold notes it: where its touchpoints go among the
#: lead's, its id, the ids of the records of it the lead took.
Absorbing = tuple[int, UUID, Any]
#: Events that change nothing a backtest reads (replayed, they only change other state).
_OTHERS = ("IdentityAdded", "AccountSet", "Boosted", "AccountSurged", "DispositionRecorded",
           "OwnerAssigned", "LoadRecounted", "WakeScheduled", "FirstContactSlaBreached",
           "FirstContactMade", "DealOwnerSet", "WentDormant", "ModelsScored",
           "ModelThresholdCrossed", "ModelBackfilled")


def _fields_needed(cls: type) -> frozenset[str]:
    """The fields an event of ``cls`` must hold for its replay not to fail: all its
    dataclass fields but the ones with a default (an explicit class's) or that its decorated
    method gives a default."""
    names = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    method = (Lead.__init__ if cls is _CREATED else Interest.__init__
              if cls is _INTEREST_CREATED else decorated_funcs.get(cls))
    if method is not None:
        names -= {p.name for p in inspect.signature(method).parameters.values()
                  if p.default is not inspect.Parameter.empty}
    return frozenset(names)


_NEEDED: dict[type, frozenset[str]] = {
    cls: _fields_needed(cls)
    for cls in (_CREATED, _TOUCHED, _STAGE, _PROFILE, _MERGED, _UNMERGED, *_ABSORBING,
                *(getattr(Lead, name, None) for name in _OTHERS)) if cls is not None
}
_INTEREST_NEEDED = {cls: _fields_needed(cls) for cls in (_INTEREST_CREATED, _NOTED, _LINKED)}
_LEAD_TOPICS: dict[str, bool] = {}


def _is_lead_topic(topic: str) -> bool:
    known = _LEAD_TOPICS.get(topic)
    if known is None:
        known = _LEAD_TOPICS[topic] = resolve_topic(topic) is Lead
    return known


#: The fields ``_fold`` reads of each event class (``RowDecoder`` untags only these).
READS: dict[type, tuple[str, ...]] = {
    _CREATED: ("originator_topic", "primary_key", "created_at"),
    _TOUCHED: ("occurred_at", "event_id", "record_type", "context"),
    _STAGE: ("to_stage",),
    _PROFILE: ("changes",),
    _MERGED: ("survivor_id",),
    _ABSORBED: ("profile",),
    _INTEREST_ABSORBED: ("interest_id", "event_ids"),
    _INTEREST_CREATED: ("originator_topic",),
    _NOTED: ("occurred_at", "event_id", "record_type", "context"),
}


def _fold(events: Sequence[Pair], since: datetime | None,
          interests: list[Absorbing] | None = None) -> Folded | _Marker | None:
    """A lead's backtest input from its events alone (each as its class and ``__dict__``),
    as replaying them gives it; None for a lead the backtest skips; no touchpoints (None)
    for one that absorbed another lead or an interest (they are the Auditor's to gather);
    ``_GENERAL`` (or any exception) for anything else the fold is not sure of.

    With ``interests``, an interest absorbed (and named by its id) is noted there instead,
    with where its touchpoints go among the lead's: the touchpoints are then left unsorted,
    for the caller to add the interest's and sort them all (``_add_interests``)."""
    needed = _NEEDED
    cls, data = events[0]
    if cls is not _CREATED or not needed[_CREATED] <= data.keys() or \
            not _is_lead_topic(data["originator_topic"]):
        return _GENERAL
    version = data["originator_version"]
    key, created_at = data["primary_key"], data["created_at"]
    stage = "new"
    reached = {"new"}
    profile: dict[str, Any] = {}
    merged = False
    absorbed = False
    touches: list[Touch] = []
    for cls, data in events[1:]:
        version += 1
        wants = needed.get(cls)
        if wants is None or data["originator_version"] != version or \
                not wants <= data.keys():
            return _GENERAL
        if cls is _TOUCHED:
            touches.append((data["occurred_at"], data["event_id"], data["record_type"],
                            data["context"]))
        elif cls is _STAGE:
            stage = data["to_stage"]
            reached.add(stage)
        elif cls is _PROFILE:
            profile.update(data["changes"])
        elif cls is _MERGED:
            merged = data["survivor_id"] is not None
        elif cls is _UNMERGED:
            merged = False
        elif cls in _ABSORBING:
            if cls is _INTEREST_ABSORBED and interests is not None and \
                    type(data.get("interest_id")) is UUID:
                interests.append((len(touches), data["interest_id"], data["event_ids"]))
                continue
            absorbed = True
            if cls is _ABSORBED:
                if type(data["profile"]) is not dict:
                    return _GENERAL
                profile = dict(data["profile"])
    if merged or (since is not None and created_at < since):
        return None
    if absorbed:
        return key, profile, None, stage, reached
    if not interests:
        touches.sort(key=_when)
    return key, profile, touches, stage, reached


def _interest_touches(events: Sequence[Pair]) -> list[Touch] | None:
    """The touchpoints an anonymous interest noted, in order, from its events as replaying
    them gives ``Interest.touchpoints``; None for anything the fold is not sure of (a
    forgotten interest's are rewritten: the Auditor reads those)."""
    needed = _INTEREST_NEEDED
    cls, data = events[0]
    if cls is not _INTEREST_CREATED or not needed[cls] <= data.keys() or \
            resolve_topic(data["originator_topic"]) is not Interest:
        return None
    version = data["originator_version"]
    touches: list[Touch] = []
    for cls, data in events[1:]:
        version += 1
        wants = needed.get(cls)
        if wants is None or data["originator_version"] != version or not wants <= data.keys():
            return None
        if cls is _NOTED:
            touches.append((data["occurred_at"], data["event_id"], data["record_type"],
                            data["context"]))
    return touches


def _when(touch: Touch) -> tuple[datetime, str]:
    return touch[0], touch[1]
