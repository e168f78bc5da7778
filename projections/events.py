"""The stored events the read models follow, read straight from their JSON.

``KINDS`` names each followed topic; ``EventData`` gives a handler a stored event's fields
without building the domain event (``load_payload`` reads what orjson refuses).
"""

from __future__ import annotations

import json
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
                "StateRestored", "Forgotten")
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


class EventData:
    """A stored event's fields, read straight from its JSON without building the event.

    orjson parses the payload; eventsourcing's ``{"_type_", "_data_"}`` values (datetimes,
    UUIDs) are turned back into objects only for the fields a handler reads. This is what
    lets a rebuild skip the library's per-event decoding and object construction. Text comes
    out without the characters PostgreSQL text cannot hold (see ``db.clean_text``), so keys
    the handlers aggregate by (source, owner) are already what the tables will hold; times
    without a zone are taken as UTC.
    """

    __slots__ = ("_data", "_names", "_read", "originator_id")

    def __init__(self, originator_id: Any, data: dict[str, Any],
                 names: dict[str, Transcoding]) -> None:
        self.originator_id = originator_id
        self._data = data
        self._names = names
        self._read: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        # Handlers read some fields several times (times, awards): untag each once.
        try:
            return self._read[name]
        except KeyError:
            pass
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        self._read[name] = value = self._untag(value)
        return value

    def _untag(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return value if value.isascii() and "\x00" not in value else clean_text(value)
        if kind is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                tag, data = value["_type_"], value["_data_"]
                if tag == "datetime_iso" and type(data) is str:
                    # The most frequent tag: parsed here, without the generic transcoding.
                    decoded = datetime.fromisoformat(data)
                    return decoded if decoded.tzinfo is not None else \
                        decoded.replace(tzinfo=UTC)
                decoded = self._names[tag].decode(self._untag(data))
                if isinstance(decoded, datetime) and decoded.tzinfo is None:
                    return decoded.replace(tzinfo=UTC)
                return decoded
            return {k: self._untag(v) for k, v in value.items()}  # keys reach no column
        if kind is list:
            return [self._untag(v) for v in value]
        return value
