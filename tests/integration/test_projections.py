"""Analyst read models on SQLite and PostgreSQL: a hand-checked scenario, rebuild, crashes,
and the analyst role's limits."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leadflow.config import Settings
from leadflow.contract import RecordRejected, parse_record
from leadflow.engine.app import LeadflowApp
from leadflow.generator import generate
from leadflow.projections import queries
from leadflow.projections.db import ProjectionDB
from leadflow.projections.events import TOPICS
from leadflow.projections.projector import Projector
from leadflow.projections.schema import TABLES
from tests.conftest import T0, Records, clean_env, days
from tests.integration.kafka_helpers import wait_until

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]
A_RECORDS = ([("content_downloaded", {})] * 3 + [("email_opened", {}), ("email_clicked", {})] * 3
             + [("trial_started", {})])


def engine(url: str) -> LeadflowApp:
    return LeadflowApp(env=Settings(database_url=url, aggregate_cache_size=0)
                       .eventsourcing_env({}))


def scenario(rec: Records) -> list[Any]:
    def hot(email: str, source: str, campaign: str | None, at: datetime) -> list[Any]:
        context = {"source": source, **({"campaign": campaign} if campaign else {})}
        return [rec(kind, email, at=at, context={**context, **ctx}) for kind, ctx in A_RECORDS]

    return [
        *hot("l1@ads.io", "ads", "c1", T0),
        *hot("l2@ads.io", "ads", "c1", T0 + days(1)),
        *hot("l3@org.io", "organic", None, T0),
        rec("email_opened", "l4@org.io", at=T0, context={"source": "organic"}),
        rec("demo_requested", "l5@org.io", at=T0 + days(1), context={"source": "organic"},
            lead={"title": "VP Sales", "employees": 200, "country": "US"}),
        rec("form_submitted", "l6@partner.io", at=T0 + days(40), context={"source": "partner"}),
        rec("sales_accepted", "l1@ads.io", at=T0 + days(2), actor="rep-a"),
        rec("converted", "l1@ads.io", at=T0 + days(5), actor="rep-a",
            deal={"id": "D1", "amount": "1000", "currency": "USD"}),
        rec("deal_won", "l1@ads.io", at=T0 + days(15), actor="rep-a"),
        rec("sales_accepted", "l2@ads.io", at=T0 + days(3), actor="rep-b"),
        rec("converted", "l2@ads.io", at=T0 + days(10), actor="rep-b",
            deal={"id": "D2", "amount": "500", "currency": "USD"}),
        rec("deal_lost", "l2@ads.io", at=T0 + days(20), actor="rep-b", reason="price"),
        rec("sales_accepted", "l3@org.io", at=T0 + days(4), actor="rep-a"),
    ]


def counts(f: queries.Funnel) -> list[tuple[str, int, float | None]]:
    return [(s.stage, s.count, s.conversion_from_previous) for s in f.stages]


def test_a_hand_checked_scenario_gives_known_funnel_conversion_and_velocity(
        db_url: str, rec: Records) -> None:
    app = engine(db_url)
    result = app.apply_batch(scenario(rec))
    assert not result.rejected
    db = ProjectionDB(db_url)
    Projector(app, db, page_size=7).run(until_idle=True)

    assert counts(queries.funnel(db)) == [
        ("new", 6, None), ("mql", 4, 0.6667), ("sql", 4, 1.0), ("opportunity", 2, 0.5),
        ("customer", 1, 0.5)]
    march = queries.funnel(db, T0.date().replace(day=3), T0.date().replace(day=31))
    assert [(s.stage, s.count) for s in march.stages] == [
        ("new", 2), ("mql", 2), ("sql", 4), ("opportunity", 2), ("customer", 1)]
    by_source = {g: [s.count for s in stages]
                 for g, stages in queries.funnel(db, by="source").groups}
    assert by_source == {"ads": [2, 2, 2, 2, 1], "organic": [3, 2, 2, 0, 0],
                         "partner": [1, 0, 0, 0, 0]}

    velocity = {r["step"]: (r["leads"], round(float(r["median_days"]), 6),
                            round(float(r["p90_days"]), 6)) for r in queries.velocity(db)}
    assert velocity == {"new->mql": (4, 0.0, 0.0), "mql->sql": (4, 2.0, 4.0),
                        "sql->opportunity": (2, 5.0, 7.0), "opportunity->customer": (1, 10.0, 10.0),
                        "new->customer": (1, 15.0, 15.0)}
    cohorts = {r["cohort_month"]: (r["leads"], r["mql"], r["customer"])
               for r in queries.cohorts(db)}
    assert cohorts == {"2026-03": (5, 4, 1), "2026-04": (1, 0, 0)}
    by_source = {(r["cohort_month"], r["value"]): (r["leads"], r["mql"], r["mql_to_sql_pct"])
                 for r in db.query("SELECT * FROM funnel_by_cohort_dimension "
                                   "WHERE dimension = 'source'")}
    assert by_source == {("2026-03", "ads"): (2, 2, 100.0), ("2026-03", "organic"): (3, 2, 100.0),
                         ("2026-04", "partner"): (1, 0, None)}
    load = {(r["owner"], r["stage"]): r["open_leads"]
            for r in db.query("SELECT * FROM owner_load WHERE open_leads > 0")}
    assert load == {("rep-a", "sql"): 1, ("rep-c", "sql"): 1}
    owners = {r["owner"]: (r["customers"], r["closed"]) for r in queries.by_owner(db)}
    assert owners["rep-a"] == (1, 1) and owners["rep-b"] == (0, 1)
    ledger = db.query("SELECT rule, SUM(points) AS points FROM score_ledger_resolved "
                      "WHERE lead_id = %s GROUP BY rule ORDER BY rule",
                      [str(app.resolve("email:l1@ads.io"))])
    assert {r["rule"]: float(r["points"]) for r in ledger} == {
        "content-download": 30.0, "email-click": 15.0, "email-open": 6.0, "trial-start": 25.0}
    transitions = db.query("SELECT to_stage FROM stage_transitions WHERE lead_id = %s "
                           "ORDER BY occurred_at, notification_id",
                           [str(app.resolve("email:l2@ads.io"))])
    assert [r["to_stage"] for r in transitions] == ["new", "mql", "sql", "opportunity", "lost"]
    db.close()


def dump(db: ProjectionDB) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table in TABLES:
        rows = db.query(f"SELECT * FROM {table}")
        out[table] = sorted(tuple(str(v) for v in r.values()) for r in rows)
    return out


def load_stream(app: LeadflowApp, leads: int, seed: int) -> None:
    records = []
    for line in generate(leads=leads, days=60, seed=seed):
        try:
            records.append(parse_record(line, now=datetime.now(UTC)))
        except RecordRejected:
            continue
    for i in range(0, len(records), 1000):
        app.apply_batch(records[i:i + 1000])
    app.advance_clock(max(r.occurred_at for r in records))


def test_rebuild_gives_exactly_the_rows_of_live_processing(db_url: str) -> None:
    app = engine(db_url)
    load_stream(app, leads=400, seed=21)
    db = ProjectionDB(db_url)
    Projector(app, db, page_size=333).run(until_idle=True)
    live = dump(db)
    assert len(live["lead_state"]) > 300 and live["score_ledger"]
    Projector(app, db).rebuild()
    assert dump(db) == live
    # The leads split among processes (one on SQLite): the same rows (test_rebuild_parallel).
    Projector(app, db).rebuild(workers=3)
    assert dump(db) == live
    db.close()


def test_page_rows_are_the_stored_notifications_as_plain_tuples(db_url: str) -> None:
    """The projector's page read (``select_rows``) gives the library's notifications: same
    rows in the same order, ids as text, the start, limit and topics honoured."""
    app = engine(db_url)
    load_stream(app, leads=40, seed=5)
    top = int(app.recorder.max_notification_id() or 0)
    some = sorted(TOPICS)[::2]
    for start, limit, topics in [(1, top, TOPICS), (top // 3, 25, TOPICS), (7, top, some)]:
        expected = [(n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
                    for n in app.recorder.select_notifications(start, limit, topics=topics)]
        got = app.indexes.select_rows(start, limit, topics)
        assert [tuple(r) for r in got] == expected and expected
    assert {r[3] for r in app.indexes.select_rows(1, top, some)} <= set(some)
    assert app.indexes.select_rows(top + 1, 10, TOPICS) == []


def test_a_projector_killed_mid_batch_resumes_without_double_counting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lf.db'}"
    app = engine(url)
    load_stream(app, leads=1500, seed=22)
    env = {**clean_env(),
           "LEADFLOW_DATABASE_URL": url, "LEADFLOW_PROJECTION_PAGE_SIZE": "50",
           "LEADFLOW_LOG_FORMAT": "json"}
    chaos = random.Random(7)
    db = ProjectionDB(url)
    top = int(app.recorder.max_notification_id() or 0)
    Projector(app, db).setup()  # so progress can be read before the first page lands
    log = tmp_path / "project.log"
    positions = [0]
    for _ in range(4):
        process = subprocess.Popen([*LEADFLOW, "project"], env=env, stdout=log.open("ab"),
                                   stderr=subprocess.STDOUT)
        # Kill after a random share of the events still to project (not of time, which
        # depends on the machine), then a random moment later, so the kill lands mid-page.
        # A share of what is left, not of the whole store: the projector keeps going until
        # it is killed, and a target past the last event (a fast machine had run ahead by
        # thousands of events before an earlier kill) would never be reached. The moment is
        # short for the same reason: the last kill must still land before the end.
        left = top - positions[-1]
        target = positions[-1] + chaos.randint(max(1, left // 10), max(1, left // 6))
        wait_until(lambda target=target: Projector(app, db).position() >= target, 120,
                   f"the projector to reach event {target} of {top}", interval=0.02,
                   watch=[(process, log)])
        time.sleep(chaos.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        positions.append(Projector(app, db).position())
    assert positions == sorted(positions) and positions[1] > 0
    assert positions[-1] < top, "kill sooner: the projector finished before the last kill"
    done = subprocess.run([*LEADFLOW, "project", "--until-idle"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    after_crashes = dump(db)
    Projector(app, db).rebuild()
    assert dump(db) == after_crashes
    db.close()


def test_the_funnel_command_prints_json_and_csv(tmp_path: Path, rec: Records) -> None:
    url = f"sqlite:///{tmp_path / 'lf.db'}"
    engine(url).apply_batch(scenario(rec))
    env = {**clean_env(),
           "LEADFLOW_DATABASE_URL": url}

    def run(*args: str) -> str:
        done = subprocess.run([*LEADFLOW, "funnel", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = json.loads(run("--json"))
    assert data["stages"][1] == {"stage": "mql", "count": 4, "conversion_from_previous": 0.6667}
    grouped = json.loads(run("--json", "--by", "source", "--from", "2026-03-01",
                             "--to", "2026-03-31"))
    assert grouped["by"] == "source"
    assert [g["group"] for g in grouped["groups"]] == ["ads", "organic", "partner"]
    assert [s["count"] for s in grouped["groups"][2]["stages"]] == [0, 0, 0, 0, 0]
    csv_lines = run("--csv", "--by", "owner").splitlines()
    assert csv_lines[0] == "group,stage,count,conversion_from_previous"
    assert "all,customer,1,0.5" in csv_lines
    table = run("--by", "segment")
    assert "US/51-250" in table
