"""A small connection wrapper so one projection code path writes SQLite and PostgreSQL.

SQL is written with ``%s`` placeholders (psycopg's style) and converted for sqlite3. Times are
stored as ``timestamptz`` on PostgreSQL and as ISO 8601 UTC text on SQLite (which compares
and sorts correctly as text and works with SQLite's date functions).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlparse

import psycopg

from leadflow.config import ConfigError

Dialect = Literal["sqlite", "postgres"]


class ProjectionDB:
    """One connection to the database that holds the event store and the read models."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        if parsed.scheme == "sqlite":
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
            self.dialect: Dialect = "sqlite"
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
            self._sqlite = sqlite3.connect(path, isolation_level=None, timeout=30,
                                           check_same_thread=False)
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._pg: psycopg.Connection[Any] | None = None
        elif parsed.scheme in ("postgresql", "postgres"):
            self.dialect = "postgres"
            self._pg = psycopg.connect(url, autocommit=True)
        else:
            raise ConfigError(
                f"projections need sqlite:///PATH or postgresql://… (got {url!r}); the "
                "in-memory store has no tables to project into"
            )

    def close(self) -> None:
        if self.dialect == "sqlite":
            self._sqlite.close()
        elif self._pg is not None:
            self._pg.close()

    def _sql(self, statement: str) -> str:
        return statement.replace("%s", "?") if self.dialect == "sqlite" else statement

    @contextmanager
    def transaction(self) -> Iterator[ProjectionDB]:
        if self.dialect == "sqlite":
            self._sqlite.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._sqlite.execute("ROLLBACK")
                raise
            self._sqlite.execute("COMMIT")
        else:
            assert self._pg is not None
            with self._pg.transaction():
                yield self

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        if self.dialect == "sqlite":
            self._sqlite.execute(self._sql(statement), [to_db(p, self.dialect) for p in params])
        else:
            assert self._pg is not None
            self._pg.execute(statement, [to_db(p, self.dialect) for p in params])

    def executescript(self, script: str) -> None:
        if self.dialect == "sqlite":
            for statement in split_sql(script):
                self._sqlite.execute(statement)
        else:
            assert self._pg is not None
            for statement in split_sql(script):
                self._pg.execute(statement)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        converted = [[to_db(v, self.dialect) for v in row] for row in rows]
        if self.dialect == "sqlite":
            self._sqlite.executemany(self._sql(statement), converted)
        else:
            assert self._pg is not None
            with self._pg.cursor() as cur:
                cur.executemany(statement, converted)

    def copy_rows(self, table: str, rows: Sequence[Sequence[Any]],
                  columns: Sequence[str] = ()) -> None:
        """Append rows to a table: ``COPY … FROM STDIN`` on PostgreSQL, a bulk insert on SQLite.

        COPY streams the rows in one command with no per-row statement, which is what a
        rebuild's millions of ledger and transition rows need.
        """
        if not rows:
            return
        names = f" ({', '.join(columns)})" if columns else ""
        if self.dialect == "sqlite":
            width = len(columns) if columns else len(rows[0])
            self.executemany(f"INSERT INTO {table}{names} VALUES ({', '.join(['%s'] * width)})",
                             rows)
            return
        assert self._pg is not None
        with self._pg.cursor() as cur, cur.copy(f"COPY {table}{names} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self.dialect == "sqlite":
            cur = self._sqlite.execute(self._sql(statement),
                                       [to_db(p, self.dialect) for p in params])
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        assert self._pg is not None
        with self._pg.cursor() as pg_cur:
            pg_cur.execute(statement, [to_db(p, self.dialect) for p in params])
            pg_names = [d.name for d in pg_cur.description or ()]
            return [dict(zip(pg_names, row, strict=True)) for row in pg_cur.fetchall()]

    def table_exists(self, name: str) -> bool:
        if self.dialect == "sqlite":
            rows = self.query("SELECT name FROM sqlite_master WHERE type='table' AND name=%s",
                              [name])
        else:
            rows = self.query("SELECT to_regclass(%s) IS NOT NULL AS present", [name])
            return bool(rows[0]["present"])
        return bool(rows)

    @property
    def pg(self) -> psycopg.Connection[Any]:
        assert self._pg is not None
        return self._pg


def to_db(value: Any, dialect: Dialect) -> Any:
    if dialect == "sqlite":
        if isinstance(value, datetime):
            return iso(value)
        if isinstance(value, bool):
            return int(value)
    return value


def iso(value: datetime) -> str:
    """Fixed-width UTC text: sorts and compares correctly, and SQLite's date functions read it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def from_db(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def split_sql(script: str) -> list[str]:
    """Statements of a script separated by lines holding only ';' (keeps bodies intact)."""
    parts: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip() == ";":
            text = "\n".join(current).strip()
            if text:
                parts.append(text)
            current = []
        else:
            current.append(line)
    text = "\n".join(current).strip()
    if text:
        parts.append(text)
    return parts
