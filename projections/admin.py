"""PostgreSQL access for analysts: SELECT on the read models, nothing else.

Two levels: the read models keyed by lead id, which hold no personal data, and, only with
``with_personal=True``, ``lead_personal`` too (identities and job titles). Whatever else a
role could use to keep or smuggle data out of the read models is taken away: writes, CREATE
on the schema, temporary tables (``TEMPORARY`` on the database) and, where the connecting
role may, the functions that create large objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from leadflow.projections.db import ProjectionDB
from leadflow.projections.schema import PERSONAL_TABLES, TABLES, VIEWS

# Server-side functions that create a large object (client libraries' lo_creat/lo_import
# call them too, through the fast-path interface, which checks EXECUTE). Reading and writing
# a large object is governed by its own ACL, empty for a new role while
# lo_compat_privileges is off; creating one is governed by nothing else than these.
LARGE_OBJECT_CREATORS = ("lo_creat(integer)", "lo_create(oid)", "lo_from_bytea(oid, bytea)",
                         "lo_import(text)", "lo_import(text, oid)")


def analyst_objects(with_personal: bool = False) -> tuple[str, ...]:
    """The tables and views an analyst role may SELECT."""
    tables = TABLES if with_personal else tuple(t for t in TABLES if t not in PERSONAL_TABLES)
    return (*tables, *VIEWS)


@dataclass
class GrantResult:
    """What ``grant_analyst`` did, and what it could not do (to tell the operator)."""

    role: str
    with_personal: bool
    password_set: bool
    notes: list[str] = field(default_factory=list)


def grant_analyst(db: ProjectionDB, role: str, password: str | None,
                  with_personal: bool = False) -> GrantResult:
    """Create (or update) ``role`` so it can read the analyst read models only.

    It gets CONNECT and USAGE to reach them and SELECT on each read model without personal
    data (``with_personal``: ``lead_personal`` too; without it, a SELECT granted before is
    taken back); no privilege on the event store or the tracking tables; it can create
    nothing, temporary tables included. ``password`` None keeps the role's password (a new
    role then has none and cannot log in with one).
    """
    if db.dialect != "postgres":
        raise ValueError("grant-analyst needs PostgreSQL; SQLite has no roles")
    conn = db.pg
    ident = sql.Identifier(role)
    result = GrantResult(role, with_personal, password is not None)
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
                         .format(ident))
        if password is not None:
            # The statement holds the password as a literal: PostgreSQL may log it (with
            # log_statement = ddl or all). Sent pre-hashed it is not: SCRAM is computed here.
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                ident, sql.Literal(_scram(conn, password))))
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        db_ident = sql.Identifier(database[0])
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db_ident, ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(ident))
        # Start from nothing: whatever else was granted in this schema is taken back.
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident))
        grant_select(db, {role: with_personal})
        result.notes += _revoke_temporary(db, role, db_ident)
        result.notes += _revoke_large_objects(db, role)
    return result


def _scram(conn: psycopg.Connection[Any], password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, as PostgreSQL stores it."""
    encrypted = conn.pgconn.encrypt_password(password.encode(), b"", b"scram-sha-256")
    return encrypted.decode()


def _revoke_temporary(db: ProjectionDB, role: str, database: sql.Identifier) -> list[str]:
    """No temporary tables for the role.

    TEMPORARY is granted to PUBLIC by default, so revoking it from the role alone changes
    nothing: it is revoked from PUBLIC, after granting it explicitly to the connecting role
    (the database owner keeps it as owner). Other roles that need temporary tables must be
    granted TEMPORARY by name. Checked afterwards, since REVOKE only warns when the
    connecting role may not revoke.
    """
    conn, ident = db.pg, sql.Identifier(role)
    conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO CURRENT_USER").format(database))
    conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
    conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(database, ident))
    left = conn.execute("SELECT has_database_privilege(%s, current_database(), 'TEMPORARY')",
                        [role]).fetchone()
    if left is not None and left[0]:
        return ["it can still create temporary tables: TEMPORARY on the database could not be "
                "revoked from PUBLIC by this role; the database owner should run "
                "REVOKE TEMPORARY ON DATABASE <db> FROM PUBLIC"]
    return []


def _revoke_large_objects(db: ProjectionDB, role: str) -> list[str]:
    """No large objects for the role: none readable, none to create where that can be said.

    With ``lo_compat_privileges`` off (PostgreSQL's default) a large object is read and
    written only by its owner and those it is granted to: every grant to the role is taken
    back. Creating large objects has no privilege of its own; only revoking EXECUTE on the
    creating functions from PUBLIC prevents it, which needs their owner (a superuser).
    """
    conn, ident = db.pg, sql.Identifier(role)
    notes: list[str] = []
    compat = conn.execute("SELECT current_setting('lo_compat_privileges')").fetchone()
    if compat is not None and compat[0] == "on":
        notes.append("lo_compat_privileges is on: every role can read and write every large "
                     "object; turn it off (ALTER SYSTEM SET lo_compat_privileges = off)")
    granted = conn.execute(
        "SELECT m.oid FROM pg_largeobject_metadata m, aclexplode(m.lomacl) a "
        "WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)", [role]).fetchall()
    for (oid,) in granted:
        conn.execute(sql.SQL("REVOKE ALL ON LARGE OBJECT {} FROM {}").format(
            sql.Literal(int(oid)), ident))
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                             ).fetchone()
    functions = sql.SQL(", ").join(sql.SQL(f) for f in LARGE_OBJECT_CREATORS)
    if superuser is not None and superuser[0]:
        conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC").format(functions))
        conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(functions, ident))
    else:
        notes.append("it can still create (not read) large objects: revoking EXECUTE on "
                     "the lo_* creating functions needs a superuser (see docs/analytics.md, "
                     "Personal data)")
    return notes


def grant_select(db: ProjectionDB, grants: dict[str, bool]) -> None:
    """SELECT on every read model for each role, ``lead_personal`` only for those mapped to
    True (re-run after a rebuild swaps tables in); the personal tables' SELECT is revoked
    from the others."""
    for role, with_personal in grants.items():
        ident = sql.Identifier(role)
        for name in analyst_objects(with_personal):
            db.pg.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.Identifier(name), ident))
        if not with_personal:
            for name in PERSONAL_TABLES:
                db.pg.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(
                    sql.Identifier(name), ident))


def analyst_grants(db: ProjectionDB) -> dict[str, bool]:
    """Roles other than the owner that can read lead_state, each with whether it can read
    lead_personal too (to grant the same again after a swap)."""
    rows = db.query(
        "SELECT grantee, bool_or(table_name = 'lead_personal') AS personal "
        "FROM information_schema.role_table_grants "
        "WHERE table_name IN ('lead_state', 'lead_personal') AND privilege_type = 'SELECT' "
        "AND table_schema = current_schema() AND grantee <> current_user GROUP BY grantee "
        "HAVING bool_or(table_name = 'lead_state')")
    return {str(r["grantee"]): bool(r["personal"]) for r in sorted(
        rows, key=lambda r: str(r["grantee"]))}
