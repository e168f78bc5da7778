"""Events to stored bytes and back: one encoding per event, the hash-chain link appended to
lead events, the configured compressor/cipher, and bulk reads of many aggregates' events.

This is where the bytes live: the engine hands aggregates in and gets ``StoredEvent`` rows
out (and the reverse), so the domain never sees an encoding.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import AggregateRecorder, Mapper, StoredEvent
from eventsourcing.sqlite import SQLiteAggregateRecorder
from eventsourcing.utils import get_topic

from leadflow.store import fold
from leadflow.store.keys import Keyring
from leadflow.store.personal import Vault

if TYPE_CHECKING:
    from leadflow.store.chain import LeadVerification


def _version(row: StoredEvent) -> int:
    return row.originator_version


def _first_int(item: tuple[UUID, Any]) -> int:
    # UUIDs order as their ints: compared in C, not by UUID.__lt__ (Python) n log n times.
    return item[0].int


def _is_postgres(recorder: Any) -> bool:
    """An eventsourcing PostgreSQL recorder (without importing eventsourcing.postgres, which
    imports psycopg: if it is not loaded, the recorder cannot be one of its)."""
    module = sys.modules.get("eventsourcing.postgres")
    return module is not None and isinstance(recorder, module.PostgresAggregateRecorder)


class _EventClass:
    """What encoding needs of an event class, worked out once per class: its topic, its
    name in the vault's terms (``Lead.Created``), its name in an envelope (``Created``)
    and its class version (a miss of ``getattr(cls, "class_version", 1)`` formats an
    AttributeError's message, for each event)."""

    __slots__ = ("class_version", "name", "topic", "vault_name")

    def __init__(self, topic: str, class_version: int) -> None:
        self.topic = topic
        self.vault_name = topic.partition(":")[2]
        self.name = topic.rsplit(".", 1)[1]
        self.class_version = class_version


class EventCodec:
    """Encodes aggregates' pending events for the recorder, and reads stored events back.

    Personal values are sealed with their aggregate's data key as each event is encoded,
    and opened as rows are expanded (store/personal.py)."""

    def __init__(self, mapper: Mapper[UUID], recorder: AggregateRecorder,
                 keyring: Keyring, vault: Vault) -> None:
        self.mapper = mapper
        self.recorder = recorder
        self.keyring = keyring
        self.vault = vault
        self._classes: dict[type, _EventClass] = {}
        self.expander = fold.Expander(mapper, vault)

    def select_many(self, ids: list[UUID]) -> dict[UUID, list[StoredEvent]]:
        """Every stored event of many aggregates, by aggregate, in version order."""
        recorder: Any = self.recorder
        out: dict[UUID, list[StoredEvent]] = {}
        if _is_postgres(recorder):
            # By id, through the primary key, only while the planner knows how few rows an
            # id has (store/statistics.py): rescore reads every lead this way.
            keeper = getattr(recorder, "statistics", None)  # leadflow's recorder keeps them
            if keeper is not None:
                keeper.before_bulk_read()
            # Imported here: only a PostgreSQL store needs psycopg (start-up of the embedded
            # store's commands).
            from psycopg.rows import tuple_row
            from psycopg.sql import SQL, Identifier

            # Not sorted by the server: it sorted the rows payloads and all (an external
            # merge on disk for 500 leads of the quick bench: 57 ms of its 58 ms), the few
            # rows of each aggregate are put in version order below, the aggregates in id
            # order as before.
            statement = SQL("SELECT originator_id, originator_version, topic, state FROM {}.{} "
                            "WHERE originator_id = ANY(%b)").format(
                Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            # Tuples transferred in binary (as the recorder's select_rows): no row dict and no
            # hex parsing of each payload. 3,000 leads (28,034 rows): 0.10 s of CPU against
            # 0.29 s, 0.30 s wall against 0.60-0.67 s. The ids go in binary too (%b): 0.3 ms
            # of CPU for 500 against 1.6 ms as a text array.
            # One statement in autocommit: its own snapshot, one round trip (no BEGIN and
            # ROLLBACK around it; store/postgres.py ``reading``).
            with recorder.datastore.get_connection() as conn, \
                    conn.cursor(row_factory=tuple_row, binary=True) as cursor:
                cursor.execute(statement, (ids,))
                for found, version, topic, state in cursor.fetchall():
                    oid = found if isinstance(found, UUID) else UUID(str(found))
                    out.setdefault(oid, []).append(StoredEvent(oid, version, topic,
                                                               bytes(state)))
            for rows in out.values():
                rows.sort(key=_version)
            out = dict(sorted(out.items(), key=_first_int))
        elif isinstance(recorder, SQLiteAggregateRecorder):
            with recorder.datastore.transaction(commit=False) as cursor:
                for start in range(0, len(ids), 500):
                    chunk = [i.hex for i in ids[start:start + 500]]
                    cursor.execute(
                        "SELECT originator_id, originator_version, topic, state FROM "
                        f"{recorder.events_table_name} WHERE originator_id IN "
                        f"({','.join('?' * len(chunk))}) "
                        "ORDER BY originator_id, originator_version", chunk)
                    for oid_hex, version, topic, state in cursor.fetchall():
                        oid = UUID(str(oid_hex))
                        out.setdefault(oid, []).append(StoredEvent(oid, version, topic,
                                                                   bytes(state)))
        else:  # in-memory store: asking one by one is cheap
            for aggregate_id in ids:
                found = list(recorder.select_events(aggregate_id))
                if found:
                    out[aggregate_id] = found
        # Their data keys in one query too, before the rows are expanded.
        self.vault.preload(out)
        return out

    def stored(self, aggregate: Aggregate,
               cuts: Sequence[tuple[int, fold.Cause]] = (),
               cause: fold.Cause | None = None) -> list[StoredEvent]:
        """The aggregate's pending events as stored events (``stored_many`` of one)."""
        return self.stored_many([(aggregate, cuts)], cause)

    def stored_many(self, items: Sequence[tuple[Aggregate, Sequence[tuple[int, fold.Cause]]]],
                    cause: fold.Cause | None = None) -> list[StoredEvent]:
        """The pending events of several aggregates as stored events, in the given order, each
        encoded exactly once: one row per cause (each aggregate's ``cuts``, see fold.py), a
        single event under its own topic.

        Every row gets its keyed chain link (see chain.py) appended to the encoded bytes,
        so the tamper evidence costs one HMAC per row, not a second encoding. An aggregate
        remembers its head (``chain_head``: set by replaying a lead, by storing any
        aggregate); one not yet known is read from its newest row.

        Done in three passes over all the rows (their states with personal values sealed,
        then their JSON, then their links), not row by row: each pass's code and data stay
        in the CPU's caches, which row by row, between a batch's other work, they did not.
        """
        # The chain module is imported where rows are written or verified, not with the codec:
        # a command that only reads (lead show) does not need it (start-up, issue 15).
        from leadflow.store import chain

        rows: list[tuple[Aggregate, UUID, int, str, Any]] = []
        for aggregate, cuts in items:
            pending = aggregate.collect_events()
            for events, why in fold.split(pending, cuts):
                if len(events) == 1:
                    originator_id, version, known, state = self._state(events[0])
                    rows.append((aggregate, originator_id, version, known.topic, state))
                else:
                    rows.append((aggregate, *self._envelope(events, why or cause)))
        encode = self.mapper.transcoder.encode
        payloads = [encode(row[4]) for row in rows]
        keyring = self.keyring
        out: list[StoredEvent] = []
        heads: dict[int, tuple[Aggregate, str]] = {}
        for (aggregate, originator_id, version, topic, _), encoded in zip(rows, payloads,
                                                                          strict=True):
            known_head = heads.get(id(aggregate))
            if known_head is not None:
                head = known_head[1]
            elif version == Aggregate.INITIAL_VERSION:
                head = chain.genesis(aggregate.id)
            else:
                head = getattr(aggregate, "chain_head", None) or self.chain_head(aggregate.id)
            sealed, head = chain.seal(keyring, head, originator_id, version, topic, encoded)
            heads[id(aggregate)] = (aggregate, head)
            out.append(StoredEvent(originator_id, version, topic, self.protect(sealed)))
        for aggregate, head in heads.values():
            # An instance attribute on any aggregate (Lead declares it): the next commit of
            # the cached aggregate chains on without reading its newest row back.
            aggregate.chain_head = head  # type: ignore[attr-defined]
        return out

    def _class(self, cls: type) -> _EventClass:
        found = self._classes.get(cls)
        if found is None:
            found = self._classes[cls] = _EventClass(get_topic(cls),
                                                     getattr(cls, "class_version", 1))
        return found

    def _state(self, event: Any) -> tuple[UUID, int, _EventClass, dict[str, Any]]:
        known = self._class(type(event))
        state = dict(event.__dict__)
        originator_id = state.pop("originator_id")
        version = state.pop("originator_version")
        if known.class_version > 1:
            state["class_version"] = known.class_version
        self.vault.seal(known.vault_name, originator_id, state,
                        first=version == Aggregate.INITIAL_VERSION)
        return originator_id, version, known, state

    def encode_event(self, event: Any) -> tuple[UUID, int, str, bytes]:
        originator_id, version, known, state = self._state(event)
        return originator_id, version, known.topic, self.mapper.transcoder.encode(state)

    def encode_envelope(self, events: Sequence[Any], cause: fold.Cause | None
                        ) -> tuple[UUID, int, str, bytes]:
        """One row for several events of one aggregate and one cause (see fold.py)."""
        originator_id, first, topic, envelope = self._envelope(events, cause)
        return originator_id, first, topic, self.mapper.transcoder.encode(envelope)

    def _envelope(self, events: Sequence[Any], cause: fold.Cause | None
                  ) -> tuple[UUID, int, str, dict[str, Any]]:
        items: list[list[Any]] = []
        first_topic = ""
        originator_id: UUID | None = None
        first = 0
        for event in events:
            oid, version, known, state = self._state(event)
            if originator_id is None:
                originator_id, first, first_topic = oid, version, known.topic
            items.append([known.name, state])
        assert originator_id is not None
        return (originator_id, first, fold.envelope_topic(first_topic),
                {"cause": cause or {"command": "unspecified"}, "events": items})

    def protect(self, payload: bytes) -> bytes:
        """Compress and encrypt as the library's mapper would (when configured)."""
        if self.mapper.compressor:
            payload = self.mapper.compressor.compress(payload)
        if self.mapper.cipher:
            payload = self.mapper.cipher.encrypt(payload)
        return payload

    def plain(self, payload: bytes) -> bytes:
        if self.mapper.cipher:
            payload = self.mapper.cipher.decrypt(payload)
        if self.mapper.compressor:
            payload = self.mapper.compressor.decompress(payload)
        return payload

    def chain_head(self, aggregate_id: UUID) -> str:
        from leadflow.store import chain

        stored = self.recorder.select_events(aggregate_id, desc=True, limit=1)
        if not stored:
            return chain.genesis(aggregate_id)
        return chain.unseal(self.plain(stored[0].state))[1] or chain.genesis(aggregate_id)

    @property
    def protected(self) -> bool:
        return self.mapper.cipher is not None or self.mapper.compressor is not None

    def verify(self, aggregate_id: UUID) -> LeadVerification:
        """Recompute an aggregate's chain from its stored rows (no cache, no domain)."""
        from leadflow.store import chain

        return chain.verify_events(aggregate_id, self.recorder.select_events(aggregate_id),
                                   self.plain if self.protected else None, self.keyring)
