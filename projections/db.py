"""A small connection wrapper so one projection code path writes SQLite and PostgreSQL.

SQL is written with ``%s`` placeholders (psycopg's style) and converted for sqlite3. Times are
stored as ``timestamptz`` on PostgreSQL and as ISO 8601 UTC text on SQLite (which compares
and sorts correctly as text and works with SQLite's date functions).

``to_text``, ``to_real``, ``to_int``, ``to_bool``, ``to_ts`` and ``to_day`` turn any value a
stored event can carry into one its column holds on BOTH databases, the same on each: text
without the characters PostgreSQL text cannot hold, finite numbers within the PostgreSQL
column's range, UTC times; anything else becomes NULL. The projector passes every row
through them before writing (``clean_rows``), so what got into the immutable event store
(``Infinity``, NUL, a 400-digit number) can never stop the read models.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
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
            # Overwritten, not just unlinked: a forgotten person's email must not linger in
            # the free space of the pages an update or delete left (leadflow forget).
            self._sqlite.execute("PRAGMA secure_delete=ON")
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
                  columns: Sequence[str] = (), kinds: Sequence[str] = ()) -> None:
        """Append rows to a table: ``COPY … FROM STDIN`` on PostgreSQL, a bulk insert on SQLite.

        COPY streams the rows in one command with no per-row statement, which is what a
        rebuild's millions of ledger and transition rows need. ``kinds`` (the columns' kinds,
        see ``CONVERTERS``, of rows already converted by ``clean_rows``): the rows go in
        PostgreSQL's binary format, which neither side has to print or parse as text.
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
        types = [BINARY_TYPES[kind] for kind in kinds if kind in BINARY_TYPES]
        binary = bool(kinds) and len(types) == len(kinds)
        with self._pg.cursor() as cur, cur.copy(
                f"COPY {table}{names} FROM STDIN{' (FORMAT BINARY)' if binary else ''}") as copy:
            if binary:
                copy.set_types(types)
            write = copy.write_row
            for row in rows:
                write(row)

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


# ----------------------------------------------------------------- stored values -> columns

INT_RANGE = (-(2**31), 2**31 - 1)  # PostgreSQL INTEGER (SQLite's is wider: the same on both)
BIG_RANGE = (-(2**63), 2**63 - 1)  # BIGINT
# Larger magnitudes are NULL in DOUBLE PRECISION/REAL columns: no quantity here comes near,
# and below it a SUM over up to 10^8 rows cannot overflow (PostgreSQL raises on overflow).
REAL_LIMIT = 1e300
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,30}\s*\Z")


def clean_text(value: str) -> str:
    """NUL (PostgreSQL text cannot hold it) and lone surrogates (UTF-8 cannot encode them)
    become U+FFFD, so SQLite and PostgreSQL hold the same text."""
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    if not value.isascii() and _SURROGATE.search(value):
        value = _SURROGATE.sub(REPLACEMENT, value)
    return value


def to_text(value: Any) -> str | None:
    if type(value) is str:
        return value if value.isascii() and "\x00" not in value else clean_text(value)
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(str.__str__(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value) if (value := to_ts(value)) is not None else None
    if isinstance(value, dict | list | tuple):
        try:
            return clean_text(json.dumps(value, default=str, sort_keys=True))
        except (ValueError, TypeError):
            pass
    try:
        return clean_text(str(value))
    except ValueError:  # an int beyond Python's digit limit for str()
        return None


def to_real(value: Any) -> float | None:
    """A finite float within ``REAL_LIMIT``; NULL for anything else (inf, NaN, 1e400, text
    that is no number)."""
    if type(value) is not float:
        if value is None or isinstance(value, bool):
            return None
        if not isinstance(value, int | float | Decimal | str):
            return None
        try:
            value = float(value)
        except (ValueError, OverflowError):
            return None
    # NaN fails both comparisons.
    return value if -REAL_LIMIT <= value <= REAL_LIMIT else None


def to_int(value: Any, bounds: tuple[int, int] = INT_RANGE) -> int | None:
    """An integer within the PostgreSQL column's range; NULL for anything else (a float that
    is not whole, a 400-digit number, text that is no integer)."""
    if type(value) is not int:
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, int):
            value = int(value)
        elif isinstance(value, float):
            if not value.is_integer():  # also false for inf and NaN
                return None
            value = int(value)
        elif isinstance(value, Decimal):
            if not value.is_finite() or value != value.to_integral_value():
                return None
            value = int(value)
        elif isinstance(value, str) and _INTEGER.match(value):
            value = int(value)
        else:
            return None
    return value if bounds[0] <= value <= bounds[1] else None


def to_big(value: Any) -> int | None:
    return to_int(value, BIG_RANGE)


def to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    return None


def to_ts(value: Any) -> datetime | None:
    """A UTC datetime (a time without zone is taken as UTC); NULL for anything else or a time
    that cannot be expressed in UTC."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is UTC:
        return when
    if when.tzinfo is None or when.utcoffset() is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        return None


def to_day(value: Any) -> str | None:
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            return None
    return None


#: PostgreSQL's type of each kind's column, for a binary COPY of converted values (a "day"
#: is converted to ISO text: it goes as text).
BINARY_TYPES = {"text": "text", "real": "float8", "int": "int4", "big": "int8", "bool": "bool",
                "ts": "timestamptz"}

CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "text": to_text, "real": to_real, "int": to_int, "big": to_big, "bool": to_bool,
    "ts": to_ts, "day": to_day,
}


class RowRejected(ValueError):
    """A row that still has NULL in a NOT NULL column after conversion (a stored event lacks a
    value the read model cannot do without)."""

    def __init__(self, table: str, column: str, value: Any, row: Sequence[Any]) -> None:
        shown = repr(value)
        super().__init__(f"{table}.{column} cannot hold the stored value "
                         f"{shown[:80] + '…' if len(shown) > 80 else shown}")
        self.table = table
        self.column = column
        self.row = row


# Each kind's value as the column holds it: the common case (already right) inline, the
# converter only for the rest. Inline, because a rebuild converts every value it writes.
_FAST = {
    "text": "{v} if {v} is None or (type({v}) is str and {v}.isascii() and '\\x00' not in {v}) "
            "else to_text({v})",
    "real": "{v} if {v} is None or (type({v}) is float and -REAL_LIMIT <= {v} <= REAL_LIMIT) "
            "else to_real({v})",
    "int": "{v} if {v} is None or (type({v}) is int and INT_LO <= {v} <= INT_HI) else to_int({v})",
    "big": "{v} if {v} is None or (type({v}) is int and BIG_LO <= {v} <= BIG_HI) else to_big({v})",
    "bool": "{v} if {v} is None or type({v}) is bool else to_bool({v})",
    "ts": "{v} if {v} is None or (type({v}) is datetime and {v}.tzinfo is UTC) else to_ts({v})",
    "day": "to_day({v})",
}


@cache
def _cleaner(table: str, kinds: tuple[tuple[str, str, bool], ...]) -> Callable[
        [Iterable[Sequence[Any]]], list[list[Any]]]:
    """A function converting rows of ``kinds`` column by column, generated (as dataclasses
    and namedtuple generate theirs) from the fixed templates above and the table's column
    kinds, so the common case costs no call per value."""
    names = [f"v{i}" for i in range(len(kinds))]
    values = ", ".join(_FAST[kind].format(v=name)
                       for name, (_, kind, _) in zip(names, kinds, strict=True))
    missing = " or ".join(f"out[{i}] is None" for i, (_, _, nullable) in enumerate(kinds)
                          if not nullable) or "False"
    source = (f"def clean(rows):\n"
              f"    cleaned = []\n"
              f"    for row in rows:\n"
              f"        {', '.join(names)}, = row\n"
              f"        out = [{values}]\n"
              f"        if {missing}:\n"
              f"            reject(out, row)\n"
              f"        cleaned.append(out)\n"
              f"    return cleaned\n")

    def reject(out: list[Any], row: Sequence[Any]) -> None:
        i = next(i for i, (_, _, nullable) in enumerate(kinds)
                 if not nullable and out[i] is None)
        raise RowRejected(table, kinds[i][0], row[i], row)

    namespace: dict[str, Any] = {
        **{f.__name__: f for f in CONVERTERS.values()}, "reject": reject,
        "datetime": datetime, "UTC": UTC, "REAL_LIMIT": REAL_LIMIT, "INT_LO": INT_RANGE[0],
        "INT_HI": INT_RANGE[1], "BIG_LO": BIG_RANGE[0], "BIG_HI": BIG_RANGE[1]}
    exec(source, namespace)  # the source above holds no outside value
    clean: Callable[[Iterable[Sequence[Any]]], list[list[Any]]] = namespace["clean"]
    return clean


def clean_rows(table: str, kinds: Sequence[tuple[str, str, bool]],
               rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Rows converted column by column (``kinds``: name, kind, nullable, in row order).

    Raises ``RowRejected`` for a NULL left in a NOT NULL column.
    """
    return _cleaner(table, tuple(kinds))(rows)
