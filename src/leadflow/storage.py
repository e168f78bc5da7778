"""Faster persistence for eventsourcing's PostgreSQL process recorder.

The library inserts a batch as ``unnest(%s::stored_event_type[])``: psycopg dumps that array
of composite values in *text* format, escaping every payload with a regular expression in
Python, which the profile showed as the largest single cost of a 1,000-record batch. Here the
same rows go as four column arrays (``uuid[]``, ``bigint[]``, ``text[]``, ``bytea[]``) that
psycopg dumps in binary, with no per-value escaping. Everything else is the library's: the
table lock that keeps notification ids in commit order, the NOTIFY, the tracking insert in the
same transaction, and retries. The new notification ids are not fetched back (no ``RETURNING``):
leadflow never uses them, and turning each into a row dict cost as much as the insert.

Selected with eventsourcing's own ``PROCESS_RECORDER_TOPIC`` setting (see ``config.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier


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
