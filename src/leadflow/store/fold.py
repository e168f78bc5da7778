"""One stored event per cause: the events one record (or one clock step, one command) makes
an aggregate trigger are stored as ONE row.

The domain keeps small, explicit events (``TouchpointScored``, ``StageChanged``,
``OwnerAssigned``…): they are what the aggregates apply and what the projections follow. What
changes is the row: every event a record causes on a lead goes into one stored event, the
*envelope*, whose payload is

    {"cause": {"record": {"event_id": …, "type": …, "occurred_at": …}},
     "events": [["TouchpointScored", {…}], ["StageChanged", {…}], …]}

(``cause`` is ``{"clock": …}`` for time-driven transitions and ``{"command": …}`` for a
person's or the operator's decision). Storing, chaining and inserting a row is what costs
(~40 µs a row against ~4 µs to build an event), so a record costs one row, not three.

Versions. The envelope is stored at the version of its first event and holds the next ones
in order, so an aggregate's versions stay dense (``aggregate.version`` counts events) and
optimistic concurrency keeps its teeth: two writers appending from the same version both
insert a row at that version + 1, and the second fails on the (id, version) key. A row
always starts right after the previous row's last event; ``expand`` and the chain's
``verify_events`` check that.

An envelope's topic is the aggregate's topic + ``.Recorded`` (``.Opened`` when its first
event creates the aggregate, so "every lead ever created" stays one topic filter). A cause
that made a single event stores that event as before, under its own topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.persistence import EventStore, Mapper, StoredEvent
from eventsourcing.utils import resolve_topic

from leadflow.store.personal import PII, Vault

RECORDED = ".Recorded"
OPENED = ".Opened"

Cause = dict[str, Any]


def is_envelope(topic: str) -> bool:
    return topic.endswith(RECORDED) or topic.endswith(OPENED)


def envelope_topic(first_event_topic: str) -> str:
    """``leadflow.domain:Lead.Created`` -> ``leadflow.domain:Lead.Opened``; any other first
    event -> ``….Lead.Recorded``."""
    prefix, name = first_event_topic.rsplit(".", 1)
    return prefix + (OPENED if name == "Created" else RECORDED)


def envelope_topics(aggregate_topic: str) -> tuple[str, str]:
    """Both envelope topics of an aggregate class topic (``leadflow.domain:Lead``)."""
    return aggregate_topic + RECORDED, aggregate_topic + OPENED


def event_count(payload: bytes) -> int:
    """How many events a (plain, unsealed or sealed) envelope payload holds; raises
    ValueError for one that is no envelope."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = json.loads(payload)  # what orjson refuses and the engine's encoder writes
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events:
        raise ValueError("the envelope holds no events")
    return len(events)


def split(pending: Sequence[Any], cuts: Sequence[tuple[int, Cause]]
          ) -> Iterator[tuple[Sequence[Any], Cause | None]]:
    """An aggregate's pending events in groups, one per cause: ``cuts`` holds (end index,
    cause) pairs in order; events after the last cut form a group of their own."""
    start = 0
    for end, cause in cuts:
        if end > start:
            yield pending[start:end], cause
            start = end
    if start < len(pending):
        yield pending[start:], None


class Expander:
    """Stored rows back to domain events, envelopes opened, personal values decrypted (when
    the person's data key is still there, see store/personal.py)."""

    def __init__(self, mapper: Mapper[UUID], vault: Vault) -> None:
        self.mapper = mapper
        self.vault = vault
        self._classes: dict[str, Any] = {}
        self._versions: dict[Any, int] = {}

    def _class(self, topic: str) -> Any:
        cls = self._classes.get(topic)
        if cls is None:
            cls = self._classes[topic] = resolve_topic(topic)
        return cls

    def _event(self, cls: Any, state: dict[str, Any]) -> Any:
        class_version = self._versions.get(cls)
        if class_version is None:
            # Once per class: a miss of getattr's default formats an AttributeError's message.
            class_version = self._versions[cls] = getattr(cls, "class_version", 1)
        from_version = state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event

    def plain(self, state: bytes) -> bytes:
        mapper = self.mapper
        if mapper.cipher:
            state = mapper.cipher.decrypt(state)
        if mapper.compressor:
            state = mapper.compressor.decompress(state)
        return state

    def expand(self, stored: StoredEvent) -> list[Any]:
        """The domain events a stored row holds (one, or an envelope's), in version order."""
        return self.open(stored)[1]

    def open(self, stored: StoredEvent) -> tuple[Cause | None, list[Any]]:
        """A row's cause (None: a single event, stored without one) and its events."""
        topic = stored.topic
        data: dict[str, Any] = self.mapper.transcoder.decode(self.plain(stored.state))
        vault = self.vault
        originator_id = cast(UUID, stored.originator_id)
        if not is_envelope(topic):
            if PII in data:
                vault.open(topic.partition(":")[2], originator_id, data)
            data["originator_id"] = stored.originator_id
            data["originator_version"] = stored.originator_version
            return None, [self._event(self._class(topic), data)]
        events = data.get("events")
        if not isinstance(events, list) or not events:
            raise ValueError(f"envelope {topic} at version {stored.originator_version} of "
                             f"{stored.originator_id} holds no events")
        prefix = topic.rsplit(".", 1)[0]
        version = stored.originator_version
        out: list[Any] = []
        for name, state in events:
            full = f"{prefix}.{name}"
            if PII in state:
                vault.open(full.partition(":")[2], originator_id, state)
            state["originator_id"] = stored.originator_id
            state["originator_version"] = version
            out.append(self._event(self._class(full), state))
            version += 1
        chain = data.get("chain")
        if chain is not None:
            # The row's tamper-evidence link: replaying its last event moves the lead's head.
            out[-1].__dict__["chain"] = chain
        cause = data.get("cause")
        return cause if isinstance(cause, dict) else None, out

    def expand_all(self, rows: Iterable[StoredEvent]) -> Iterator[Any]:
        for row in rows:
            yield from self.expand(row)


class FoldingEventStore(EventStore[UUID]):
    """The library's event store reading envelopes as the events they hold.

    ``gt``/``lte`` are event versions, as the repository means them: a row is selected by
    its first version (``gt`` is always the end of a row: an aggregate's version), and the
    events of a row beyond ``lte`` are dropped. ``limit`` counts rows.
    """

    def __init__(self, mapper: Mapper[UUID], recorder: Any, vault: Vault) -> None:
        super().__init__(mapper, recorder)
        self.expander = Expander(mapper, vault)

    def get(self, originator_id: UUID, *, gt: int | None = None, lte: int | None = None,
            desc: bool = False, limit: int | None = None) -> Iterator[Any]:
        rows = self.recorder.select_events(originator_id=originator_id, gt=gt, lte=lte,
                                           desc=desc, limit=limit)
        events: Iterator[Any]
        if desc:
            events = (e for row in rows for e in reversed(self.expander.expand(row)))
        else:
            events = self.expander.expand_all(rows)
        if lte is None:
            return events
        return (e for e in events if e.originator_version <= lte)
