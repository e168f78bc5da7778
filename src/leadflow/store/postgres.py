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

Selected with eventsourcing's own ``PROCESS_RECORDER_TOPIC`` setting (``config.py``,
``recorders.recorder_topic_for``). A module of its own, imported only when the PostgreSQL
persistence module is configured: it imports psycopg, which the embedded SQLite store does not
need (``lead show`` starts without it). The record-id index it keeps is described in
``recorders``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.abc import PQGen
from psycopg.generators import send
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier

from leadflow.store import bookkeeping, pgarrays
from leadflow.store.arrays import BigintArray, ByteaArray, TextArray, UuidArray
from leadflow.store.bookkeeping import Target
from leadflow.store.pgsql import Statements
from leadflow.store.recorders import (
    _NIL,
    SCHEMA_LOCK_KEY,
    Due,
    PageRow,
    RecordId,
    RecordIdIndex,
    ScannedRow,
    record_ids_of,
    writer_mark_of,
)
from leadflow.store.statistics import StatisticsKeeper
from leadflow.store.timers import (
    CLOCK_MOVED_ON,
    CLOCK_POSITION,
    check_reads,
    timer_writes,
    timers_exact,
    timers_of,
)
from leadflow.store.timers import (
    EPOCH as _EPOCH,
)

# The typed column arrays' binary dumpers (store.arrays), before any connection is made.
pgarrays.register()


class _SendAll(psycopg.Pipeline):
    """psycopg's pipeline that has sent everything it queued before it waits for results
    (``LeadflowPostgresProcessRecorder._write``)."""

    def _communicate_gen(self) -> PQGen[None]:
        yield from super()._communicate_gen()
        # psycopg's loop may return with part of the last command still in libpq's buffer:
        # send the rest (reading what the server sends meanwhile) before anything waits.
        yield from send(self.pgconn)


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
        self.sql = Statements.of(self.datastore.schema, self.events_table_name,
                                 self.datastore.originator_id_type)
        self.sql_create_statements.extend(self.sql.ddl)
        # Autovacuum never gets to analyse a table every commit locks (statistics.py).
        self.statistics = StatisticsKeeper(self.datastore, self.datastore.schema,
                                           self.events_table_name)

    shared = True

    def _ids(self, ids: list[Any]) -> list[Any]:
        """Aggregate ids as a parameter: dumped in one pass (``store.arrays``) when the
        store's ids are uuids, as the library's lists otherwise."""
        return UuidArray(ids) if self.datastore.originator_id_type == "uuid" else ids

    @contextmanager
    def reading(self) -> Iterator[Cursor[DictRow]]:
        """A cursor for one read-only statement, outside a transaction block.

        The pool's connections are in autocommit mode (the library's), so the statement is a
        transaction of its own: one snapshot, as in ``transaction(commit=False)``, for one
        round trip to the server instead of three (BEGIN, the statement, ROLLBACK). A batch
        reads ~10 times (its mark, identities, aggregates, keys, record ids, queue): the two
        extra round trips cost ~0.5 ms of wall a read on this machine, and PostgreSQL ~15 %
        of its CPU (README, Performance: the eighteenth session). Only for one statement:
        several that must agree need a transaction's snapshot.
        """
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            yield curs

    def writer_mark(self) -> tuple[str | None, int | None]:
        with self.reading() as curs:
            curs.execute(self.sql.select_mark, prepare=True)
            row = curs.fetchone()
            assert row is not None
            return row["mark"], row["last"]

    def select_moved_on(self, versions: Sequence[tuple[UUID, int]]) -> list[UUID]:
        if not versions:
            return []
        with self.reading() as curs:
            curs.execute(self.sql.select_moved_on,
                         (self._ids([i for i, _ in versions]),
                          BigintArray([v for _, v in versions])), prepare=True)
            return [row["id"] for row in curs.fetchall()]

    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        if not keys:
            return {}
        with self.reading() as curs:
            return bookkeeping.postgres_identities(curs, self.datastore.schema, keys)

    def select_absorptions(self, limit: int | None, after: tuple[UUID, UUID] | None = None,
                           leads: Sequence[UUID] | None = None) -> list[bookkeeping.Pending]:
        with self.reading() as curs:
            return bookkeeping.postgres_absorptions(curs, self.datastore.schema, limit,
                                                    after, leads)

    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        if not account_ids:
            return {}
        with self.reading() as curs:
            return bookkeeping.postgres_engagements(curs, self.datastore.schema, account_ids)

    def select_counters(self) -> dict[str, int]:
        with self.reading() as curs:
            return bookkeeping.postgres_counters(curs, self.datastore.schema)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any
                      ) -> Sequence[int] | None:
        try:
            self._write(stored_events, **kwargs)
        except IntegrityError as exc:
            if f"(key)=({CLOCK_POSITION})" in str(exc):  # Statements.clock_moved_on's
                raise IntegrityError(CLOCK_MOVED_ON) from exc
            raise
        if stored_events:
            self.statistics.wrote(len(stored_events))  # after the commit, outside its lock
        return None  # the new notification ids are not fetched back (the module's doc)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _write(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        """The library's ``insert_events`` transaction, in a pipeline that sends it whole.

        psycopg's pipeline (3.3.9, the newest) can hang for ever: its loop stops writing
        as soon as its queue of commands is empty, even when the socket took only part of
        the last one, then waits for results the server cannot send while the server waits
        for the rest of the statement (``ClientRead``). Any transaction larger than what
        the socket takes at once is at risk: on this machine a batch of large records (50
        properties of 500 characters is ~27 kB a row) hung from ~6 MB, so `leadflow ingest`
        and a consumer with large fetches blocked; with a 64 KiB socket send buffer (a link
        that takes less at once than this loopback) so did an ordinary 1.3 MB batch, every
        time (tests/integration/test_large_batches.py). ``_SendAll`` finishes sending
        before it waits. Leaving pipeline mode instead cost ~11 ms a batch
        of 1,000 records here: ~18 statements, each then a round trip.
        """
        exc: Exception | None = None
        with self.datastore.get_connection() as conn:
            with conn.pipeline() as pipeline:
                pipeline.__class__ = _SendAll  # before anything is queued on it
                try:
                    with conn.transaction(), conn.cursor() as curs:
                        self._insert_events(curs, stored_events, **kwargs)
                        if stored_events:
                            self._insert_stored_events(curs, stored_events, **kwargs)
                        # Now, so that a uniqueness violation is an IntegrityError here,
                        # not an error at commit (as the library does).
                        pipeline.sync()
                except Exception as error:
                    # Rolled back above; raised once out of pipeline mode, as the library
                    # does (psycopg warns of an error leaving a pipeline with results).
                    exc = error
            if exc is not None:
                raise exc

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True
                             ) -> Sequence[Notification]:
        self.statistics.before_bulk_read()
        page: Sequence[Notification] = super().select_notifications(
            start, limit, stop, topics, inclusive_of_start=inclusive_of_start)
        return page

    def scan_events(self, after: tuple[Any, int] | None, limit: int) -> list[ScannedRow]:
        self.statistics.before_bulk_read()
        table = Identifier(self.datastore.schema, self.events_table_name)
        where = SQL("WHERE (originator_id, originator_version) > (%s, %s) " if after else "")
        statement = SQL("SELECT notification_id, originator_id, originator_version, topic, "
                        "state FROM {} {}ORDER BY originator_id, originator_version LIMIT %s"
                        ).format(table, where)
        with self.reading() as curs:
            curs.execute(statement, (*after, limit) if after else (limit,))
            return [(r["notification_id"], r["originator_id"], r["originator_version"],
                     r["topic"], bytes(r["state"])) for r in curs.fetchall()]

    def select_rows(self, start: int, limit: int, topics: Sequence[str]) -> list[PageRow]:
        # Tuples, transferred in binary (bytea needs no hex parsing): no row dict and no
        # Notification per row, as the library's select_notifications makes.
        # The notification id index read in order is always the plan for a page: without
        # statistics (a store just filled, or copied, before autovacuum analyses it) the
        # planner takes a bitmap scan of every later row and sorts them all, on disk, per
        # page (~0.2 s for the first 20,000 rows of a 30,000-row store instead of ~0.1 s).
        if topics:
            return self._read_rows(self.sql.select_rows, (start, list(topics), limit))
        return self._read_rows(self.sql.select_all_rows, (start, limit))

    def _read_rows(self, statement: Composed, params: tuple[Any, ...]) -> list[PageRow]:
        self.statistics.before_bulk_read()
        with self.datastore.get_connection() as conn, \
                conn.transaction(force_rollback=True), \
                conn.cursor(row_factory=tuple_row, binary=True) as curs:
            curs.execute("SET LOCAL enable_sort = off")
            curs.execute(statement, params, prepare=True)
            return curs.fetchall()

    def select_part_rows(self, start: int, stop: int, limit: int, topics: Sequence[str],
                         shared: Sequence[str], part: int, parts: int) -> list[PageRow]:
        """``select_rows`` up to notification id ``stop``, of one part of the leads: those
        whose id's last byte modulo ``parts`` is ``part`` (``part_of``), and every row of the
        ``shared`` topics."""
        return self._read_rows(self.sql.select_part_rows,
                               (start, stop, list(topics), list(shared), parts, part, limit))

    def select_originators(self, start: int, stop: int, topics: Sequence[str]
                           ) -> list[tuple[int, Any]]:
        """The notification and originator ids of the rows with ``topics`` from notification
        id ``start`` to ``stop`` (both included), in notification order: the rows the
        library's ``select_notifications`` gives, without their payloads (every lead of a
        store: 0.002 s of CPU and ~0.02 s against 0.04 s and ~0.1 s, 3,000 leads)."""
        self.statistics.before_bulk_read()
        with self.datastore.get_connection() as conn, \
                conn.cursor(row_factory=tuple_row, binary=True) as curs:
            curs.execute(self.sql.select_originators, (start, stop, list(topics)))
            return curs.fetchall()

    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        with self.reading() as curs:
            return bookkeeping.postgres_identity_page(curs, self.datastore.schema, after, limit)

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        if not event_ids:
            return {}
        with self.reading() as curs:
            curs.execute(self.sql.select_record_ids, (TextArray(event_ids),),
                         prepare=True)
            return {row["event_id"]: RecordId(row["event_id"], bytes(row["digest"]),
                                              row["lead_id"]) for row in curs.fetchall()}

    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        low = after or _EPOCH
        key = cursor or (low, _NIL)
        with self.reading() as curs:
            curs.execute(self.sql.select_due, (low, until, key[0], key[1], limit))
            return [(row["due_at"], row["lead_id"]) for row in curs.fetchall()]

    def meta(self, key: str) -> str | None:
        with self.reading() as curs:
            curs.execute(self.sql.select_meta, (key,))
            row = curs.fetchone()
        return str(row["value"]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.sql.upsert_meta, (key, value))

    def has_events(self) -> bool:
        with self.reading() as curs:
            curs.execute(SQL("SELECT 1 FROM {}.{} LIMIT 1").format(
                Identifier(self.datastore.schema), Identifier(self.events_table_name)))
            return curs.fetchone() is not None

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> None:
        timers = timers_of(kwargs)
        books = bookkeeping.books_of(kwargs)
        if stored_events or timers or books is not None or kwargs.get("tracking") \
                or kwargs.get("timers_skipped"):
            # The library runs this before it locks the events table; take that lock first,
            # so every writer takes its locks in one order (events table, then the index and
            # bookkeeping tables). A writer holding rows of those tables while waiting for the
            # events table deadlocked with a starting process's idempotent DDL (CREATE INDEX
            # IF NOT EXISTS takes the tables' SHARE locks in the other order).
            self._lock_table(curs)
            mark = writer_mark_of(kwargs)
            expected, new = mark if mark is not None else (None, uuid4().hex)
            curs.execute(self.sql.write_mark,
                         {"new": new, "expected": expected, "other": "other:" + new},
                         prepare=True)
            earliest: datetime | None = kwargs.get("earliest_due")
            if earliest is not None:
                # timers.check_reads, without a round trip while holding the lock: the
                # statement violates the key iff the clock is at or past ``earliest``.
                curs.execute(self.sql.clock_moved_on, (earliest,), prepare=True)
        super()._insert_events(curs, stored_events, **kwargs)  # the tracking record

        def epoch() -> str | None:  # under the events table's lock (taken above)
            curs.execute(self.sql.select_timers_epoch, prepare=True)
            row = curs.fetchone()
            return str(row["value"]) if row else None

        def moved_on(versions: Sequence[tuple[UUID, int]]) -> list[UUID]:
            curs.execute(self.sql.select_moved_on,
                         (self._ids([i for i, _ in versions]),
                          BigintArray([v for _, v in versions])), prepare=True)
            return [row["id"] for row in curs.fetchall()]

        def rows_due(low: datetime, high: datetime) -> bool:
            curs.execute(self.sql.select_due, (low, high, low, _NIL, 1))
            return curs.fetchone() is not None

        gone, due = timer_writes(kwargs, epoch, moved_on)
        if gone:
            curs.execute(self.sql.delete_timers, (UuidArray(gone),), prepare=True)
        if due:
            curs.execute(self.sql.upsert_timers if timers_exact(kwargs)
                         else self.sql.lower_timers,
                         (UuidArray([lead for lead, _ in due]), [at for _, at in due]),
                         prepare=True)
        if timers_exact(kwargs) and (gone or due):
            curs.execute(self.sql.bump_timers_epoch, prepare=True)
        moved_to = check_reads(kwargs, None, rows_due)  # earliest_due: checked above
        if moved_to is not None:
            curs.execute(self.sql.upsert_meta, (CLOCK_POSITION, moved_to.isoformat()))
        if books is not None:
            bookkeeping.postgres_write(curs, self.datastore.schema, books,
                                       self.events_table_name)
        ids = record_ids_of(kwargs)
        if ids:
            # A primary-key violation (the same event_id applied by another writer at the same
            # moment) aborts the whole transaction as an IntegrityError: the batch is retried
            # and then sees the other writer's row.
            curs.execute(self.sql.insert_record_ids,
                         (TextArray([r.event_id for r in ids]),
                          ByteaArray([r.digest for r in ids]),
                          UuidArray([r.lead_id for r in ids])), prepare=True)

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
            self.sql.insert_columns,
            (
                self._ids([e.originator_id for e in stored_events]),
                BigintArray([e.originator_version for e in stored_events]),
                TextArray([e.topic for e in stored_events]),
                ByteaArray([e.state for e in stored_events]),
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
