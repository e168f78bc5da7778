"""Auditor tools: history, as-of, explain agree with live state; rescore; unmerge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from leadflow.domain.rules import default_rules_text, parse_rules
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor
from tests.conftest import T0, Records, clean_env, days, make_app

PHONE = "+442079460958"
LEADFLOW = [sys.executable, "-m", "leadflow.cli"]


def now() -> datetime:
    time.sleep(0.02)  # record times must be strictly ordered around the marks we take
    return datetime.now(UTC)


def test_history_as_of_and_explain_agree_with_live_state(app: LeadflowApp,
                                                         rec: Records) -> None:
    app.apply_batch([rec("form_submitted", None, lead={"phone": PHONE})])
    app.apply_batch([rec("content_downloaded", "m@em.io", at=T0 + days(1)),
                     rec("content_downloaded", "m@em.io", at=T0 + days(1))])
    before_merge = now()
    app.apply_batch([rec("email_clicked", None, at=T0 + days(2),
                         lead={"email": "m@em.io", "phone": PHONE})])
    before_late = now()
    app.apply_batch([rec("email_opened", "m@em.io", at=T0 + days(0.5), event_id="late-1")])
    old_version = app.rules.version
    app.rules = parse_rules(default_rules_text().replace(
        'points = 2\ndescription = "each email opened',
        'points = 4\ndescription = "each email opened'))
    app.apply_batch([rec("email_opened", "m@em.io", at=T0 + days(3), event_id="new-rules-1")])
    survivor = app.resolve("email:m@em.io")
    assert survivor == app.resolve(f"phone:{PHONE}")
    auditor = Auditor(app)
    at = T0 + days(40)

    live = app.lead(survivor, at=at)
    explained = auditor.explain(survivor, at)
    as_of = auditor.as_of(survivor, at, datetime.now(UTC))
    # JSON answers are rounded to 4 decimals.
    assert explained["score"] == pytest.approx(live.score, abs=1e-4)
    assert as_of["score"] == pytest.approx(live.score, abs=1e-4)
    assert (as_of["stage"], as_of["owner"]) == (live.stage, live.owner)
    half_life = 30 * 86400
    for row in explained["engagement"]:
        age = (at - datetime.fromisoformat(row["occurred_at"])).total_seconds()
        assert row["value"] == pytest.approx(row["points"] * 2 ** (-age / half_life), abs=1e-4)
    versions = {row["event_id"]: row["rules_version"] for row in explained["engagement"]}
    assert versions["new-rules-1"] == app.rules.version != old_version
    assert versions["late-1"] == old_version

    history = auditor.history(survivor)
    assert {e.lead_id for e in history} == {survivor, *live.merged_from}
    # One entry per stored row: a record's row names the record as received.
    assert sum("TouchpointScored" in e.events for e in history) == 6
    last = history[-1]
    assert last.cause["kind"] == "record" and last.cause["event_id"] == "new-rules-1"
    assert last.type == last.cause["type"] and last.rules_version == app.rules.version
    assert all(e.chain == "ok" for e in history)
    assert last.points[0]["points"] == 4
    assert last.score_after == pytest.approx(app.lead(survivor, at=T0 + days(3)).score)

    # Late record: it changes the answer about day 1 only from the moment it arrived.
    day1 = T0 + days(1)
    without_late = auditor.as_of(survivor, day1, before_late)["score"]
    with_late = auditor.as_of(survivor, day1, datetime.now(UTC))["score"]
    assert with_late - without_late == pytest.approx(2 * 2 ** (-0.5 / 30), abs=1e-4)
    # Before the merge was recorded, the email was its own lead with its own score.
    email_lead = auditor.lead_known_by("email:m@em.io", before_merge)
    assert email_lead != survivor
    assert auditor.as_of(email_lead, day1, before_merge)["score"] == pytest.approx(20)


def test_unmerge_after_merge_restores_both_leads(app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("form_submitted", None, lead={"phone": PHONE, "title": "VP Sales"})])
    app.apply_batch([rec("content_downloaded", "u@you.io", at=T0 + days(1),
                         lead={"country": "DE"})])
    at = T0 + days(1.5)

    def snapshot(key: str) -> dict[str, Any]:
        view = app.lead(key, at=at).to_json()
        return {k: view[k] for k in ("lead_id", "identities", "stage", "owner", "fit", "score",
                                     "breakdown", "merged_from", "transitions", "profile")}

    phone_before, email_before = snapshot(f"phone:{PHONE}"), snapshot("email:u@you.io")
    app.apply_batch([rec("page_viewed", None, at=T0 + days(2),
                         lead={"email": "u@you.io", "phone": PHONE},
                         context={"url": "/about"})])
    assert app.resolve("email:u@you.io") == app.resolve(f"phone:{PHONE}")
    survivor, restored = app.unmerge("email:u@you.io", T0 + days(3), "auditor")
    assert str(restored) == email_before["lead_id"] and str(survivor) == phone_before["lead_id"]
    assert app.resolve("email:u@you.io") == restored
    assert snapshot("email:u@you.io") == email_before
    assert snapshot(f"phone:{PHONE}") == phone_before
    # The restored lead takes new records again, and both leads' histories verify.
    app.apply_batch([rec("email_opened", "u@you.io", at=T0 + days(4))])
    assert app.lead("email:u@you.io").touchpoints == 2
    assert app.verify(survivor).ok and app.verify(restored).ok


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(),
           "LEADFLOW_DATABASE_URL": url}
    return subprocess.run([*LEADFLOW, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_rescore_reports_nothing_for_the_current_rules_and_the_predicted_leads_for_new_ones(
        tmp_path: Path, rec: Records) -> None:
    url = f"sqlite:///{tmp_path / 'lf.db'}"
    app = make_app("sqlite", tmp_path, name="lf.db")
    step = timedelta(hours=1)
    # hot: 15 + 10 + 10 + 25 = 60 by hour 3; crosses 30 at hour 2 (35), 50 at hour 3 (60).
    hot = [rec("form_submitted", "hot@a.io", at=T0),
           rec("content_downloaded", "hot@a.io", at=T0 + step),
           rec("content_downloaded", "hot@a.io", at=T0 + 2 * step),
           rec("trial_started", "hot@a.io", at=T0 + 3 * step)]
    # warm: 15 + 15 + 5 = 35: never MQL at 50, MQL at 30 on its third record.
    warm = [rec("form_submitted", "warm@b.io", at=T0),
            rec("page_viewed", "warm@b.io", at=T0 + step, context={"url": "/pricing"}),
            rec("email_clicked", "warm@b.io", at=T0 + 2 * step)]
    cold = [rec("email_opened", "cold@c.io", at=T0)]  # 2: never MQL
    app.apply_batch(hot + warm + cold)
    app.apply_batch([rec("sales_accepted", "warm@b.io", at=T0 + days(1), actor="rep-a")])
    app.close()

    same = tmp_path / "same.toml"
    same.write_text(default_rules_text())
    unchanged = run(url, "rescore", "--rules", str(same), "--json")
    assert unchanged.returncode == 0, unchanged.stderr
    report = json.loads(unchanged.stdout)
    assert report["changes"]["same"] == 3 and not report["changed_leads"]

    lower = tmp_path / "lower.toml"
    lower.write_text(default_rules_text().replace("mql_threshold = 50", "mql_threshold = 30")
                     .replace("recycle_threshold = 20", "recycle_threshold = 10"))
    changed = run(url, "rescore", "--rules", str(lower), "--json")
    assert changed.returncode == 0, changed.stderr
    report = json.loads(changed.stdout)
    assert {r["lead"]: r["change"] for r in report["changed_leads"]} == {
        "email:hot@a.io": "earlier", "email:warm@b.io": "newly"}
    hot_row = next(r for r in report["changed_leads"] if r["lead"] == "email:hot@a.io")
    assert hot_row["mql_at_current"] == (T0 + 3 * step).isoformat()
    assert hot_row["mql_at_new"] == (T0 + 2 * step).isoformat()
    assert report["mql_count"] == {"current": 1, "new": 2}
    # warm became SQL: the lower threshold predicts it (recall 0 -> 1), hot was never SQL.
    assert report["quality"]["sql"]["current"] == {"precision": 0.0, "recall": 0.0}
    assert report["quality"]["sql"]["new"] == {"precision": 0.5, "recall": 1.0}

    applied = run(url, "rescore", "--rules", str(lower), "--apply", "--json")
    assert applied.returncode == 0 and json.loads(applied.stdout)["applied"]
    new_version = parse_rules(lower.read_text()).version
    source = tmp_path / "more.jsonl"
    source.write_text(json.dumps({"event_id": "after-apply", "type": "form_submitted",
                                  "occurred_at": (T0 + days(2)).isoformat(),
                                  "lead": {"email": "new@d.io"}}) + "\n")
    assert run(url, "ingest", str(source)).returncode == 0
    history = json.loads(run(url, "history", "new@d.io", "--json").stdout)
    scored = [e for e in history if "TouchpointScored" in e["events"]]
    assert scored[0]["rules_version"] == new_version  # scoring from now on uses it
    assert json.loads(run(url, "lead", "show", "hot@a.io", "--json").stdout)["stage"]


def test_cli_history_as_of_and_explain_print_json(tmp_path: Path, rec: Records) -> None:
    url = f"sqlite:///{tmp_path / 'lf.db'}"
    app = make_app("sqlite", tmp_path, name="lf.db")
    app.apply_batch([rec("page_viewed", "x@y.io", context={"url": "/pricing"})])
    app.close()
    as_of = json.loads(run(url, "as-of", "x@y.io", (T0 + days(30)).isoformat(), "--json").stdout)
    assert {"stage", "owner", "score"} <= set(as_of)
    assert as_of["score"] == pytest.approx(7.5, abs=1e-4)
    explained = json.loads(run(url, "explain", "x@y.io", "--at", T0.isoformat(),
                               "--json").stdout)
    assert explained["engagement"][0]["rule"] == "pricing-page"
    listed = json.loads(run(url, "history", "x@y.io", "--json").stdout)
    first = listed[0]
    assert first["events"][0] == "Created" and first["type"] == "page_viewed"
    assert first["cause"]["context"]["url"] == "/pricing" and first["chain"] == "ok"
    assert first["points"][0]["rule"] == "pricing-page" and first["points"][0]["rules_version"]
    assert first["stage"] == [None, "new"]
    unknown = run(url, "history", "nobody@y.io")
    assert unknown.returncode == 1 and "no lead known" in unknown.stderr
    not_merged = run(url, "unmerge", "x@y.io")
    assert not_merged.returncode == 1 and "not to a lead merged into it" in not_merged.stderr


def test_unmerge_recomputes_the_read_models_of_both_leads(tmp_path: Path, rec: Records) -> None:
    from leadflow.projections.db import ProjectionDB
    from leadflow.projections.projector import Projector

    url = f"sqlite:///{tmp_path / 'lf.db'}"
    app = make_app("sqlite", tmp_path, name="lf.db")
    db = ProjectionDB(url)
    columns = ("lead_id", "identities", "stage", "owner", "fit", "segment", "merged_into",
               "reached_mql_at", "account_id")

    def rows() -> list[tuple[Any, ...]]:
        Projector(app, db).run(until_idle=True)
        return sorted(tuple(r[c] for c in columns)
                      for r in db.query("SELECT s.*, p.identities FROM lead_state s "
                                        "JOIN lead_personal p ON p.lead_id = s.lead_id"))

    app.apply_batch([rec("form_submitted", None, lead={"phone": PHONE, "title": "CEO"})])
    app.apply_batch([rec("trial_started", "r@are.io", at=T0 + days(1), lead={"country": "US"}),
                     rec("content_downloaded", "r@are.io", at=T0 + days(1))])
    before = rows()
    app.apply_batch([rec("page_viewed", None, at=T0 + days(2), context={"url": "/about"},
                         lead={"email": "r@are.io", "phone": PHONE})])
    merged = rows()
    assert merged != before and any(r[6] for r in merged)
    app.unmerge("email:r@are.io", T0 + days(3), "auditor")
    assert rows() == before
    live = {t: db.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]
            for t in ("lead_state", "score_ledger", "stage_transitions")}
    Projector(app, db).rebuild()
    assert rows() == before
    assert {t: db.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in live} == live
    db.close()
