"""The read models' schema brought up to date in place: columns a newer leadflow added,
personal columns moved out of ``lead_state``, NOT NULL dropped where stored values may be
missing, and the advisory lock that serialises every process's DDL. ``Projector.setup``
runs them in one transaction; each does nothing once its change is made.
"""

from __future__ import annotations

import structlog

from leadflow.projections.db import ProjectionDB
from leadflow.projections.schema import (
    ADDED,
    PERSONAL_COLUMNS,
    RELAXED,
    columns,
    drop_views_ddl,
    sql_type,
    tables_ddl,
)
from leadflow.store.recorders import SCHEMA_LOCK_KEY

log = structlog.get_logger(__name__)


def add_columns(db: ProjectionDB) -> None:
    """Add the ``ADDED`` columns a table made by an older leadflow lacks (each at its
    end, where a fresh table has it). The views need not change: none selects ``*``."""
    for table, added in ADDED.items():
        present = column_names(db, table)
        for column in added:
            if column not in present:
                spec = next(c for c in columns()[table] if c.name == column)
                log.info("adding a read-model column", table=table, column=column,
                         hint="run `leadflow rebuild` once to project what the store "
                              "recorded before this column")
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} "
                                f"{sql_type(db.dialect, spec.kind)}")


def column_names(db: ProjectionDB, table: str) -> set[str]:
    if db.dialect == "postgres":
        rows = db.query(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s", [table])
    else:
        rows = db.query(f"PRAGMA table_info({table})")
    return {str(r["name"]) for r in rows}


def split_personal(db: ProjectionDB) -> bool:
    """Move the personal columns of a ``lead_state`` made by an older leadflow into
    ``lead_personal`` and drop them from ``lead_state`` (returns True: views were dropped).

    Analyst roles keep reading ``lead_state`` and lose the personal columns with it;
    ``lead_personal`` is granted to none of them (``db grant-analyst
    --with-personal-data`` does). A dropped column's values stay in the database file
    until its pages are rewritten (``VACUUM FULL lead_state``, SQLite's ``VACUUM``; see
    docs/analytics.md, Personal data). Runs once: afterwards the columns are gone.
    """
    in_table = column_names(db, "lead_state")
    present = [c for c in PERSONAL_COLUMNS if c in in_table]
    if not present:
        return False
    log.info("moving personal columns out of lead_state", columns=present)
    db.executescript(drop_views_ddl())
    names = ", ".join(present)
    db.execute(f"INSERT INTO lead_personal (lead_id, {names}) "
                    # WHERE: SQLite would read ON CONFLICT as a join's ON.
                    f"SELECT lead_id, {names} FROM lead_state WHERE true "
                    "ON CONFLICT (lead_id) DO NOTHING")
    db.execute("DROP INDEX IF EXISTS lead_state_primary_key")
    for column in present:
        db.execute(f"ALTER TABLE lead_state DROP COLUMN {column}")
    return True


def relax_not_null(db: ProjectionDB) -> bool:
    """Drop NOT NULL from the ``RELAXED`` columns of tables made by an older leadflow.

    PostgreSQL alters the columns in place; SQLite cannot, so the table is copied into a
    new one and swapped in (its views dropped first; returns True: recreate them).
    Runs once: afterwards the columns are nullable and nothing is done.
    """
    if db.dialect == "postgres":
        rows = db.query(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_nullable = 'NO' "
            "AND table_name = ANY(%s) AND column_name = ANY(%s)",
            [list(RELAXED), sorted({c for cols in RELAXED.values() for c in cols})])
        for row in rows:
            if row["column_name"] in RELAXED.get(row["table_name"], ()):
                db.execute(f"ALTER TABLE {row['table_name']} "
                                f"ALTER COLUMN {row['column_name']} DROP NOT NULL")
        return False
    stale = [table for table, cols in RELAXED.items()
             if any(r["name"] in cols and r["notnull"]
                    for r in db.query(f"PRAGMA table_info({table})"))]
    if not stale:
        return False
    db.executescript(drop_views_ddl())
    suffix = "_relaxed"
    fresh = {part.split()[5]: part for part in tables_ddl("sqlite", suffix).split("\n;\n")
             if part.strip().startswith("CREATE TABLE")}
    for table in stale:
        log.info("relaxing NOT NULL of stored-value columns", table=table)
        db.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
        db.execute(fresh[f"{table}{suffix}"])
        db.execute(f"INSERT INTO {table}{suffix} SELECT * FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}{suffix} RENAME TO {table}")
    db.executescript(tables_ddl("sqlite"))  # the indexes, under their final names
    return True


def lock_schema(db: ProjectionDB) -> None:
    """Serialise this transaction's DDL with every other leadflow process's.

    Two sessions creating or replacing the same table, view or type at once fail
    ("tuple concurrently updated", a duplicate type), and `project` is often started
    beside `funnel`, `report` or a consumer. SQLite's BEGIN IMMEDIATE already serialises.
    """
    if db.dialect == "postgres":
        db.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK_KEY])
