"""leadflow's process recorders: eventsourcing's, per database, plus the indexes below.

The record-id index's interface and the SQLite recorder are here; the PostgreSQL one, with
its faster batch insert, is in ``leadflow.store.postgres`` (it imports psycopg, which only a
PostgreSQL store needs), the in-memory one in ``leadflow.store.memory``.
Each is selected with eventsourcing's own ``PROCESS_RECORDER_TOPIC`` setting (see
``config.py`` and ``recorder_topic_for``).

Every leadflow recorder (PostgreSQL, SQLite, in-memory) also keeps the **record-id index**:
one row per applied inbound record, ``event_id -> (digest of the record's content, lead)``,
written in the same transaction as the events the record produced (``insert_events(...,
record_ids=[...])``). It is bookkeeping, not a domain event: it gives idempotency teeth (the
same id with other content is refused as a conflict instead of silently dropped, and one id
can never sit on two leads) with one indexed lookup per batch.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder

from leadflow.config import POSTGRES_RECORDER_TOPIC
from leadflow.store import bookkeeping, books_embedded
from leadflow.store.bookkeeping import Target
from leadflow.store.books_embedded import from_sqlite_time, sqlite_time
from leadflow.store.timers import (
    CLOCK_POSITION,
    TIMERS_EPOCH,
    check_reads,
    timer_writes,
    timers_exact,
)
from leadflow.store.timers import (
    EPOCH as _EPOCH,
)

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
#: Format 5: identity rows keyed by keyed hashes, personal values encrypted per person
#: (store/personal.py), data keys in ``leadflow_data_keys``.
#: Format 6: the timer index holds hints, never later than each lead's next due transition
#: (``RecordIdIndex``): a row moves later only in a commit that counts up ``TIMERS_EPOCH``.
#: A format-5 writer set rows to exact times without counting, so it could hide an earlier
#: due time from format-6 writers that skip the rows they know; it refuses a format-6 store
#: ("newer than this leadflow understands"). A format-5 store's rows are exact, so valid
#: hints: ``db migrate`` rebuilds them anyway and records the format.
STORE_VERSION = 6

_NIL = UUID(int=0)


# (notification id, raw originator id, version, topic, state): one row of the events table.
ScannedRow = tuple[int, Any, int, str, bytes]
# (notification id, originator id as text, version, topic, state): a projector page's row.
# Text, because the projector keys rows by it: a UUID made by the driver and turned back
# into text cost two microseconds a row.
PageRow = tuple[int, str, int, str, bytes]


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

    A timer is a hint: the time by which the clock must look at the lead again, never later
    than its next due transition, possibly earlier (the clock then finds nothing due and
    sets the timer to the lead's true next due time). So a batch's timers only ever move a
    lead's row earlier, and a ``None`` leaves the row (the clock drops it when it finds
    nothing due): each touchpoint pushes a lead's dormancy (and a score's decay) later, and
    rewriting its row for that was a third of a batch's writes. The clock's re-arming, and
    ``db migrate``, pass ``timers_exact=True``: their times replace the rows', and the
    ``TIMERS_EPOCH`` row counts those commits. A writer may pass, as ``timers_skipped``,
    timers it knows a row is already no later than, with the epoch it read then
    (``timers_epoch``): they are written only if the epoch moved meanwhile (checked under
    the transaction's lock on the events table).
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

    #: Whether several processes write this store at once (PostgreSQL: the consumers of a
    #: group, beside CLI commands). Their caches are then checked against the store when a
    #: batch starts (``select_moved_on``, fresh identity rows); an embedded store has one
    #: writer and trusts its cache.
    shared: bool = False

    def writer_mark(self) -> tuple[str | None, int | None]:
        """What the commits to a shared store left: the writer mark (``WRITER_MARK``) and the
        events table's highest notification id (writers of versions that leave no mark
        still take ids). (None, None) on a store with one writer, which has no use for it."""
        return None, None

    def select_moved_on(self, versions: Sequence[tuple[UUID, int]]) -> list[UUID]:
        """Which of these aggregates have stored rows after the given version. One read per
        aggregate here (a store with one writer has no use for it); PostgreSQL asks once."""
        select = self.select_events  # type: ignore[attr-defined]  # the recorder's own
        return [aggregate_id for aggregate_id, version in versions
                if select(aggregate_id, gt=version, limit=1)]

    def select_absorptions(self, limit: int | None, after: tuple[UUID, UUID] | None = None,
                           leads: Sequence[UUID] | None = None) -> list[bookkeeping.Pending]:
        """Up to ``limit`` (None: all) pending absorptions (interest, lead, version to take
        up, Kafka key of the lead's records or None), in (interest, lead) order: from the
        start, after the (interest, lead) key ``after`` (the queue read page by page), or
        only those queued for ``leads``. Only a shared store queues them
        (store/bookkeeping.py)."""
        return []

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

    def select_rows(self, start: int, limit: int, topics: Sequence[str]) -> list[PageRow]:
        """Up to ``limit`` rows of the events table with ``topics``, from notification id
        ``start`` on, in notification order, as plain tuples: the projector's page read.
        ``select_notifications`` makes a row dict and a ``Notification`` per row, about half
        of a rebuild's reading cost; the database recorders override this to skip both."""
        assert isinstance(self, ApplicationRecorder)
        return [(n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
                for n in self.select_notifications(start, limit, topics=topics)]

    @abstractmethod
    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        """Up to ``limit`` identity rows (key, target, is_interest) with keys after ``after``,
        in key order."""


#: The metadata row every commit to a shared store writes in its transaction, under the events
#: table's lock (store/postgres.py): ``insert_events(..., writer_mark=(expected, new))`` leaves
#: ``new`` when the row still holds ``expected`` (what the writer read when its unit of work
#: began), and a value no writer expects otherwise; a commit without one (a command of a
#: version that does not pass it) leaves such a value too. A writer that reads back its own
#: last mark knows that no one else committed since (engine/unit.py ``CacheMarks``).
WRITER_MARK = "writer_mark"


def writer_mark_of(kwargs: dict[str, Any]) -> tuple[str | None, str] | None:
    mark: tuple[str | None, str] | None = kwargs.get("writer_mark")
    return mark


def record_ids_of(kwargs: dict[str, Any]) -> list[RecordId]:
    return list(kwargs.get("record_ids") or ())


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
                "value TEXT NOT NULL) WITHOUT ROWID", *books_embedded.SQLITE_DDL]

    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        with self.datastore.transaction(commit=False) as c:
            return books_embedded.sqlite_identities(c, keys)

    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        with self.datastore.transaction(commit=False) as c:
            return books_embedded.sqlite_engagements(c, account_ids)

    def select_counters(self) -> dict[str, int]:
        with self.datastore.transaction(commit=False) as c:
            return books_embedded.sqlite_counters(c)

    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        low = sqlite_time(after or _EPOCH)
        key = (sqlite_time(cursor[0]), cursor[1].hex) if cursor else (low, "")
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT due_at, lead_id FROM {TIMERS_TABLE} WHERE due_at > ? AND "
                      "due_at <= ? AND (due_at > ? OR (due_at = ? AND lead_id > ?)) "
                      "ORDER BY due_at, lead_id LIMIT ?",
                      (low, sqlite_time(until), key[0], key[0], key[1], limit))
            return [(from_sqlite_time(at), UUID(lead)) for at, lead in c.fetchall()]

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

    def select_rows(self, start: int, limit: int, topics: Sequence[str]) -> list[PageRow]:
        # The library's query, without a Notification per row; ids read as UUIDs as the
        # library reads them (a hand-written id that is no UUID fails the page's read), in
        # their canonical text.
        uuid = self.convert_originator_id
        where = f"AND topic IN ({','.join('?' * len(topics))}) " if topics else ""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT rowid, originator_id, originator_version, topic, state FROM "
                      f"{self.events_table_name} WHERE rowid >= ? {where}ORDER BY rowid "
                      "LIMIT ?", (start, *topics, limit))
            return [(n, str(uuid(oid)), v, t, st) for n, oid, v, t, st in c.fetchall()]

    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        with self.datastore.transaction(commit=False) as c:
            return books_embedded.sqlite_identity_page(c, after, limit)

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

        def epoch() -> str | None:
            c.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?", (TIMERS_EPOCH,))
            row = c.fetchone()
            return str(row[0]) if row else None

        def moved_on(versions: Sequence[tuple[UUID, int]]) -> list[UUID]:
            moved = []
            for aggregate_id, version in versions:
                c.execute(f"SELECT 1 FROM {self.events_table_name} WHERE originator_id = ? "
                          "AND originator_version > ? LIMIT 1", (aggregate_id.hex, version))
                if c.fetchone() is not None:
                    moved.append(aggregate_id)
            return moved

        def rows_due(low: datetime, high: datetime) -> bool:
            c.execute(f"SELECT 1 FROM {TIMERS_TABLE} WHERE due_at > ? AND due_at <= ? LIMIT 1",
                      (sqlite_time(low), sqlite_time(high)))
            return c.fetchone() is not None

        gone, due = timer_writes(kwargs, epoch, moved_on)
        if gone:
            c.executemany(f"DELETE FROM {TIMERS_TABLE} WHERE lead_id = ?",
                          [(lead.hex,) for lead in gone])
        if due:
            # The stored text sorts as the times do (select_due compares it so too).
            c.executemany(f"INSERT INTO {TIMERS_TABLE} VALUES (?, ?) ON CONFLICT (lead_id) "
                          "DO UPDATE SET due_at = excluded.due_at"
                          + ("" if timers_exact(kwargs) else " WHERE excluded.due_at < due_at"),
                          [(lead.hex, sqlite_time(at)) for lead, at in due])
        if timers_exact(kwargs) and (gone or due):
            c.execute(f"INSERT INTO {META_TABLE} VALUES (?, '1') ON CONFLICT (key) DO UPDATE "
                      "SET value = CAST(value AS INTEGER) + 1", (TIMERS_EPOCH,))

        def stored_clock() -> datetime | None:
            c.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?", (CLOCK_POSITION,))
            row = c.fetchone()
            return datetime.fromisoformat(row[0]) if row else None

        moved_to = check_reads(kwargs, stored_clock, rows_due)
        if moved_to is not None:
            c.execute(f"INSERT INTO {META_TABLE} VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                      "SET value = excluded.value", (CLOCK_POSITION, moved_to.isoformat()))
        books = bookkeeping.books_of(kwargs)
        ids = record_ids_of(kwargs)
        try:
            if books is not None:
                books_embedded.sqlite_write(c, books)
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


#: The leadflow process recorder of each eventsourcing persistence module, by topic. The
#: PostgreSQL one lives in ``leadflow.store.postgres``: importing it imports psycopg, which a
#: process on the embedded SQLite store (``lead show``) has no use for.
_TOPICS = {"eventsourcing.postgres": POSTGRES_RECORDER_TOPIC,
           "eventsourcing.sqlite": f"{__name__}:LeadflowSQLiteProcessRecorder"}


def recorder_topic_for(module: str) -> str | None:
    """The leadflow process recorder for an eventsourcing persistence module, by topic."""
    return _TOPICS.get(module)


def __getattr__(name: str) -> Any:
    # The PostgreSQL recorder's earlier topic (leadflow.store.recorders:...) keeps working.
    if name == "LeadflowPostgresProcessRecorder":
        from leadflow.store.postgres import LeadflowPostgresProcessRecorder

        return LeadflowPostgresProcessRecorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

