"""Read models from a hostile event store, on SQLite and PostgreSQL.

The event store is immutable: whatever an older engine or someone with database access put
into it stays. ``Infinity``/``NaN`` (Python's json wrote them), a number beyond a double, a
400-digit integer, NUL and lone surrogates in text, bytes that are no UTF-8, a deleted event:
``project`` and ``rebuild`` must still succeed, and give the same tables on both databases.
An event that still cannot be projected stops the projector with one line naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from leadflow.projections.db import ProjectionDB, from_db
from leadflow.projections.projector import ProjectionFailedError, Projector
from leadflow.projections.schema import RELAXED, TABLES, columns, tables_ddl
from leadflow.store.fold import is_envelope
from tests.conftest import T0, Records, clean_env, days
from tests.integration.test_verify import Store

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]
FFFD = "\ufffd"
HUGE_INT = int("9" * 400)


def engine(url: str) -> LeadflowApp:
    return LeadflowApp(env=Settings(database_url=url, aggregate_cache_size=0)
                       .eventsourcing_env({}))


def scenario(rec: Records) -> list[Any]:
    def touches(email: str, source: str, campaign: str | None) -> list[Any]:
        context = {"source": source, **({"campaign": campaign} if campaign else {})}
        return [rec(kind, email, at=T0, context=context)
                for kind in ("content_downloaded", "email_clicked", "content_downloaded",
                             "trial_started")]

    return [
        *touches("l1@ads.io", "ads", "c1"),
        *touches("l2@ads.io", "ads", "c1"),
        *touches("l3@org.io", "organic", None),
        rec("email_opened", "l4@org.io", at=T0, context={"source": "organic"}),
        rec("demo_requested", "l5@org.io", at=T0 + days(1), context={"source": "organic"},
            lead={"title": "VP Sales", "employees": 200, "country": "US"}),
        rec("form_submitted", "l6@partner.io", at=T0 + days(2),
            context={"source": "partner", "campaign": "spring"}),
        rec("sales_accepted", "l1@ads.io", at=T0 + days(2), actor="rep-a"),
        rec("converted", "l1@ads.io", at=T0 + days(5), actor="rep-a",
            deal={"id": "D1", "amount": "1000", "currency": "USD"}),
        rec("sales_accepted", "l2@ads.io", at=T0 + days(3), actor="rep-b"),
        rec("converted", "l2@ads.io", at=T0 + days(6), actor="rep-b",
            deal={"id": "D2", "amount": "500", "currency": "USD"}),
    ]


# Placeholders a JSON encoder cannot write, put into the payload bytes afterwards.
LITERALS = {'"@1e400"': b"1e400", '"@bad-utf8"': b'"/p\xffage"'}


class Hostile:
    """Edits stored payloads in SQL the way the attacks left them."""

    def __init__(self, url: str, app: LeadflowApp) -> None:
        self.app = app
        self.store = Store(url, app)

    def lead(self, email: str) -> str:
        _LEAD_IDS[email] = str(self.app.resolve(f"email:{email}"))
        return lead_id(email)

    def find(self, oid: str, topic_end: str, nth: int = 0) -> tuple[int, int | None]:
        """The ``nth`` event named ``topic_end``: (its row's version, its place in the row's
        envelope, or None for a row holding that event alone)."""
        found: list[tuple[int, int | None]] = []
        for version in self.store.versions(oid):
            topic, state = self.store.row(oid, version)
            if is_envelope(topic):
                prefix = topic.rsplit(".", 1)[0]
                found += [(version, i) for i, (name, _) in enumerate(json.loads(state)["events"])
                          if f"{prefix}.{name}".endswith(topic_end)]
            elif topic.endswith(topic_end):
                found.append((version, None))
        return found[nth]

    def version(self, oid: str, topic_end: str, nth: int = 0) -> int:
        return self.find(oid, topic_end, nth)[0]

    def data(self, oid: str, topic_end: str, nth: int = 0) -> dict[str, Any]:
        version, place = self.find(oid, topic_end, nth)
        data = json.loads(self.store.row(oid, version)[1])
        return data if place is None else data["events"][place][1]

    def edit(self, oid: str, topic_end: str, change: Callable[[dict[str, Any]], None],
             nth: int = 0) -> None:
        version, place = self.find(oid, topic_end, nth)
        topic, state = self.store.row(oid, version)
        data = json.loads(state)
        change(data if place is None else data["events"][place][1])
        raw = json.dumps(data).encode()  # Infinity, NaN, "\u0000", "\ud800" as Python writes
        for placeholder, literal in LITERALS.items():
            raw = raw.replace(placeholder.encode(), literal)
        self.store.set_state(oid, version, topic, raw)

    def account(self, lead: str) -> str:
        return str(UUID(self.data(lead, "Lead.AccountSet")["account_id"]["_data_"]))


def profile(data: dict[str, Any]) -> None:
    data["changes"].update(company="Ac\u0000me", industry="Soft\ud800ware",
                           employees=HUGE_INT, annual_revenue=float("inf"))
    data["fit"] = float("nan")
    data["fit_awards"][0][1] = float("inf")


def first_touch(data: dict[str, Any]) -> None:
    data["engagement_value"] = float("-inf")
    data["awards"][0]["points"] = HUGE_INT


def hostile_store(url: str) -> LeadflowApp:
    app = engine(url)
    assert not app.apply_batch(scenario(Records())).rejected
    h = Hostile(url, app)
    l1, l2, l3, l4, l5, l6 = (h.lead(e) for e in ("l1@ads.io", "l2@ads.io", "l3@org.io",
                                                    "l4@org.io", "l5@org.io", "l6@partner.io"))
    h.edit(l5, "Lead.ProfileUpdated", profile)
    h.edit(l1, "Lead.TouchpointScored", first_touch)
    # The engine stored deal amounts as text: "1e400" is infinity as a float. And as a bare
    # JSON number beyond a double, which orjson refuses.
    h.edit(l1, "Lead.StageChanged", lambda d: d["links"].update(
        deal_amount="1e400", deal_id="D\u00001"), nth=2)
    h.edit(l2, "Lead.StageChanged", lambda d: d["links"].update(deal_amount="@1e400"), nth=2)
    # Two spellings that the text column holds alike: one funnel row, also for a COPY.
    h.edit(l3, "Lead.Created", lambda d: d.update(source="organic\u0000"))
    h.edit(l4, "Lead.Created", lambda d: d.update(source=f"organic{FFFD}"))
    # As a store written before per-person encryption held them: in the clear (no "pii").
    h.edit(l6, "Lead.Created", lambda d: (d.pop("pii", None), d.update(
        primary_key="external_id:CRM\u0000-1", campaign="spring\u0000", landing_page="@bad-utf8")))
    account = h.account(l1)
    h.edit(account, "Account.Created", lambda d: d.update(name="Ads\u0000 Inc"))
    # The surge is recorded on the lead whose record set it off, in that record's row.
    surged = next(n.originator_id for n in app.recorder.select_notifications(1, 10_000)
                  if is_envelope(n.topic) and n.topic.startswith("leadflow.domain:Lead.")
                  and any(name == "AccountSurged" for name, _ in json.loads(n.state)["events"]))
    h.edit(str(surged), "Lead.AccountSurged", lambda d: d.update(window_days=float("nan")))
    # A version gap: one of l3's touchpoints deleted by hand.
    h.store.delete(l3, h.version(l3, "Lead.TouchpointScored", nth=1))
    return app


def normal(kind: str, value: Any) -> Any:
    """A value as both drivers' answers compare (times, dates, booleans differ in type)."""
    if value is None:
        return None
    if kind == "ts":
        return from_db(value).isoformat()  # type: ignore[union-attr]
    if kind == "day":
        return str(value)[:10]
    if kind == "bool":
        return bool(value)
    if kind == "real":
        return float(value)
    if kind in ("int", "big"):
        return int(value)
    return value


def dump(db: ProjectionDB) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table in TABLES:
        kinds = {c.name: c.kind for c in columns()[table]}
        rows = [tuple(normal(kinds[k], v) for k, v in r.items())
                for r in db.query(f"SELECT * FROM {table}")]
        out[table] = sorted(rows, key=repr)
    return out


# Lead ids by email, noted while the store was built (ids come from the creating record's
# event id; the engine itself need not be able to load an edited lead later).
_LEAD_IDS: dict[str, str] = {}


def lead_id(email: str) -> str:
    return _LEAD_IDS[email]


def lead_row(db: ProjectionDB, email: str) -> dict[str, Any]:
    # The lead's whole row: its personal columns are kept apart, in lead_personal.
    return db.query("SELECT s.*, p.primary_key, p.identities, p.title FROM lead_state s "
                    "JOIN lead_personal p ON p.lead_id = s.lead_id WHERE s.lead_id = %s",
                    [lead_id(email)])[0]


def check_sanitised(db: ProjectionDB) -> None:
    l5 = lead_row(db, "l5@org.io")
    assert (l5["company"], l5["industry"], l5["employees"], l5["fit"]) == (
        f"Ac{FFFD}me", f"Soft{FFFD}ware", None, None)
    assert l5["segment"] == "US/size?"
    assert json.loads(l5["fit_awards"]) == {"country-target": 5.0, "size-51-plus": 10.0,
                                            "title-executive": None}
    l1 = lead_row(db, "l1@ads.io")
    assert (l1["deal_amount"], l1["deal_id"], l1["stage"]) == (None, f"D{FFFD}1", "opportunity")
    assert lead_row(db, "l2@ads.io")["deal_amount"] is None
    l6 = lead_row(db, "l6@partner.io")
    assert (l6["primary_key"], l6["campaign"], l6["landing_page"]) == (
        f"external_id:CRM{FFFD}-1", f"spring{FFFD}", f"/p{FFFD}age")
    assert lead_row(db, "l3@org.io")["touchpoints"] == 3  # one of 4 was deleted
    points = db.query("SELECT kind, rule, points FROM score_ledger WHERE lead_id = %s "
                      "AND points IS NULL ORDER BY kind, rule",
                      [lead_id("l5@org.io")])
    assert [(r["kind"], r["rule"]) for r in points] == [("fit", "title-executive")]
    assert len(db.query("SELECT * FROM score_ledger WHERE points IS NULL")) == 2
    organic = db.query("SELECT entries FROM funnel_daily WHERE stage = 'new' AND source = %s",
                       [f"organic{FFFD}"])
    assert [r["entries"] for r in organic] == [2]
    names = {r["name"] for r in db.query("SELECT name FROM account_state")}
    assert f"Ads{FFFD} Inc" in names
    windows = db.query("SELECT surge_window_days FROM account_state WHERE surges > 0")
    assert windows and all(r["surge_window_days"] is None for r in windows)
    text = json.dumps(dump(db), default=str)
    assert "\\u0000" not in text and "Infinity" not in text and "NaN" not in text


def test_a_hostile_store_projects_and_rebuilds_identically_on_sqlite_and_postgres(
        pg_url: str, tmp_path: Path) -> None:
    dumps = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 'lf.db'}"), ("postgres", pg_url)):
        app = hostile_store(url)
        db = ProjectionDB(url)
        Projector(app, db, page_size=5).run(until_idle=True)  # many pages: rows read back
        check_sanitised(db)
        live = dump(db)
        Projector(app, db).rebuild()
        assert dump(db) == live, name
        Projector(app, db).rebuild(page_size=7)
        assert dump(db) == live, name
        Projector(app, db).rebuild(page_size=7, workers=2)
        assert dump(db) == live, name
        dumps[name] = live
        db.close()
    assert dumps["sqlite"] == dumps["postgres"]


def test_the_commands_project_and_rebuild_a_hostile_store(db_url: str) -> None:
    hostile_store(db_url)
    env = {**clean_env(),
           "LEADFLOW_DATABASE_URL": db_url, "LEADFLOW_PROJECTION_PAGE_SIZE": "4"}
    for command in (["project", "--until-idle"], ["rebuild"]):
        done = subprocess.run([*LEADFLOW, *command], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        db = ProjectionDB(db_url)
        check_sanitised(db)
        db.close()


def old_tables_ddl(dialect: Any) -> str:
    """The tables as leadflow made them before stored values could be NULL in them (and
    before named models: no lead_model_state)."""
    ddl = "\n;\n".join(part for part in tables_ddl(dialect).split("\n;\n")
                       if "lead_model_state" not in part)
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    for old, new in ((f"fit {real},", f"fit {real} NOT NULL,"),
                     (f"engagement_value {real},", f"engagement_value {real} NOT NULL,"),
                     ("touchpoints INTEGER,", "touchpoints INTEGER NOT NULL,"),
                     (f"points {real},", f"points {real} NOT NULL,")):
        assert ddl.count(old) == 1
        ddl = ddl.replace(old, new)
    return ddl


def test_tables_of_an_older_leadflow_take_the_stored_values_after_setup(db_url: str) -> None:
    app = hostile_store(db_url)
    db = ProjectionDB(db_url)
    with db.transaction():
        db.executescript(old_tables_ddl(db.dialect))
    Projector(app, db, page_size=5).run(until_idle=True)  # setup relaxes, then projects
    check_sanitised(db)
    if db.dialect == "postgres":
        rows = db.query("SELECT table_name, column_name, is_nullable FROM "
                        "information_schema.columns WHERE table_schema = current_schema()")
        nullable = {(r["table_name"], r["column_name"]): r["is_nullable"] == "YES"
                    for r in rows}
    else:
        nullable = {(t, r["name"]): not r["notnull"] for t in RELAXED
                    for r in db.query(f"PRAGMA table_info({t})")}
        indexes = {r["name"] for r in db.query("SELECT name FROM sqlite_master "
                                               "WHERE type = 'index'")}
        assert {"lead_state_stage", "lead_state_owner", "score_ledger_lead"} <= indexes
    assert all(nullable[(t, c)] for t, cols in RELAXED.items() for c in cols)
    assert db.query("SELECT COUNT(*) AS n FROM leads_by_status")[0]["n"] > 0  # views back
    live = dump(db)
    Projector(app, db).rebuild()
    assert dump(db) == live
    db.close()


# ----------------------------------------------------------------- what cannot be projected

def garbage(app: LeadflowApp, lead: UUID) -> tuple[str, bytes]:
    return "leadflow.domain:Lead.TouchpointScored", b"\x00\x9f not json at all"


def not_an_object(app: LeadflowApp, lead: UUID) -> tuple[str, bytes]:
    return "leadflow.domain:Lead.TouchpointScored", b"[1, 2, 3]"


def handler_fails(app: LeadflowApp, lead: UUID) -> tuple[str, bytes]:
    # Valid JSON, but its awards are no list of awards.
    return "leadflow.domain:Lead.TouchpointScored", json.dumps(
        {"awards": "none", "engagement_value": 1.0, "rules_version": "x"}).encode()


def required_value_missing(app: LeadflowApp, lead: UUID) -> tuple[str, bytes]:
    # A lead created without its creation time (NOT NULL in lead_state). (A primary key of
    # null is no longer hostile: a forgotten person's Created event reads that way.)
    created = {"timestamp": {"_type_": "datetime_iso", "_data_": T0.isoformat()},
               "originator_topic": "leadflow.domain:Lead", "primary_key": "email:x@y.io",
               "created_at": None,
               "source": "x", "campaign": None, "landing_page": None, "account_id": None}
    return "leadflow.domain:Lead.Created", json.dumps(created).encode()


@pytest.mark.parametrize("bad", [garbage, not_an_object, handler_fails, required_value_missing],
                         ids=["not-json", "not-an-object", "handler-fails", "required-null"])
def test_an_event_that_cannot_be_projected_stops_with_one_line_naming_it(
        db_url: str, bad: Callable[[LeadflowApp, UUID], tuple[str, bytes]]) -> None:
    app = engine(db_url)
    assert not app.apply_batch(scenario(Records())).rejected
    db = ProjectionDB(db_url)
    projector = Projector(app, db, page_size=1000)
    projector.run(until_idle=True)
    before, position = dump(db), projector.position()
    if bad is required_value_missing:
        lead, version = uuid4(), 1
    else:
        lead = app.resolve("email:l1@ads.io")
        version = Store(db_url, app).last_version(str(lead)) + 1
    topic, state = bad(app, lead)
    app.recorder.insert_events([StoredEvent(lead, version, topic, state)])
    # A good event after it: it must not be projected past the bad one either.
    app.apply_batch([Records()("email_opened", "l4@org.io", at=T0 + days(9),
                               event_id="after-the-bad-one")])
    bad_id = next(n.id for n in app.recorder.select_notifications(position + 1, 100)
                  if n.originator_id == lead)

    with pytest.raises(ProjectionFailedError) as failed:
        projector.process_page()
    error = failed.value
    assert (error.notification_id, error.originator_id, error.topic) == (bad_id, str(lead),
                                                                           topic)
    assert error.reason and error.__cause__ is not None
    line = str(error)
    assert "\n" not in line and str(bad_id) in line and str(lead) in line, line
    assert projector.position() == position
    assert dump(db) == before

    for workers in (1, 2):  # one process, and the leads split between two (PostgreSQL)
        with pytest.raises(ProjectionFailedError) as again:
            Projector(app, db).rebuild(workers=workers)
        assert (again.value.notification_id, again.value.originator_id, again.value.topic) \
            == (bad_id, str(lead), topic), workers
        assert str(again.value) == line, workers
        assert dump(db) == before  # the live tables stay
    assert projector.position() == position
    db.close()


def test_the_error_line_names_an_account_event_as_such() -> None:
    error = ProjectionFailedError(7, "abc", "leadflow.domain:Account.Surged", "bad\nthing")
    assert str(error) == "cannot project event 7 (Account.Surged of account abc): bad thing"
    assert isinstance(error, RuntimeError)


def test_a_time_before_year_one_in_utc_is_null_not_a_crash() -> None:
    from datetime import timedelta, timezone

    from leadflow.projections.db import to_ts

    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert to_ts(early) is None
