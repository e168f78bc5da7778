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
from eventsourcing.persistence import Transcoding
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


def _time(text: str) -> datetime:
    try:
        return _TIMES[text]
    except KeyError:
        pass
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
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        kind = type(value)
        if kind is dict and len(value) == 2 and value.get("_type_") == "datetime_iso" \
                and type(text := value.get("_data_")) is str:
            value = _TIMES.get(text) or _time(text)  # the most frequent field: a time
        elif kind in _DEEP:
            value = self._untag(value)
        self.__dict__[name] = value
        return value

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
        """``award_rows`` of this event's field ``name``: the stored awards read in place
        when each is a plain one (its five fields, each text, a number, null or a time:
        what an attribute read would give, without building each award's dict), else the
        field as an attribute read gives it."""
        try:
            stored = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        if type(stored) is list and name not in self.__dict__:
            times, out = _TIMES, []
            try:
                for award in stored:
                    if type(award) is not dict or len(award) != 5:
                        break
                    row = (award["event_id"], award["rule"], award["points"], award["at"],
                           award["expires_at"])
                    for value in row:
                        kind = type(value)
                        if kind is dict:
                            if len(value) != 2 or value.get("_type_") != "datetime_iso" \
                                    or type(value.get("_data_")) is not str:
                                break
                        elif kind is list or (kind is str and (not value.isascii()
                                                               or "\x00" in value)):
                            break
                    else:
                        at, expires = row[3], row[4]
                        if type(at) is dict:
                            text = at["_data_"]
                            at = times.get(text) or _time(text)
                        if type(expires) is dict:
                            text = expires["_data_"]
                            expires = times.get(text) or _time(text)
                        out.append((row[0], row[1], row[2], at, expires))
                        continue
                    break
                else:
                    return out
            except (KeyError, ValueError):
                pass  # the attribute read below raises what a handler would meet
        return awards_rows(getattr(self, name))

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
                decoded = self._names[tag].decode(self._untag(data))
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


def fields(event: Any, names: tuple[str, ...]) -> list[Any]:
    """An event's fields ``names``, in order: ``EventData._take``, or the attributes of an
    event the library decoded (a store whose transcoder is not JSON)."""
    if type(event) is EventData:
        return event._take(names)
    return [getattr(event, name) for name in names]


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
