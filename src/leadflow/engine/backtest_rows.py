"""A backtest's leads read from their stored rows without making domain events (issue 12).

``Auditor.preload`` turns every stored row into domain events: the library's JSON decoder
calls its object hook on every object of the row (each award, each tagged time), personal
values are opened, an event object is made per event. A backtest reads a handful of fields
of a few event classes (``backtest_read._fold``). ``RowDecoder`` parses a row with orjson (7 us a
row against 19 us for ``json`` on a quick-bench store, collector off), opens its personal
values as the Expander opens them, and hands the fold each event's class and state with only
the fields the fold reads untagged, by the transcoder's own hook applied bottom-up as
``json`` applies it: the fold sees the values the events would hold.

Whatever it is not sure to read as the Expander would gives None, and the lead is then read
the Auditor's way: a row orjson refuses (a number that is not finite or beyond 64 bits, a
lone surrogate: ``json`` reads them), a tag of a type the transcoder does not know or not
written compactly (the hook would raise, or the row was not written by the engine), an event
stored with its class version (upcasting), an unknown event class, a transcoder configured
in place of the library's JSON one. Only a value of a known type that no longer decodes
(a time edited by hand to no time) in a field the fold does not read goes unnoticed: the
Auditor would leave that lead out as unloadable, this reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, StoredEvent
from eventsourcing.utils import resolve_topic

from leadflow.store.fold import is_envelope
from leadflow.store.personal import PII

#: An event as the fold reads it: its class and its state (``__dict__`` of the event).
Pair = tuple[type, dict[str, Any]]
#: What a topic says of its events: class, name for the vault, fields read, class version 1.
Known = tuple[type, str, tuple[str, ...], bool]

fromisoformat = datetime.fromisoformat


class RowDecoder:
    """Stored rows of one aggregate to (event class, state) pairs (see the module's doc).

    ``reads`` names, per event class, the fields the caller reads: those are untagged; the
    classes it does not name are passed on with their states as stored (tags and all)."""

    def __init__(self, app: Any, reads: Mapping[type, tuple[str, ...]]) -> None:
        codec = app.codec
        self.plain = codec.expander.plain
        self.vault = codec.vault
        self.reads = reads
        transcoder = app.mapper.transcoder
        self.usable = (isinstance(transcoder, JSONTranscoder)
                       and type(transcoder).decode is JSONTranscoder.decode
                       and type(transcoder)._decode_obj is JSONTranscoder._decode_obj)
        self.hook = transcoder._decode_obj if self.usable else None
        # Every tag in a row the engine wrote is one of these (both encoders are compact).
        names = sorted(transcoder.names if self.usable else (),
                       key=lambda name: name != "datetime_iso")
        self.tags = tuple(f'"_type_":"{name}"'.encode() for name in names)
        # Times are most of the tags the fold reads: decoded inline when the transcoding
        # is the library's.
        self.times = self.usable and type(transcoder.names.get("datetime_iso")) is DatetimeAsISO
        mapper = app.mapper
        self.protected = mapper.cipher is not None or mapper.compressor is not None
        # Per row topic, what its event's topic says (``Known``), or for an envelope what
        # each event's says, by event name.
        self._rows: dict[str, Known | dict[str, Known]] = {}

    def pairs(self, rows: Sequence[StoredEvent]) -> list[Pair] | None:
        """The events of ``rows`` (one aggregate's, in version order), or None when unsure;
        raises what decoding raises (the caller then reads the rows the Auditor's way)."""
        if not self.usable:
            return None
        out: list[Pair] = []
        tags = self.tags
        plain = self.plain if self.protected else None
        kinds, take = self._rows, self._take
        for row in rows:
            raw = row.state if plain is None else plain(row.state)
            count = raw.count(b'"_type_"')
            if count:
                for tag in tags:  # the commonest first: most rows tag times only
                    count -= raw.count(tag)
                    if not count:
                        break
                else:
                    return None
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None
            topic, version, originator_id = row.topic, row.originator_version, row.originator_id
            kind = kinds.get(topic) or self._row_kind(topic)
            if isinstance(kind, tuple):  # a single event
                if not take(kind, originator_id, version, data):
                    return None
                out.append((kind[0], data))
                continue
            events = data.get("events")
            if not isinstance(events, list) or not events:
                return None
            for name, state in events:
                known = kind.get(name)
                if known is None:
                    known = kind[name] = self._known(f"{topic.rsplit('.', 1)[0]}.{name}")
                if not take(known, originator_id, version, state):
                    return None
                out.append((known[0], state))
                version += 1
        return out

    def _row_kind(self, topic: str) -> Known | dict[str, Known]:
        kind = self._rows[topic] = {} if is_envelope(topic) else self._known(topic)
        return kind

    def _known(self, topic: str) -> Known:
        cls = resolve_topic(topic)
        return (cls, topic.partition(":")[2], self.reads.get(cls, ()),
                getattr(cls, "class_version", 1) == 1)

    def _take(self, known: Known, originator_id: Any, version: int, state: dict[str, Any]
              ) -> bool:
        """One event's state made as the Expander makes it, in the fields the caller reads;
        False when unsure (upcasting)."""
        _, name, fields, current = known
        if not current or "class_version" in state or "_type_" in state:
            return False  # upcasting, or a state the hook would take for a tag
        # As json's hook does, before the vault puts the personal values back.
        for field in fields:
            value: Any = state.get(field)
            kind = type(value)
            if kind is dict:
                time = value.get("_data_")
                if self.times and type(time) is str and len(value) == 2 and \
                        value.get("_type_") == "datetime_iso":
                    state[field] = fromisoformat(time)  # DatetimeAsISO.decode, without calls
                else:
                    state[field] = self._untag(value)
            elif kind is list:
                state[field] = self._untag(value)
        if PII in state:
            self.vault.open(name, originator_id, state)
        state["originator_id"] = originator_id
        state["originator_version"] = version
        return True

    def _untag(self, value: Any) -> Any:
        """``value`` as ``json`` with the transcoder's hook makes it: each object, innermost
        first, given to the hook when it has exactly the keys of a tag."""
        if type(value) is list:
            for index, item in enumerate(value):
                kind = type(item)
                if kind is dict or kind is list:
                    value[index] = self._untag(item)
            return value
        for key, item in value.items():
            kind = type(item)
            if kind is dict or kind is list:
                value[key] = self._untag(item)  # a value replaced, the dict's size unchanged
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            hook = cast(Any, self.hook)
            return hook(value)
        return value
