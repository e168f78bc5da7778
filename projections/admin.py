"""PostgreSQL access for analysts: SELECT on the read models, nothing else."""

from __future__ import annotations

from psycopg import sql

from leadflow.projections.db import ProjectionDB
from leadflow.projections.schema import TABLES, VIEWS


def analyst_objects() -> tuple[str, ...]:
    return (*TABLES, *VIEWS)


def grant_analyst(db: ProjectionDB, role: str, password: str | None) -> None:
    """Create (or update) ``role`` so it can read the projection tables and views only.

    It gets CONNECT and USAGE to reach them, SELECT on each read model, and no privilege on
    the event store or the tracking tables; it can create nothing.
    """
    if db.dialect != "postgres":
        raise ValueError("grant-analyst needs PostgreSQL; SQLite has no roles")
    conn = db.pg
    ident = sql.Identifier(role)
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
                         .format(ident))
        if password is not None:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident,
                                                                     sql.Literal(password)))
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(database[0]), ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(ident))
        # Start from nothing: whatever else was granted in this schema is taken back.
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident))
        grant_select(db, [role])


def grant_select(db: ProjectionDB, roles: list[str]) -> None:
    """SELECT on every read model for ``roles`` (re-run after a rebuild swaps tables in)."""
    for role in roles:
        for name in analyst_objects():
            db.pg.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.Identifier(name), sql.Identifier(role)))


def analyst_roles(db: ProjectionDB) -> list[str]:
    """Roles other than the owner that can read lead_state (to re-grant after a swap)."""
    rows = db.query(
        "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
        "WHERE table_name = 'lead_state' AND privilege_type = 'SELECT' "
        "AND grantee <> current_user")
    return sorted(str(r["grantee"]) for r in rows)
