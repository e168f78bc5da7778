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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import OperationalError, StoredEvent
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

#: The advisory lock every leadflow process takes around its DDL ("leadflow" in ASCII; the
#: projector's schema set-up takes the same one).
SCHEMA_LOCK_KEY = 0x6C65_6164_666C_6F77


class LeadflowPostgresProcessRecorder(PostgresProcessRecorder):
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
