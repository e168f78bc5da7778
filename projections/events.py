"""The stored events the read models follow, read straight from their JSON.

``KINDS`` names each followed topic; ``EventData`` gives a handler a stored event's fields
without building the domain event (``load_payload`` reads what orjson refuses).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from eventsourcing.persistence import Transcoding, UUIDAsHex
from eventsourcing.utils import get_topic

from leadflow.domain import Account, Lead
from leadflow.projections.db import clean_text
from leadflow.store.fold import envelope_topics

# The events the read models follow, by stored topic: (is an account event, event name).
_LEAD_EVENTS = ("Created", "IdentityAdded", "ProfileUpdated", "AccountSet", "TouchpointScored",
                "AccountSurged",
                "Boosted", "StageChanged", "OwnerAssigned", "FirstContactMade", "DealOwnerSet",
                "WentDormant", "MergedInto", "Absorbed", "InterestAbsorbed", "Unmerged",
                "StateRestored", "Forgotten", "ModelsScored", "ModelThresholdCrossed",
                "ModelBackfilled")
# Account.Engaged (stores before format 3) is not followed: an account's engagements are
# its people's touchpoints, counted from the lead events, whatever the store's format.
_ACCOUNT_EVENTS = ("Created", "Surged")
KINDS: dict[str, tuple[bool, str]] = {
    **{get_topic(getattr(Lead, name)): (False, name) for name in _LEAD_EVENTS},
    **{get_topic(getattr(Account, name)): (True, name) for name in _ACCOUNT_EVENTS},
}
#: Envelopes (one stored row per record, store/fold.py) of the followed aggregates: the
#: projector opens them and follows the events inside whose topics are in ``KINDS``.
ENVELOPES = frozenset(t for agg in (Lead, Account)
                      for t in envelope_topics(get_topic(agg.Created).rsplit(".", 1)[0]))
TOPICS = [*KINDS, *sorted(ENVELOPES)]
#: Topics of rows that may hold a lead's sealed personal values (store/personal.py).
LEAD_TOPICS = frozenset(t for t in TOPICS if t.partition(":")[2].startswith("Lead."))


_JSON = json.JSONDecoder(parse_int=lambda digits: int(digits) if len(digits) <= 4000
                         else float(digits), strict=False)


def load_payload(state: bytes | str) -> dict[str, Any]:
    """A stored payload's JSON object: orjson, else Python's json for what orjson refuses.

    Python's json reads ``Infinity``/``NaN`` (which its encoder wrote) as floats, integers
    beyond a double exactly (beyond 4000 digits, as infinity), lone surrogates, raw control
    characters; bytes that are no UTF-8 become U+FFFD. What is still no JSON object raises.
    """
    try:
        data = orjson.loads(state)
    except orjson.JSONDecodeError:
        text = state if isinstance(state, str) else bytes(state).decode("utf-8", "replace")
        data = _JSON.decode(text)
    if type(data) is not dict:
        raise ValueError(f"payload is a JSON {type(data).__name__}, not an object")
    return data


#: Values ``_untag`` returns as they are (what orjson makes besides text, objects, arrays).
_DEEP = frozenset({str, dict, list})
#: Stored times already parsed (a touchpoint's time is also its engagement's and awards').
_TIMES: dict[str, datetime] = {}
_TIMES_MAX = 1 << 16
#: Stored ``uuid_hex`` texts already decoded by eventsourcing's ``UUIDAsHex``.
_UUIDS: dict[str, Any] = {}
_UUIDS_MAX = 1 << 16


def _time(text: str) -> datetime:
    # Most callers looked it up already: a miss here must not cost a KeyError.
    found = _TIMES.get(text)
    if found is not None:
        return found
    decoded = datetime.fromisoformat(text)
    if decoded.tzinfo is None:
        decoded = decoded.replace(tzinfo=UTC)
    if len(_TIMES) >= _TIMES_MAX:
        _TIMES.clear()
    _TIMES[text] = decoded  # datetimes are immutable: one object serves every reader
    return decoded


class EventData:
    """A stored event's fields, read straight from its JSON without building the event.

    orjson parses the payload; eventsourcing's ``{"_type_", "_data_"}`` values (datetimes,
    UUIDs) are turned back into objects only for the fields a handler reads. This is what
    lets a rebuild skip the library's per-event decoding and object construction. Text comes
    out without the characters PostgreSQL text cannot hold (see ``db.clean_text``), so keys
    the handlers aggregate by (source, owner) are already what the tables will hold; times
    without a zone are taken as UTC.

    A field is untagged on its first read and kept in the instance's ``__dict__``, so every
    later read of it is a plain attribute lookup (``__getattr__`` runs only on a miss).
    """

    def __init__(self, originator_id: Any, data: dict[str, Any],
                 names: dict[str, Transcoding]) -> None:
        self.originator_id = originator_id
        self._data = data
        self._names = names

    def __getattr__(self, name: str) -> Any:
        if name in ("_data", "_names"):  # not set yet (a copy being built)
            raise AttributeError(name)
        # A field without its descriptor (``_READ_FIELDS``): read the same way.
        return _Field(name).__get__(self)

    def _take(self, names: tuple[str, ...]) -> list[Any]:
        """The fields ``names``, in order, as reading each attribute would give them (one
        call for all: the frequent events' handlers read several)."""
        data, got = self._data, self.__dict__
        out = []
        for name in names:
            if name in got:
                out.append(got[name])
                continue
            try:
                value = data[name]
            except KeyError:
                raise AttributeError(name) from None
            kind = type(value)
            if kind is dict and len(value) == 2 and value.get("_type_") == "datetime_iso" \
                    and type(text := value.get("_data_")) is str:
                value = _TIMES.get(text) or _time(text)
            elif kind in _DEEP:
                value = self._untag(value)
            got[name] = value
            out.append(value)
        return out

    def _awards(self, name: str) -> Iterable[tuple[Any, ...]]:
        """``award_rows`` of this event's field ``name``: ``_plain_awards`` of the stored
        list when each award is a plain one, else the field as an attribute read gives it."""
        try:
            stored = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        if name not in self.__dict__:
            rows = _plain_awards(stored)
            if rows is not None:
                return rows
        return awards_rows(getattr(self, name))

    def _touchpoint(self) -> tuple[Any, ...] | None:
        """``touchpoint_fields`` read in place from a fresh event whose fields are all plain
        (see ``_plain_awards``; the version ASCII text, the value a number, the times times
        or null), else None."""
        data = self._data
        try:
            stored, version, value, as_of, at = (
                data["awards"], data["rules_version"], data["engagement_value"],
                data["engagement_as_of"], data["occurred_at"])
        except KeyError:
            return None
        if type(version) is not str or not version.isascii() or "\x00" in version \
                or type(value) in _DEEP or len(self.__dict__) != 3:
            return None
        # ``_stored_time`` of each, inline (three or four stored times per touchpoint).
        times = _TIMES
        try:
            if as_of is not None:
                if type(as_of) is not dict or len(as_of) != 2 \
                        or as_of.get("_type_") != "datetime_iso" \
                        or type(text := as_of.get("_data_")) is not str:
                    return None
                as_of = times.get(text) or _time(text)
            if at is not None:
                if type(at) is not dict or len(at) != 2 or at.get("_type_") != "datetime_iso" \
                        or type(text := at.get("_data_")) is not str:
                    return None
                at = times.get(text) or _time(text)
        except ValueError:  # a time that does not parse: raised by the reads in order
            return None
        awards = _plain_awards(stored)
        if awards is None:
            return None
        return awards, version, value, as_of, at

    def _untag(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return value if value.isascii() and "\x00" not in value else clean_text(value)
        if kind is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                tag, data = value["_type_"], value["_data_"]
                if tag == "datetime_iso" and type(data) is str:
                    # The most frequent tag: parsed here, without the generic transcoding.
                    return _time(data)
                transcoding = self._names[tag]
                if type(transcoding) is UUIDAsHex and type(data) is str:
                    # An account's or a survivor's id: each made a UUID once (UUID() is
                    # Python code).
                    found = _UUIDS.get(data)
                    if found is None:
                        found = transcoding.decode(self._untag(data))
                        if len(_UUIDS) >= _UUIDS_MAX:
                            _UUIDS.clear()
                        _UUIDS[data] = found  # immutable, as the cached times
                    return found
                decoded = transcoding.decode(self._untag(data))
                if isinstance(decoded, datetime) and decoded.tzinfo is None:
                    return decoded.replace(tzinfo=UTC)
                return decoded
            untag = self._untag
            # Keys reach no column. Plain values (numbers, ASCII text) inline, without a call.
            return {k: v if type(v) not in _DEEP
                    or (type(v) is str and v.isascii() and "\x00" not in v) else untag(v)
                    for k, v in value.items()}
        if kind is list:
            untag = self._untag
            return [v if type(v) not in _DEEP
                    or (type(v) is str and v.isascii() and "\x00" not in v) else untag(v)
                    for v in value]
        return value


class _Field:
    """A field the handlers read, as ``EventData.__getattr__`` gives it: a non-data
    descriptor on the class, so a first read is one call (``__getattr__`` runs only after
    the instance and class lookups fail: about three times the cost on CPython 3.11, and the
    most frequent events' handlers read several fields each). The value is then kept in the
    instance's ``__dict__``, which a non-data descriptor yields to. A missing field raises
    AttributeError here, and Python then asks ``__getattr__``, which raises it again."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, event: EventData | None, owner: type | None = None) -> Any:
        if event is None:
            return self
        name = self.name
        try:
            value = event._data[name]
        except KeyError:
            raise AttributeError(name) from None
        kind = type(value)
        if kind is dict and len(value) == 2 and value.get("_type_") == "datetime_iso" \
                and type(text := value.get("_data_")) is str:
            value = _TIMES.get(text) or _time(text)
        elif kind is str:
            if not value.isascii() or "\x00" in value:
                value = clean_text(value)
        elif kind in _DEEP:
            value = event._untag(value)
        event.__dict__[name] = value
        return value


#: The fields the handlers (and the projector's page loading) read by attribute.
_READ_FIELDS = (
    "account_id", "account_key", "actor", "changes", "crossings", "data_keys", "direction",
    "engagement_as_of", "engagement_value", "event_id", "event_ids", "fit", "fit_awards",
    "from_stage", "identity_keys", "key", "last_touch_at", "links", "model", "models", "name",
    "occurred_at", "owner", "primary_key", "profile", "reason", "released_lead",
    "rules_version", "state", "survivor_id", "team", "threshold", "to_stage", "touchpoints",
    "window_days",
)
for _name in _READ_FIELDS:
    assert _name not in vars(EventData), _name  # a method or an instance attribute's name
    setattr(EventData, _name, _Field(_name))


def fields(event: Any, names: tuple[str, ...]) -> list[Any]:
    """An event's fields ``names``, in order: ``EventData._take``, or the attributes of an
    event the library decoded (a store whose transcoder is not JSON)."""
    if type(event) is EventData:
        return event._take(names)
    return [getattr(event, name) for name in names]


def _stored_time(value: Any) -> datetime | None:
    """A stored time (``{"_type_": "datetime_iso", "_data_": text}``) as a field read gives
    it; None for any other value. A time that does not parse raises ValueError."""
    if type(value) is dict and len(value) == 2 and value.get("_type_") == "datetime_iso" \
            and type(text := value.get("_data_")) is str:
        return _TIMES.get(text) or _time(text)
    return None


def _plain_awards(stored: Any) -> list[tuple[Any, ...]] | None:
    """``award_row`` of each stored award, read in place (without the untagged dict an
    attribute read makes of each), when the list holds only plain awards: their five fields,
    the ids ASCII text, the points a number, the times times (the expiry also null).
    Anything else (or a time that does not parse) is None: the caller reads the field as
    an attribute, with its errors in their order."""
    if type(stored) is not list:
        return None
    out = []
    times = _TIMES
    try:
        for award in stored:
            if type(award) is not dict or len(award) != 5:
                return None
            event_id, rule, points, at, expires = (
                award["event_id"], award["rule"], award["points"], award["at"],
                award["expires_at"])
            # ``_stored_time`` of the time, inline.
            if type(event_id) is not str or not event_id.isascii() or "\x00" in event_id \
                    or type(rule) is not str or not rule.isascii() or "\x00" in rule \
                    or (type(points) is not float and type(points) is not int) \
                    or type(at) is not dict or len(at) != 2 \
                    or at.get("_type_") != "datetime_iso" \
                    or type(text := at.get("_data_")) is not str:
                return None
            at = times.get(text) or _time(text)
            if expires is not None and (expires := _stored_time(expires)) is None:
                return None
            out.append((event_id, rule, points, at, expires))
    except (KeyError, ValueError):
        return None
    return out


def award_row(award: Any) -> tuple[Any, ...]:
    """An award's (event_id, rule, points, at, expires_at), as the ledger takes them."""
    return (award["event_id"], award["rule"], award["points"], award["at"],
            award.get("expires_at"))


def awards_rows(awards: Any) -> Iterator[tuple[Any, ...]]:
    """``award_row`` of each award of a list already read (none for an empty or null one).
    A generator: nothing is indexed (nor raises) before the handler takes the rows, after
    it has read the event's other fields."""
    if not awards:
        return
    for award in awards:
        yield award_row(award)


def award_rows(event: Any, name: str) -> Iterable[tuple[Any, ...]]:
    """``award_row`` of each award in the event's field ``name`` (a touchpoint's, a boost's):
    read straight from the stored JSON for an ``EventData``. The field is read now (a
    missing one raises AttributeError, as reading the attribute does); the awards are
    indexed as the rows are taken."""
    if type(event) is EventData:
        return event._awards(name)
    return awards_rows(getattr(event, name))


#: A touchpoint's fields besides its awards, in the order its handler reads them.
_TOUCHPOINT_FIELDS = ("rules_version", "engagement_value", "engagement_as_of", "occurred_at")


def touchpoint_fields(event: Any) -> tuple[Any, ...]:
    """A scored touchpoint's (awards as ``award_rows``, rules_version, engagement_value,
    engagement_as_of, occurred_at): the most frequent event, read in one pass from the
    stored JSON when its fields are plain (``EventData._touchpoint``), else field by field
    as attribute reads give them, in that order."""
    if type(event) is EventData:
        found = event._touchpoint()
        if found is not None:
            return found
    return (award_rows(event, "awards"), *fields(event, _TOUCHPOINT_FIELDS))
