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
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from eventsourcing.popo import POPOProcessRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from leadflow.store import bookkeeping
from leadflow.store.bookkeeping import Target

#: The advisory lock every leadflow process takes around its DDL ("leadflow" in ASCII; the
#: projector's schema set-up takes the same one).
SCHEMA_LOCK_KEY = 0x6C65_6164_666C_6F77

RECORD_IDS_TABLE = "leadflow_record_ids"
TIMERS_TABLE = "leadflow_timers"
META_TABLE = "leadflow_meta"

#: Format of the store written by this code. 2: a lead's next time-driven check lives in the
#: timer index (bookkeeping written with the events), not in TimerBucket events. 3: one row
#: per record (store/fold.py); identity index, account engagements and routing counters are
#: bookkeeping tables (store/bookkeeping.py), not IdentityIndex, Account.Engaged and Router
#: load events.
#: Format 4: every aggregate's rows are chained with keyed links (store/chain.py); a store
#: migrated from an older format records where keyed chaining of all aggregates began.
STORE_VERSION = 4

_SQLITE_TIME = "%Y-%m-%dT%H:%M:%S.%f"  # fixed width, so text order is time order
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NIL = UUID(int=0)


def _sqlite_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_SQLITE_TIME)


def _from_sqlite_time(text: str) -> datetime:
    return datetime.strptime(text, _SQLITE_TIME).replace(tzinfo=UTC)


# (notification id, raw originator id, version, topic, state): one row of the events table.
ScannedRow = tuple[int, Any, int, str, bytes]


class RecordId(NamedTuple):
    """An applied record: its producer ``event_id``, content digest, and the lead (or
    ``None`` for anonymous interest) it was applied to."""

    event_id: str
    digest: bytes
    lead_id: UUID | None


Due = tuple[datetime, UUID]  # (when, lead id): a lead's next time-driven check


class RecordIdIndex(ABC):
    """What every leadflow recorder offers on top of the library's process recorder: the
    record-id index, the timer index and the store's format version.

    Both indexes are written by ``insert_events(..., record_ids=[...], timers={...})`` in the
    same transaction as the events; ``timers`` maps a lead id to its next due time, or to
    ``None`` to drop it. They are bookkeeping, rebuildable from the events (``db migrate``).
    """

    @abstractmethod
    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        """The applied records among ``event_ids``, by event id."""

    @abstractmethod
    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        """Timers with ``after < due <= until`` (and after ``cursor``), in (due, lead) order."""

    @abstractmethod
    def meta(self, key: str) -> str | None:
        """A value of the store's metadata table (format version, keyed-chain start)."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Record a value of the store's metadata table."""

    def store_version(self) -> int | None:
        """The format version recorded in the store; None when none is."""
        value = self.meta("store_version")
        return int(value) if value is not None else None

    def set_store_version(self, version: int) -> None:
        """Record the store's format version."""
        self.set_meta("store_version", str(version))

    @abstractmethod
    def has_events(self) -> bool:
        """Whether any event is stored (a store without one is new, whatever its format)."""

    @abstractmethod
    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        """The identity index's rows for ``keys`` (absent keys are left out)."""

    @abstractmethod
    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        """Each account's people and the latest time each engaged."""

    @abstractmethod
    def select_counters(self) -> dict[str, int]:
        """The routing counters (``load:<rep>``, ``cursor:<team>``)."""

    @abstractmethod
    def max_notification_id(self) -> int | None:
        """The events table's highest notification id (the library's recorders have it)."""

    @abstractmethod
    def scan_events(self, after: tuple[Any, int] | None, limit: int) -> list[ScannedRow]:
        """Up to ``limit`` rows of the events table in (originator id, version) order after
        the (raw originator id, version) ``after``: the whole-store audit's read. The raw id
        is as stored (a SQLite row edited by hand may hold one that is no UUID)."""

    @abstractmethod
    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        """Up to ``limit`` identity rows (key, target, is_interest) with keys after ``after``,
        in key order."""


def record_ids_of(kwargs: dict[str, Any]) -> list[RecordId]:
    return list(kwargs.get("record_ids") or ())


def timers_of(kwargs: dict[str, Any]) -> dict[UUID, datetime | None]:
    return dict(kwargs.get("timers") or {})


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
        timers = Identifier(self.datastore.schema, TIMERS_TABLE)
        meta = Identifier(self.datastore.schema, META_TABLE)
        self.sql_create_statements.append(SQL(
            "CREATE TABLE IF NOT EXISTS {} (lead_id uuid PRIMARY KEY, "
            "due_at timestamptz NOT NULL)").format(timers))
        self.sql_create_statements.append(SQL(
            "CREATE INDEX IF NOT EXISTS {} ON {} (due_at, lead_id)").format(
            Identifier(TIMERS_TABLE + "_due"), timers))
        self.sql_create_statements.append(SQL(
            "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value text NOT NULL)")
            .format(meta))
        self.upsert_timers_statement = SQL(
            "INSERT INTO {} (lead_id, due_at) SELECT * FROM unnest(%b::uuid[], "
            "%b::timestamptz[]) ON CONFLICT (lead_id) DO UPDATE SET due_at = excluded.due_at"
        ).format(timers)
        self.delete_timers_statement = SQL("DELETE FROM {} WHERE lead_id = ANY(%b::uuid[])"
                                           ).format(timers)
        self.select_due_statement = SQL(
            "SELECT due_at, lead_id FROM {} WHERE due_at > %s AND due_at <= %s "
            "AND (due_at, lead_id) > (%s, %s) ORDER BY due_at, lead_id LIMIT %s").format(timers)
        self.meta_table = meta
        for ddl in bookkeeping.postgres_ddl(self.datastore.schema):
            self.sql_create_statements.append(Composed([SQL(ddl)]))

    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        if not keys:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            return bookkeeping.postgres_identities(curs, self.datastore.schema, keys)

    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        if not account_ids:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            return bookkeeping.postgres_engagements(curs, self.datastore.schema, account_ids)

    def select_counters(self) -> dict[str, int]:
        with self.datastore.transaction(commit=False) as curs:
            return bookkeeping.postgres_counters(curs, self.datastore.schema)

    def scan_events(self, after: tuple[Any, int] | None, limit: int) -> list[ScannedRow]:
        table = Identifier(self.datastore.schema, self.events_table_name)
        where = SQL("WHERE (originator_id, originator_version) > (%s, %s) " if after else "")
        statement = SQL("SELECT notification_id, originator_id, originator_version, topic, "
                        "state FROM {} {}ORDER BY originator_id, originator_version LIMIT %s"
                        ).format(table, where)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(statement, (*after, limit) if after else (limit,))
            return [(r["notification_id"], r["originator_id"], r["originator_version"],
                     r["topic"], bytes(r["state"])) for r in curs.fetchall()]

    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        with self.datastore.transaction(commit=False) as curs:
            return bookkeeping.postgres_identity_page(curs, self.datastore.schema, after, limit)

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        if not event_ids:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.select_record_ids_statement, (list(event_ids),), prepare=True)
            return {row["event_id"]: RecordId(row["event_id"], bytes(row["digest"]),
                                              row["lead_id"]) for row in curs.fetchall()}

    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        low = after or _EPOCH
        key = cursor or (low, _NIL)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.select_due_statement, (low, until, key[0], key[1], limit))
            return [(row["due_at"], row["lead_id"]) for row in curs.fetchall()]

    def meta(self, key: str) -> str | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT value FROM {} WHERE key = %s").format(self.meta_table),
                         (key,))
            row = curs.fetchone()
        return str(row["value"]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value").format(self.meta_table),
                         (key, value))

    def has_events(self) -> bool:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT 1 FROM {}.{} LIMIT 1").format(
                Identifier(self.datastore.schema), Identifier(self.events_table_name)))
            return curs.fetchone() is not None

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> None:
        timers = timers_of(kwargs)
        books = bookkeeping.books_of(kwargs)
        if stored_events or timers or books is not None or kwargs.get("tracking"):
            # The library runs this before it locks the events table; take that lock first,
            # so every writer takes its locks in one order (events table, then the index and
            # bookkeeping tables). A writer holding rows of those tables while waiting for the
            # events table deadlocked with a starting process's idempotent DDL (CREATE INDEX
            # IF NOT EXISTS takes the tables' SHARE locks in the other order).
            self._lock_table(curs)
        super()._insert_events(curs, stored_events, **kwargs)  # the tracking record
        if timers:
            gone = [lead for lead, due in timers.items() if due is None]
            due = [(lead, at) for lead, at in timers.items() if at is not None]
            if gone:
                curs.execute(self.delete_timers_statement, (gone,), prepare=True)
            if due:
                curs.execute(self.upsert_timers_statement,
                             ([lead for lead, _ in due], [at for _, at in due]), prepare=True)
        if books is not None:
            bookkeeping.postgres_write(curs, self.datastore.schema, books)
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
                "digest BLOB NOT NULL, lead_id TEXT) WITHOUT ROWID",
                f"CREATE TABLE IF NOT EXISTS {TIMERS_TABLE} (lead_id TEXT PRIMARY KEY, "
                "due_at TEXT NOT NULL) WITHOUT ROWID",
                f"CREATE INDEX IF NOT EXISTS {TIMERS_TABLE}_due ON {TIMERS_TABLE} "
                "(due_at, lead_id)",
                f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, "
                "value TEXT NOT NULL) WITHOUT ROWID", *bookkeeping.SQLITE_DDL]

    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        with self.datastore.transaction(commit=False) as c:
            return bookkeeping.sqlite_identities(c, keys)

    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        with self.datastore.transaction(commit=False) as c:
            return bookkeeping.sqlite_engagements(c, account_ids)

    def select_counters(self) -> dict[str, int]:
        with self.datastore.transaction(commit=False) as c:
            return bookkeeping.sqlite_counters(c)

    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        low = _sqlite_time(after or _EPOCH)
        key = (_sqlite_time(cursor[0]), cursor[1].hex) if cursor else (low, "")
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT due_at, lead_id FROM {TIMERS_TABLE} WHERE due_at > ? AND "
                      "due_at <= ? AND (due_at > ? OR (due_at = ? AND lead_id > ?)) "
                      "ORDER BY due_at, lead_id LIMIT ?",
                      (low, _sqlite_time(until), key[0], key[0], key[1], limit))
            return [(_from_sqlite_time(at), UUID(lead)) for at, lead in c.fetchall()]

    def meta(self, key: str) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?", (key,))
            row = c.fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?)", (key, value))

    def has_events(self) -> bool:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT 1 FROM {self.events_table_name} LIMIT 1")
            return c.fetchone() is not None

    def scan_events(self, after: tuple[Any, int] | None, limit: int) -> list[ScannedRow]:
        where = "WHERE (originator_id, originator_version) > (?, ?) " if after else ""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT rowid, originator_id, originator_version, topic, state FROM "
                      f"{self.events_table_name} {where}ORDER BY originator_id, "
                      "originator_version LIMIT ?", (*after, limit) if after else (limit,))
            return [(n, oid, v, t, st) for n, oid, v, t, st in c.fetchall()]

    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        with self.datastore.transaction(commit=False) as c:
            return bookkeeping.sqlite_identity_page(c, after, limit)

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
        timers = timers_of(kwargs)
        if timers:
            c.executemany(f"DELETE FROM {TIMERS_TABLE} WHERE lead_id = ?",
                          [(lead.hex,) for lead, due in timers.items() if due is None])
            c.executemany(f"INSERT OR REPLACE INTO {TIMERS_TABLE} VALUES (?, ?)",
                          [(lead.hex, _sqlite_time(due)) for lead, due in timers.items()
                           if due is not None])
        books = bookkeeping.books_of(kwargs)
        ids = record_ids_of(kwargs)
        try:
            if books is not None:
                bookkeeping.sqlite_write(c, books)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
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
        self._timers: dict[UUID, datetime] = {}
        self._meta: dict[str, str] = {}
        self._books = bookkeeping.MemoryBooks()

    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        with self._record_ids_lock:
            known = self._books.identities
            return {k: known[k] for k in keys if k in known}

    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        with self._record_ids_lock:
            known = self._books.engagements
            return {a: dict(known[a]) for a in account_ids if a in known}

    def select_counters(self) -> dict[str, int]:
        with self._record_ids_lock:
            return dict(self._books.counters)

    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        with self._record_ids_lock:
            due = sorted((at, lead) for lead, at in self._timers.items()
                         if (after is None or at > after) and at <= until
                         and (cursor is None or (at, lead) > cursor))
        return due[:limit]

    def meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def has_events(self) -> bool:
        return bool(self._stored_events)

    def scan_events(self, after: tuple[Any, int] | None, limit: int) -> list[ScannedRow]:
        with self._database_lock:
            rows = [(n, str(e.originator_id), e.originator_version, e.topic, e.state)
                    for n, e in enumerate(self._stored_events, 1)]
        rows.sort(key=lambda r: (r[1], r[2]))
        if after is not None:
            rows = [r for r in rows if (r[1], r[2]) > (str(after[0]), after[1])]
        return rows[:limit]

    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        with self._record_ids_lock:
            rows = sorted((k, t, i) for k, (t, i) in self._books.identities.items() if k > after)
        return rows[:limit]

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        with self._record_ids_lock:
            return {e: self._record_ids[e] for e in event_ids if e in self._record_ids}

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        ids = record_ids_of(kwargs)
        taken = [r.event_id for r in ids if r.event_id in self._record_ids]
        if taken or len({r.event_id for r in ids}) < len(ids):
            raise IntegrityError(f"record ids already recorded: {taken[:5]}")
        books = bookkeeping.books_of(kwargs)
        registered = self._books.conflicts(books) if books is not None else []
        if registered:
            raise IntegrityError(f"identity keys already registered: {registered[:5]}")

    def _update_table(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        out = super()._update_table(stored_events, **kwargs)
        with self._record_ids_lock:
            self._record_ids.update((r.event_id, r) for r in record_ids_of(kwargs))
            books = bookkeeping.books_of(kwargs)
            if books is not None:
                self._books.write(books)
            for lead, due in timers_of(kwargs).items():
                if due is None:
                    self._timers.pop(lead, None)
                else:
                    self._timers[lead] = due
        return out


def recorder_topic_for(module: str) -> str | None:
    """The leadflow process recorder for an eventsourcing persistence module, by topic."""
    topics = {"eventsourcing.postgres": f"{__name__}:LeadflowPostgresProcessRecorder",
              "eventsourcing.sqlite": f"{__name__}:LeadflowSQLiteProcessRecorder"}
    return topics.get(module)

