"""Keeping the PostgreSQL planner's statistics of the events table current.

Every writer locks the events table (``LOCK TABLE … IN EXCLUSIVE MODE``, the library's way of
keeping notification ids in commit order) for each commit. Autovacuum's ANALYZE asks for a
lock that conflicts with it and, outside wraparound protection, *skips* a table it cannot lock
at once: with a consumer committing back to back, the events table is never analysed. Its
row count still moves (the insert-triggered VACUUM sets ``reltuples``), but without column
statistics the planner assumes 0.5 % of the rows share an ``originator_id``. Once the table
is large, loading 300 leads by id (``= ANY``) is planned as a sequential scan of every row,
and with the cost that high PostgreSQL also JIT-compiles the query. Measured on the default
bench stream after 1,018,000 rows: 335 ms a load (a JIT compile of up to 220 ms on top), 11 ms
after one ``ANALYZE`` (0.22 s); the single consumer had slowed from ~1,900 to ~1,250 records
a second over its nine minutes, PostgreSQL at 100 % of a core.

So leadflow analyses the table itself: a writer checks the table's statistics every
``check_every`` rows it commits (one catalogue query) and runs ``ANALYZE`` when more rows
changed since the last analysis than ``min_rows`` + ``growth`` × the rows then known
(autovacuum's own rule, with a larger factor), or when a table of more than ``min_rows`` rows
was never analysed. The factor is 1: the table is analysed each time it doubled. An analysis
of a large table samples 30,000 rows whatever its size (0.16-0.21 s at 218,000 rows) and
holds a lock every writer's commit waits for; with a fifth, the default stream was analysed
~20 times once past 30,000 rows, with a doubling ~5. The planner needs no more: it keeps
``originator_id``'s distinct count as a fraction of the rows (-0.16 on the bench stream), so
rows per lead stay right as the table grows; what it cannot do without is a first analysis.

Bulk readers (rebuild, rescore) check once before their first page, so a store filled by an
older version, or restored from a dump, is planned right. The analysis waits at most
``lock_timeout`` for a writer's commit; a store owned by another role is analysed by its owner
(PostgreSQL skips the table with a warning, not an error).
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import errors
from psycopg.sql import SQL, Identifier

from leadflow.logs import get_logger

log = get_logger(__name__)

# The rows known at the last analysis, the rows changed since (cumulative statistics: other
# processes' writes show up with a delay of a second or more) and whether the table has
# column statistics at all.
_STALENESS = SQL(
    "SELECT c.reltuples, s.n_mod_since_analyze, EXISTS (SELECT 1 FROM pg_stats p "
    "WHERE p.schemaname = n.nspname AND p.tablename = c.relname) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(%s)")


class StatisticsKeeper:
    """Analyses one table when enough of it changed since its last analysis."""

    def __init__(self, datastore: Any, schema: str, table: str, *, check_every: int = 10_000,
                 min_rows: int = 1_000, growth: float = 1.0, lock_timeout_s: float = 2.0
                 ) -> None:
        self.datastore = datastore
        self.qualified = Identifier(schema, table) if schema else Identifier(table)
        self.name = f"{schema}.{table}" if schema else table
        self.check_every = check_every
        self.min_rows = min_rows
        self.growth = growth
        self.lock_timeout_ms = int(lock_timeout_s * 1000)
        self._written = 0
        self._since_analysis = 0  # rows this process committed since it last analysed
        self._next_check = 0  # the first commit checks: a writer joining a stale store fixes it
        self.analyses = 0
        self._read_checked = False

    def before_bulk_read(self) -> None:
        """Check once per process, before a command reads the table page by page."""
        if not self._read_checked:
            self._read_checked = True
            self.check()

    def wrote(self, rows: int) -> None:
        """Count rows this process committed; check the statistics every ``check_every``."""
        self._written += rows
        self._since_analysis += rows
        if self._written >= self._next_check:
            self._next_check = self._written + self.check_every
            self.check()

    def check(self) -> bool:
        """Analyse the table if it is stale; whether it was analysed."""
        with self.datastore.get_connection() as conn:
            # The quoted name, as to_regclass parses it (a schema or table with capitals).
            row = conn.execute(_STALENESS, (self.qualified.as_string(conn),)).fetchone()
            if row is None:  # no such table yet, or the statistics views hide it
                return False
            values = list(row.values()) if isinstance(row, dict) else list(row)
            known, changed = max(float(values[0] or 0.0), 0.0), int(values[1] or 0)
            if values[2]:
                # This process's own writes count at once, others' as they are reported.
                changed = max(changed, self._since_analysis)
                if changed <= self.min_rows + self.growth * known:
                    return False
            else:
                # Never analysed: worth it once the table holds more than a few rows (a
                # bounded count: the row estimate of a table never vacuumed is unknown).
                counted = conn.execute(SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) t")
                                       .format(self.qualified), (self.min_rows + 1,)).fetchone()
                assert counted is not None
                changed = int(next(iter(counted.values())) if isinstance(counted, dict)
                              else counted[0])
                if changed <= self.min_rows:
                    return False
            started = time.perf_counter()
            try:
                with conn.transaction():
                    conn.execute(SQL("SET LOCAL lock_timeout = {}").format(self.lock_timeout_ms))
                    conn.execute(SQL("ANALYZE {}").format(self.qualified))
            except errors.LockNotAvailable:
                # A long commit of another writer: the next check (``check_every`` rows on)
                # tries again; the store stays correct, only slower to read meanwhile.
                log.info("table analysis deferred: a writer holds its lock", table=self.name,
                         changed_rows=changed, lock_timeout_ms=self.lock_timeout_ms)
                return False
        self.analyses += 1
        self._since_analysis = 0
        log.info("table analysed for the query planner", table=self.name,
                 known_rows=int(known), changed_rows=changed,
                 seconds=round(time.perf_counter() - started, 3))
        return True
