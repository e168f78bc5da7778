"""The projector: follows the event store and maintains the analyst read models.

Each page of notifications is applied in ONE transaction that also moves the tracking
position, so a crash never double-counts and a restart resumes exactly where it stopped.
Rows are changed set-wise (load the touched leads, change them in memory, upsert them all):
``events`` reads the stored events, ``handlers`` applies each to the rows in memory and
``writer`` loads and writes them (``decode`` reads a page's stored events). ``rebuild``
replays from the first event into fresh tables and swaps them in at once.

The event store is immutable, so whatever got into it must be projectable forever: payloads
orjson refuses (``Infinity``, ``NaN``, numbers beyond a double, lone surrogates) are read
again by Python's json; every row passes through the converters of ``db.clean_rows`` before
it is written (non-finite or out-of-range numbers become NULL, text loses what PostgreSQL
cannot hold), identically on SQLite and PostgreSQL. An event that still cannot be projected
stops the projector with ``ProjectionFailedError`` naming it; its page is not committed.
"""

from __future__ import annotations

import gc
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from leadflow.engine.app import INFRASTRUCTURE_ERRORS, LeadflowApp
from leadflow.projections import migrate, parallel
from leadflow.projections.admin import analyst_grants, grant_select
from leadflow.projections.db import ProjectionDB
from leadflow.projections.decode import (
    ProjectionFailedError,
    _accounts_set,
    _Decoder,
    _forgotten_set,
    _model_leads,
    _reason,
)
from leadflow.projections.events import KINDS, TOPICS
from leadflow.projections.handlers import EventFailed
from leadflow.projections.schema import TABLES, drop_views_ddl, tables_ddl, views_ddl
from leadflow.projections.writer import Page, RowFailed
from leadflow.store.recorders import PageRow

if TYPE_CHECKING:
    from leadflow.metrics import Health, ProjectorMetrics

log = structlog.get_logger(__name__)

TRACKING_NAME = "analytics"
VIEWS_NAME = "views-checksum"
#: A rebuild's first page (later ones grow to its page size, see ``Projector._replay``).
_FIRST_PAGE = 2000


@dataclass
class ProjectionStats:
    pages: int = 0
    events: int = 0
    position: int = 0


class Projector(_Decoder):
    """Maintains the read models of one leadflow database."""

    def __init__(self, app: LeadflowApp, db: ProjectionDB, page_size: int = 2000,
                 metrics: ProjectorMetrics | None = None, health: Health | None = None) -> None:
        self.app = app
        self.db = db
        self.page_size = page_size
        self.stats = ProjectionStats()
        self._metrics = metrics
        self._health = health
        self._stop = threading.Event()

    # The defaults are made on first use: a rebuild uses neither, and leadflow.metrics
    # (prometheus_client, http.server) is a twentieth of its start-up.
    @property
    def metrics(self) -> ProjectorMetrics:
        if self._metrics is None:
            from leadflow.metrics import ProjectorMetrics

            self._metrics = ProjectorMetrics()
        return self._metrics

    @property
    def health(self) -> Health:
        if self._health is None:
            from leadflow.metrics import Health

            self._health = Health()
        return self._health

    def stop(self, *_: object) -> None:
        self._stop.set()

    # ----------------------------------------------------------------- schema

    def setup(self) -> None:
        """Create tables and views if missing (idempotent)."""
        views = views_ddl(self.db.dialect)
        # The view definitions' checksum is kept beside the positions, so views are replaced
        # only when an upgraded leadflow brings new ones (not on every `funnel` or `report`:
        # on PostgreSQL dropping a view waits for, and blocks, the analysts reading it).
        views_version = zlib.crc32(views.encode())
        with self.db.transaction():
            migrate.lock_schema(self.db)
            self.db.executescript(tables_ddl(self.db.dialect))
            migrate.add_columns(self.db)
            split = migrate.split_personal(self.db)
            swapped = migrate.relax_not_null(self.db)
            if split or swapped or self.position(VIEWS_NAME) != views_version:
                readers = analyst_grants(self.db) if self.db.dialect == "postgres" else {}
                self.db.executescript(drop_views_ddl())
                self.db.executescript(views)
                if readers:
                    grant_select(self.db, readers)
                self.db.execute(
                    "INSERT INTO projection_tracking VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET position = excluded.position", [VIEWS_NAME, views_version])
            self.db.execute(
                "INSERT INTO projection_tracking VALUES (%s, 0) ON CONFLICT (name) DO NOTHING",
                [TRACKING_NAME])

    def position(self, name: str = TRACKING_NAME) -> int:
        rows = self.db.query("SELECT position FROM projection_tracking WHERE name = %s", [name])
        return int(rows[0]["position"]) if rows else 0

    def max_notification_id(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    # ----------------------------------------------------------------- processing

    def _select(self, after: int) -> list[PageRow]:
        try:
            return self.app.indexes.select_rows(after + 1, self.page_size, TOPICS)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            # The recorder itself cannot read a row (an originator id that is no UUID, written
            # by hand): name the position, as for an event a handler cannot take.
            raise ProjectionFailedError(after + 1, "(unreadable row)", None,
                                        f"the event store cannot read the events after "
                                        f"{after}: {_reason(exc)}") from exc

    def process_page(self, name: str = TRACKING_NAME, suffix: str = "") -> int:
        """Apply the next page after ``name``'s position; returns how many events.

        Raises ``ProjectionFailedError`` for an event that cannot be projected; nothing of
        its page is committed, so the position stays before it.
        """
        try:
            with self.db.transaction():
                lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
                tracked = self.db.query(
                    f"SELECT position FROM projection_tracking WHERE name = %s{lock}", [name])
                position = int(tracked[0]["position"]) if tracked else 0
                rows = self._select(position)
                if not rows:
                    return 0
                page = self._page(suffix)
                events = self._decode(rows)
                page.load({str(e.originator_id) for _, t, e in events if not KINDS[t][0]}
                          | _forgotten_set(events),
                          {str(e.originator_id) for _, t, e in events if KINDS[t][0]}
                          | _accounts_set(events), _model_leads(events))
                self._apply(page, events)
                page.write()
                last = rows[-1][0]
                self.db.execute(
                    "INSERT INTO projection_tracking VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET position = excluded.position", [name, last])
        except RowFailed as exc:
            raise self._failed(exc) from exc
        if self.db.dialect == "sqlite" and _forgotten_set(events):
            # A person was forgotten: their rows were overwritten (secure_delete), and the
            # older page images in SQLite's write-ahead log go too.
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.stats.pages += 1
        self.stats.events += len(events)
        self.stats.position = last
        return len(events)

    def _page(self, suffix: str, replaying: bool = False) -> Page:
        """A page's changes (``replaying``: a rebuild's, kept for the whole replay), with the
        half-lives and thresholds of the rules in force."""
        rules = self.app.rules
        return Page(self.db, suffix, rules.scoring.half_life_days,
                    {model_id: (model.half_life_days, model.threshold)
                     for model_id, model in rules.models.items()}, replaying)

    @staticmethod
    def _apply(page: Page, events: list[tuple[int, str, Any]]) -> None:
        """Apply events in order; the first a handler fails on raises ProjectionFailedError."""
        try:
            page.apply_all(events)
        except EventFailed as failed:
            exc = failed.__cause__
            assert isinstance(exc, Exception)
            raise ProjectionFailedError(failed.nid, failed.event.originator_id, failed.topic,
                                        _reason(exc)) from exc

    def _failed(self, exc: RowFailed) -> ProjectionFailedError:
        """The error for a row that cannot be written, naming the event behind it."""
        found = self.app.recorder.select_notifications(exc.notification_id, 1) \
            if exc.notification_id else []
        topic = found[0].topic if found and found[0].id == exc.notification_id else None
        return ProjectionFailedError(exc.notification_id, exc.originator_id, topic, exc.reason)

    def run(self, until_idle: bool = False,
            progress: Callable[[int, int], None] | None = None, idle_wait: float = 1.0) -> \
            ProjectionStats:
        """Follow the event store; LISTEN/NOTIFY wakes it on PostgreSQL, polling on SQLite."""
        self.setup()
        listener = self._listen() if not until_idle else None
        try:
            while not self._stop.is_set():
                self.health.beat()
                done = self.process_page()
                newest = self.max_notification_id()
                self.metrics.done.inc(done)
                self.metrics.progress(self.stats.position or self.position(), newest,
                                      caught_up=not done)
                if progress:
                    progress(self.stats.position, newest)
                if done:
                    continue
                if until_idle:
                    break
                self._wait(listener, idle_wait)
        finally:
            if listener is not None:
                listener.close()
        return self.stats

    def _listen(self) -> Any:
        if self.db.dialect != "postgres":
            return None
        import psycopg

        conn = psycopg.connect(self.db.url, autocommit=True)
        channel = getattr(self.app.recorder, "channel_name", None)
        if channel is None:
            conn.close()
            return None
        conn.execute(f'LISTEN "{channel}"')
        return conn

    def _wait(self, listener: Any, seconds: float) -> None:
        if listener is None:
            self._stop.wait(seconds)
            return
        for _ in listener.notifies(timeout=seconds, stop_after=1):
            break

    # ----------------------------------------------------------------- rebuild

    def rebuild(self, progress: Callable[[int, int], None] | None = None,
                page_size: int = 20_000, workers: int | None = None) -> ProjectionStats:
        """Replay every event into fresh tables, then swap them in in one transaction.

        The replay keeps the read models' keyed rows (leads, accounts, funnel counts) in
        memory and writes each of them once, by COPY, at the end; the append-only rows
        (transitions, ledger) are copied page by page. Nothing is read back from the tables
        while replaying. A rebuild that stops half-way leaves the live tables untouched; the
        next one starts from scratch. An event that cannot be projected raises
        ``ProjectionFailedError`` (and the live tables stay as they were).

        ``workers``: processes that replay the leads, split among them (``parallel``); by
        default one per core on a large PostgreSQL store, else one.
        """
        self.setup()
        suffix = "_rebuild"
        total = self.max_notification_id()
        parts = parallel.parts_for(self, workers, total)
        started = time.monotonic()
        # The replay makes millions of short-lived objects and keeps every lead's row, and
        # makes no reference cycles: the cycle collector would only rescan the growing
        # rows (a tenth of the replay's CPU). Reference counting frees the rest; the
        # collector runs again once the tables are swapped in.
        collecting = gc.isenabled()
        gc.disable()
        try:
            position: int | None = None
            if parts > 1:
                state = self._fresh(suffix)
                try:
                    position = parallel.replay(self, state, parts, page_size, total, progress)
                except parallel.OneProcess as exc:
                    if not self._stop.is_set():  # (a stop also ends the parts: not a failure)
                        log.warning("rebuild replayed again in one process", reason=str(exc))
                    self.stats = ProjectionStats()
            if position is None and not self._stop.is_set():
                parts = 1  # (what the log says made the tables)
                state = self._fresh(suffix)
                position = self._replay(state, page_size, total, progress)
            if self._stop.is_set() or position is None:
                raise RebuildInterrupted(f"rebuild stopped at event {position or 0}; the live "
                                         "tables are unchanged")
            self._swap(state, position)
        except RowFailed as exc:
            raise self._failed(exc) from exc
        finally:
            if collecting:
                gc.enable()
        log.info("rebuild swapped in", events=self.stats.events, position=position,
                 seconds=round(time.monotonic() - started, 2), processes=parts)
        return self.stats

    def _fresh(self, suffix: str) -> Page:
        """Empty rebuild tables (without secondary indexes), and a replay's page for them."""
        with self.db.transaction():
            migrate.lock_schema(self.db)
            for table in TABLES:
                self.db.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
            self.db.executescript(_without_indexes(tables_ddl(self.db.dialect, suffix)))
        return self._page(suffix, replaying=True)

    def _replay(self, state: Page, page_size: int, total: int,
                progress: Callable[[int, int], None] | None,
                select: Callable[[int, int, list[str]], list[PageRow]] | None = None) -> int:
        """Replay the rows ``select`` gives (by default every followed one) into ``state``;
        the last notification id replayed."""
        position = 0
        select = select or self.app.indexes.select_rows
        # The next page is read (on the event store's own connection) while this one is
        # projected: the database's work and the transfer overlap the decoding. Pages start
        # small and grow fourfold up to ``page_size``, so the replay starts after the read of
        # 2,000 rows (~0.03 s), not of a whole page (~0.2 s for 20,000).
        size = min(page_size, _FIRST_PAGE)
        # Each page's appended rows are converted here (a row that cannot be written fails
        # where it did) and copied by a writer on the projection connection, which nothing
        # else uses meanwhile, while the next page is decoded: the database takes them in
        # parallel. One page's copy at a time, in order.
        with ThreadPoolExecutor(1, thread_name_prefix="rebuild-read") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="rebuild-write") as writer:
            ahead = reader.submit(select, position + 1, size, TOPICS)
            written: Future[None] | None = None
            while not self._stop.is_set():
                rows = ahead.result()
                if not rows:
                    break
                size = min(page_size, size * 4)
                ahead = reader.submit(select, rows[-1][0] + 1, size, TOPICS)
                events = self._decode(rows)
                self._apply(state, events)
                appends, forgotten = state.take_appends(), state.take_forgotten()
                if written is not None:
                    written.result()
                written = writer.submit(self._write_appends, state, appends, forgotten)
                position = rows[-1][0]
                self.stats.pages += 1
                self.stats.events += len(events)
                self.stats.position = position
                if progress:
                    progress(position, total)
            if written is not None:
                written.result()
        return position

    def _write_appends(self, state: Page, appends: list[tuple[str, list[list[Any]]]],
                       forgotten: list[tuple[str, int]]) -> None:
        with self.db.transaction():
            state.copy_appends(appends)
            state.forget_reasons(forgotten)

    def _swap(self, state: Page, position: int) -> None:
        with self.db.transaction():
            state.write_state(fresh=True)
            migrate.lock_schema(self.db)  # after the bulk write: hold it only for the swap's DDL
            readers = analyst_grants(self.db) if self.db.dialect == "postgres" else {}
            self.db.executescript(drop_views_ddl())
            for table in TABLES:
                self.db.execute(f"DROP TABLE {table}")
                self.db.execute(f"ALTER TABLE {table}{state.s} RENAME TO {table}")
            self.db.executescript(tables_ddl(self.db.dialect))  # indexes, final names
            self.db.executescript(views_ddl(self.db.dialect))
            if readers:
                grant_select(self.db, readers)  # new tables: the analysts keep their access
            self.db.execute("UPDATE projection_tracking SET position = %s WHERE name = %s",
                            [position, TRACKING_NAME])


class RebuildInterrupted(RuntimeError):
    """A stop signal arrived during a rebuild; the fresh tables were not swapped in."""


def _without_indexes(ddl: str) -> str:
    # Fresh tables fill faster without secondary indexes; they are built at the swap.
    return "\n;\n".join(part for part in ddl.split("\n;\n")
                        if not part.strip().startswith("CREATE INDEX"))
