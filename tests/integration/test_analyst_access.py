"""The analyst role on a real PostgreSQL: funnels and reports without personal data, personal
data only when granted, nothing to write, create or keep (temporary tables, large objects),
and a password that never passes through the arguments."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

import psycopg
import pytest
from psycopg import sql

from leadflow.projections import queries
from leadflow.projections.db import ProjectionDB
from leadflow.projections.projector import Projector
from leadflow.projections.report import render_report
from leadflow.projections.schema import (
    PERSONAL_COLUMNS,
    TABLES,
    VIEWS,
    drop_views_ddl,
    tables_ddl,
)
from leadflow.projections.writer import STATE_COLUMNS
from tests.conftest import Records, clean_env
from tests.integration.test_projections import engine, scenario

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]
EMAILS = ("l1@ads.io", "l2@ads.io", "l3@org.io", "l4@org.io", "l5@org.io", "l6@partner.io")


@pytest.fixture
def analyst(pg_url: str) -> Iterator[tuple[str, str]]:
    role = f"analyst_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield role, pg_url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def login(url: str, role: str, password: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(netloc=f"{role}:{quote(password, safe='')}@{parsed.hostname}:"
                                              f"{parsed.port}"))


def grant(url: str, role: str, *args: str, env: dict[str, str] | None = None,
          stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LEADFLOW, "db", "grant-analyst", role, *args],
                          env={**clean_env(), "LEADFLOW_DATABASE_URL": url, **(env or {})},
                          input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=120, check=False)


def projected(url: str, rec: Records) -> None:
    app = engine(url)
    assert not app.apply_batch(scenario(rec)).rejected
    db = ProjectionDB(url)
    Projector(app, db).run(until_idle=True)
    db.close()


def rebuild(url: str) -> None:
    db = ProjectionDB(url)
    Projector(engine(url), db).rebuild()  # fresh tables swapped in: grants must follow
    db.close()


def everything_readable(conn: psycopg.Connection[Any]) -> str:
    """Every row of every table and view the role may read, as one text."""
    out = []
    for name in (*TABLES, *VIEWS):
        try:
            out += [repr(row) for row in conn.execute(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier(name))).fetchall()]
        except psycopg.errors.InsufficientPrivilege:
            continue
    return "\n".join(out)


def test_the_analyst_role_queries_funnels_and_the_report_without_any_personal_data(
        analyst: tuple[str, str], rec: Records) -> None:
    role, url = analyst
    projected(url, rec)
    done = grant(url, role, env={"LEADFLOW_ANALYST_PASSWORD": "s3cret-env"})
    assert done.returncode == 0, done.stderr
    assert "without personal data" in done.stdout and "password set" in done.stdout
    assert "s3cret-env" not in done.stdout + done.stderr
    rebuild(url)

    as_analyst = ProjectionDB(login(url, role, "s3cret-env"))
    try:
        funnel = queries.funnel(as_analyst, by="source")
        assert [s.count for s in funnel.stages] == [6, 4, 4, 2, 1]
        assert {r["step"] for r in queries.velocity(as_analyst)} >= {"new->mql", "mql->sql"}
        assert queries.cohorts(as_analyst) and queries.by_owner(as_analyst)
        assert queries.by_source(as_analyst) and queries.by_status(as_analyst)
    finally:
        as_analyst.close()
    owner = ProjectionDB(url)
    page = render_report(owner)  # `leadflow report` projects first: the owner's command
    owner.close()
    assert "Funnel" in page and not any(email in page for email in EMAILS)

    with psycopg.connect(login(url, role, "s3cret-env"), autocommit=True) as conn:
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'lead_state'")}
        assert "stage" in columns and not columns & set(PERSONAL_COLUMNS)
        readable = everything_readable(conn)
        assert "customer" in readable
        assert not [e for e in EMAILS if e in readable or e.split("@")[0] + "@" in readable]
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.execute("SELECT primary_key FROM lead_state")


def test_the_analyst_role_cannot_read_personal_data_write_or_create_anything(
        analyst: tuple[str, str], rec: Records) -> None:
    role, url = analyst
    projected(url, rec)
    done = grant(url, role, "--password-stdin", stdin="s3cret stdin\n")
    assert done.returncode == 0, done.stderr
    assert not done.stderr  # superuser here: nothing it could not revoke
    events_table = engine(url).recorder.events_table_name  # type: ignore[attr-defined]
    with psycopg.connect(login(url, role, "s3cret stdin"), autocommit=True) as conn:
        for statement in ("SELECT * FROM lead_personal",
                          "SELECT identities FROM lead_personal",
                          f"SELECT * FROM {events_table} LIMIT 1",
                          "SELECT * FROM projection_tracking",
                          "UPDATE lead_state SET stage = 'customer'",
                          "DELETE FROM score_ledger",
                          "INSERT INTO funnel_daily VALUES ('2026-01-01', 'new', '', '', 1)",
                          "CREATE TABLE mine (x int)",
                          "CREATE TEMP TABLE kept AS SELECT * FROM lead_state",
                          "CREATE TEMPORARY TABLE kept (x int)",
                          "SELECT lo_creat(-1)",
                          "SELECT lo_create(0)",
                          "SELECT lo_from_bytea(0, 'x'::bytea)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT has_database_privilege(current_user, current_database(), "
                            "'TEMPORARY')").fetchone() == (False,)
    # The connecting role keeps its own temporary tables (granted by name, not via PUBLIC).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE mine (x int)")


def test_with_personal_data_the_role_reads_lead_personal_until_granted_again_without(
        analyst: tuple[str, str], rec: Records) -> None:
    role, url = analyst
    projected(url, rec)
    done = grant(url, role, "--with-personal-data", "--password-stdin", stdin="pw-1\r\n")
    assert done.returncode == 0, done.stderr
    assert "personal data included" in done.stdout
    rebuild(url)
    with psycopg.connect(login(url, role, "pw-1"), autocommit=True) as conn:
        keys = {r[0] for r in conn.execute("SELECT primary_key FROM lead_personal")}
        assert keys == {f"email:{e}" for e in EMAILS}
        joined = conn.execute(
            "SELECT p.primary_key, s.stage FROM lead_state s "
            "JOIN lead_personal p USING (lead_id) WHERE s.stage = 'customer'").fetchall()
        assert joined == [("email:l1@ads.io", "customer")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TEMP TABLE kept (x int)")

    # Granted again without the flag (no password given: it stays): personal access is gone.
    again = grant(url, role)
    assert again.returncode == 0, again.stderr
    assert "password unchanged" in again.stdout
    rebuild(url)
    with psycopg.connect(login(url, role, "pw-1"), autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM lead_state").fetchone() == (6,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM lead_personal")


def test_a_password_in_the_arguments_is_refused_naming_the_ways_to_give_it(
        analyst: tuple[str, str]) -> None:
    role, url = analyst
    done = grant(url, role, "--password", "hunter2-argv")
    assert done.returncode == 2
    assert "--password-stdin" in done.stderr and "LEADFLOW_ANALYST_PASSWORD" in done.stderr
    assert "hunter2-argv" not in done.stdout + done.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() \
            is None
    empty = grant(url, role, "--password-stdin", stdin="")
    assert empty.returncode == 2 and "stdin held no password" in empty.stderr


def _read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} on the terminal; it showed {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal closed: the process is gone
                chunk = b""
            assert chunk, f"the terminal closed before {wanted!r}; it showed {bytes(seen)!r}"
            seen += chunk


def test_on_a_terminal_the_password_is_prompted_hidden_and_confirmed(
        analyst: tuple[str, str]) -> None:
    role, url = analyst
    master, slave = os.openpty()

    # The terminal becomes the process' controlling one, as in a login shell, so getpass
    # reads the password from /dev/tty with echo off (not its fallback on stdin).
    take_terminal = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                     "os.execv(sys.executable, [sys.executable, '-m', 'leadflow.cli', "
                     "*sys.argv[1:]])")
    process = subprocess.Popen(
        [sys.executable, "-c", take_terminal, "db", "grant-analyst", role],
        env={**clean_env(), "LEADFLOW_DATABASE_URL": url}, stdin=slave, stdout=subprocess.PIPE,
        stderr=slave, start_new_session=True)
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, b"Password for role", seen)
        os.write(master, b"typed-s3cret\n")
        _read_until(master, b"Repeat", seen)
        os.write(master, b"typed-s3cret\n")
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert process.returncode == 0, bytes(seen)
    assert b"password set" in out
    assert b"typed-s3cret" not in bytes(seen) + out  # not echoed
    with psycopg.connect(login(url, role, "typed-s3cret"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


def rows_of(db: ProjectionDB) -> list[tuple[str, ...]]:
    return sorted(tuple(str(v) for v in r.values()) for r in db.query(
        "SELECT s.*, p.primary_key, p.identities, p.title FROM lead_state s "
        "JOIN lead_personal p ON p.lead_id = s.lead_id ORDER BY s.lead_id"))


def test_a_lead_state_of_an_older_leadflow_gives_its_personal_columns_to_lead_personal(
        db_url: str, rec: Records, request: pytest.FixtureRequest) -> None:
    projected(db_url, rec)
    db = ProjectionDB(db_url)
    before = rows_of(db)
    # Back to the layout before lead_personal: the personal columns inside lead_state.
    old = tables_ddl(db.dialect, "_old").split("\n;\n")[0].replace(
        "lead_id TEXT PRIMARY KEY,", "lead_id TEXT PRIMARY KEY, primary_key TEXT NOT NULL, "
        "identities TEXT NOT NULL, title TEXT,")
    with db.transaction():
        db.executescript(drop_views_ddl())
        db.execute(old)
        db.execute("INSERT INTO lead_state_old SELECT s.lead_id, p.primary_key, p.identities, "
                   "p.title, " + ", ".join(f"s.{c}" for c in STATE_COLUMNS[1:])
                   + " FROM lead_state s JOIN lead_personal p ON p.lead_id = s.lead_id")
        db.execute("DROP TABLE lead_state")
        db.execute("DROP TABLE lead_personal")
        db.execute("ALTER TABLE lead_state_old RENAME TO lead_state")
        db.execute("CREATE INDEX lead_state_primary_key ON lead_state (primary_key)")
    if db.dialect == "postgres":  # an analyst who could read every email through lead_state
        role = f"old_reader_{uuid.uuid4().hex[:8]}"
        db.execute(f"CREATE ROLE {role} LOGIN")

        def drop_role() -> None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")
        request.addfinalizer(drop_role)
        db.execute(f"GRANT SELECT ON lead_state TO {role}")
    Projector(engine(db_url), db).setup()
    assert rows_of(db) == before
    assert db.query("SELECT COUNT(*) AS n FROM leads_by_status")[0]["n"] > 0  # views back
    if db.dialect == "postgres":
        columns = {r["column_name"] for r in db.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'lead_state' AND table_schema = current_schema()")}
        assert not columns & set(PERSONAL_COLUMNS)
        assert db.query("SELECT has_table_privilege(%s, 'lead_state', 'SELECT') AS s, "
                        "has_table_privilege(%s, 'lead_personal', 'SELECT') AS p",
                        [role, role]) == [{"s": True, "p": False}]
    else:
        columns = {r["name"] for r in db.query("PRAGMA table_info(lead_state)")}
        assert not columns & set(PERSONAL_COLUMNS)
    Projector(engine(db_url), db).rebuild()
    assert rows_of(db) == before
    db.close()


@pytest.fixture
def owner_database(pg_url: str) -> Iterator[tuple[str, str]]:
    """A database owned by a role that is no superuser (as a managed PostgreSQL gives): the
    URL logging in as that role, and the name of the analyst role the test may create."""
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    analyst = f"analyst_of_{owner}"
    name = f"{urlparse(pg_url).path.lstrip('/')}_owned"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'owner-pw'")
                     .format(sql.Identifier(owner)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                   sql.Identifier(owner)))
    parsed = urlparse(pg_url)
    yield urlunparse(parsed._replace(netloc=f"{owner}:owner-pw@{parsed.hostname}:{parsed.port}",
                                     path=f"/{name}")), analyst
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                     .format(sql.Identifier(name)))
        for role in (analyst, owner):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_run_by_a_database_owner_that_is_no_superuser_it_says_what_it_could_not_revoke(
        owner_database: tuple[str, str], rec: Records) -> None:
    url, role = owner_database
    projected(url, rec)
    done = grant(url, role, env={"LEADFLOW_ANALYST_PASSWORD": "pw-owned"})
    assert done.returncode == 0, done.stderr
    # Temporary tables: the owner may revoke them from PUBLIC. Creating large objects: only a
    # superuser may take that away, and the command says so.
    assert "can still create (not read) large objects" in done.stderr
    assert "temporary" not in done.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        kept = conn.execute("SELECT lo_from_bytea(0, 'owner data'::bytea)").fetchone()
        assert kept is not None
    with psycopg.connect(login(url, role, "pw-owned"), autocommit=True) as conn:
        assert queries_work(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TEMP TABLE kept (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT lo_get(%s)", [kept[0]])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM lead_personal")


def queries_work(conn: psycopg.Connection[Any]) -> bool:
    stages = dict(conn.execute("SELECT stage, leads FROM leads_by_status").fetchall())
    return stages.get("customer") == 1
