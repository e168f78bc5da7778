"""Faster persistence for eventsourcing's PostgreSQL process recorder.

The library inserts a batch as ``unnest(%s::stored_event_type[])``: psycopg dumps that array
of composite values in *text* format, escaping every payload with a regular expression in
Python, which the profile showed as the largest single cost of a 1,000-record batch. Here the
same rows go as four column arrays (``uuid[]``, ``bigint[]``, ``text[]``, ``bytea[]``) that
psycopg dumps in binary, with no per-value escaping. Everything else is the library's: the
table lock that keeps notification ids in commit order, the NOTIFY, the tracking insert in the
same transaction, and retries. The new notification ids are not fetched back (no ``RETURNING``):
leadflow never uses them, and turning each into a row dict cost as much as the insert.

Creating the tables is serialised between processes with an advisory lock: every process that
opens the store runs the library's idempotent DDL, and PostgreSQL fails two sessions that run
``CREATE OR REPLACE FUNCTION`` (or create the same type) at the same moment with "tuple
concurrently updated" — a consumer of a group started beside another, or beside any CLI call,
died at start-up that way.

Selected with eventsourcing's own ``PROCESS_RECORDER_TOPIC`` setting (see ``config.py``).

Every leadflow recorder (PostgreSQL, SQLite, in-memory) also keeps the **record-id index**:
one row per applied inbound record, ``event_id -> (digest of the record's content, lead)``,
written in the same transaction as the events the record produced (``insert_events(...,
record_ids=[...])``). It is bookkeeping, not a domain event: it gives idempotency teeth (the
same id with other content is refused as a conflict instead of silently dropped, and one id
can never sit on two leads) with one indexed lookup per batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from eventsourcing.popo import POPOProcessRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

#: The advisory lock every leadflow process takes around its DDL ("leadflow" in ASCII; the
#: projector's schema set-up takes the same one).
SCHEMA_LOCK_KEY = 0x6C65_6164_666C_6F77

RECORD_IDS_TABLE = "leadflow_record_ids"


class RecordId(NamedTuple):
    """An applied record: its producer ``event_id``, content digest, and the lead (or
    ``None`` for anonymous interest) it was applied to."""

    event_id: str
    digest: bytes
    lead_id: UUID | None


class RecordIdIndex:
    """What every leadflow recorder offers on top of the library's process recorder."""

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        raise NotImplementedError


def record_ids_of(kwargs: dict[str, Any]) -> list[RecordId]:
    return list(kwargs.get("record_ids") or ())


class LeadflowPostgresProcessRecorder(PostgresProcessRecorder, RecordIdIndex):
    """``PostgresProcessRecorder`` whose batch insert sends column arrays in binary."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name,
                         tracking_table_name=tracking_table_name)
        id_type = self.datastore.originator_id_type  # "uuid" or "text"
        self.insert_columns_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
        ).format(schema=Identifier(self.datastore.schema),
                 table=Identifier(self.events_table_name),
                 id_type=SQL(id_type))  # a fixed type name from the datastore, not user input
        ids_table = Identifier(self.datastore.schema, RECORD_IDS_TABLE)
        self.sql_create_statements.append(SQL(
            "CREATE TABLE IF NOT EXISTS {} (event_id text PRIMARY KEY, digest bytea NOT NULL, "
            "lead_id uuid)").format(ids_table))
        self.insert_record_ids_statement = SQL(
            "INSERT INTO {} (event_id, digest, lead_id) "
            "SELECT * FROM unnest(%b::text[], %b::bytea[], %b::uuid[])").format(ids_table)
        self.select_record_ids_statement = SQL(
            "SELECT event_id, digest, lead_id FROM {} WHERE event_id = ANY(%s)").format(ids_table)

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        if not event_ids:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.select_record_ids_statement, (list(event_ids),), prepare=True)
            return {row["event_id"]: RecordId(row["event_id"], bytes(row["digest"]),
                                              row["lead_id"]) for row in curs.fetchall()}

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        ids = record_ids_of(kwargs)
        if ids:
            # A primary-key violation (the same event_id applied by another writer at the same
            # moment) aborts the whole transaction as an IntegrityError: the batch is retried
            # and then sees the other writer's row.
            curs.execute(self.insert_record_ids_statement,
                         ([r.event_id for r in ids], [r.digest for r in ids],
                          [r.lead_id for r in ids]), prepare=True)

    def create_table(self) -> None:
        # The lock is held by a connection of its own for the whole of the library's DDL,
        # which spans several transactions (each CREATE TYPE has its own) on pool connections:
        # a pool of one connection could not lend a second one while the first held the lock.
        pool = self.datastore.pool
        given = pool.kwargs() if callable(pool.kwargs) else pool.kwargs  # psycopg_pool allows both
        kwargs = {k: v for k, v in (given or {}).items() if k != "row_factory"}
        if pool.get_password_func is not None:  # as the pool does for each new connection
            kwargs["password"] = pool.get_password_func()
        try:
            conn = psycopg.connect(**kwargs, autocommit=True,
                                   connect_timeout=max(1, int(pool.timeout)))
        except psycopg.OperationalError as exc:  # the library's error, as its pool would raise
            raise OperationalError(str(exc)) from exc
        with conn:
            conn.execute("SELECT pg_advisory_lock(%s)", [SCHEMA_LOCK_KEY])
            # Closing the connection releases the lock, also when the DDL fails.
            super().create_table()

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **_: Any,
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        # unnest() of several arrays yields their elements side by side, in array order, so
        # notification ids follow the order of stored_events as with the library's insert.
        curs.execute(
            self.insert_columns_statement,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
            prepare=True,
        )

    def _fetch_ids_after_insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **_: Any,
    ) -> Sequence[int] | None:
        return None


class LeadflowSQLiteProcessRecorder(SQLiteProcessRecorder, RecordIdIndex):
    """The library's SQLite process recorder plus the record-id index (same transaction)."""

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(),
                f"CREATE TABLE IF NOT EXISTS {RECORD_IDS_TABLE} (event_id TEXT PRIMARY KEY, "
                "digest BLOB NOT NULL, lead_id TEXT) WITHOUT ROWID"]

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        out: dict[str, RecordId] = {}
        unique = list(dict.fromkeys(event_ids))
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                c.execute(f"SELECT event_id, digest, lead_id FROM {RECORD_IDS_TABLE} "
                          f"WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)
                for event_id, digest, lead_id in c.fetchall():
                    out[event_id] = RecordId(event_id, bytes(digest),
                                             UUID(lead_id) if lead_id else None)
        return out

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        ids = record_ids_of(kwargs)
        if ids:
            try:
                c.executemany(f"INSERT INTO {RECORD_IDS_TABLE} VALUES (?, ?, ?)",
                              [(r.event_id, r.digest, r.lead_id.hex if r.lead_id else None)
                               for r in ids])
            except sqlite3.IntegrityError as exc:
                raise IntegrityError(str(exc)) from exc
        return returning


class LeadflowPOPOProcessRecorder(POPOProcessRecorder, RecordIdIndex):
    """The in-memory process recorder plus the record-id index (for tests and demos)."""

    def __init__(self) -> None:
        super().__init__()
        self._record_ids: dict[str, RecordId] = {}
        self._record_ids_lock = threading.Lock()

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        with self._record_ids_lock:
            return {e: self._record_ids[e] for e in event_ids if e in self._record_ids}

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        ids = record_ids_of(kwargs)
        taken = [r.event_id for r in ids if r.event_id in self._record_ids]
        if taken or len({r.event_id for r in ids}) < len(ids):
            raise IntegrityError(f"record ids already recorded: {taken[:5]}")

    def _update_table(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        out = super()._update_table(stored_events, **kwargs)
        with self._record_ids_lock:
            self._record_ids.update((r.event_id, r) for r in record_ids_of(kwargs))
        return out


def recorder_topic_for(module: str) -> str | None:
    """The leadflow process recorder for an eventsourcing persistence module, by topic."""
    topics = {"eventsourcing.postgres": f"{__name__}:LeadflowPostgresProcessRecorder",
              "eventsourcing.sqlite": f"{__name__}:LeadflowSQLiteProcessRecorder"}
    return topics.get(module)

