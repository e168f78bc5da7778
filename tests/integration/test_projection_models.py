"""Named scoring models in the analysts' read models, on SQLite and a real PostgreSQL: each
model's score per lead (``lead_model_state``), its points in ``score_ledger`` (with the
model's id), ``scores_now_by_model`` and ``models_by_source``; live processing and a rebuild
give the same rows, and a projection made before models gains their column in place."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from leadflow.config import Settings
from leadflow.domain.rules import Rules, default_rules_text, parse_rules
from leadflow.engine.app import LeadflowApp
from leadflow.engine.backfill import backfill, changed_models
from leadflow.projections.db import ProjectionDB, from_db
from leadflow.projections.projector import Projector
from leadflow.projections.schema import tables_ddl
from tests.conftest import T0, Records, clean_env, days
from tests.integration.test_auditor import LEADFLOW
from tests.integration.test_projection_hostile import dump
from tests.integration.test_projections import load_stream
from tests.unit.test_scoring_models import MODELS, models_rules
from tests.unit.test_scoring_models import stream as models_stream

EMAIL = "anna@acme.io"
PHONE = "+44 20 7946 0958"
# The hand-computed scores (2^(-t/H) decay; product-b H = 10 days, emea H = 30 days).
B_AT_DAY_1 = 12 * 2 ** (-1 / 10) + 12  # two product-B pages a day apart
B_DOWN = T0 + days(1) + timedelta(days=10 * math.log2(B_AT_DAY_1 / 15))  # 5 + e = 20
EMEA_PAGES_AT_DAY_3 = 4 * (2 ** (-3 / 30) + 2 ** (-2 / 30) + 2 ** (-1 / 30))


def engine(url: str, rules: Rules | None = None) -> LeadflowApp:
    """The engine on ``url``, scoring with ``rules`` (the unit tests' two models)."""
    return LeadflowApp(env=Settings(database_url=url, aggregate_cache_size=0)
                       .eventsourcing_env({}), rules=rules or models_rules())


@pytest.fixture
def models_store(db_url: str) -> Iterator[tuple[LeadflowApp, ProjectionDB]]:
    """An empty store scored with the two models, and its read models' database."""
    app, db = engine(db_url), ProjectionDB(db_url)
    yield app, db
    db.close()
    app.close()


def stream(rec: Records) -> list[Any]:
    """Anna (no source, the unit tests' stream): product-b scores her two product-B pages and
    her company's size, emea every page and her demo request. Ben (source ads): one product-B
    page."""
    return [*models_stream(rec), rec("page_viewed", "ben@beta.io", at=T0 + days(1),
                                     context={"source": "ads", "properties": {"product": "b"}})]


def model_rows(db: ProjectionDB, lead_id: Any) -> dict[str, dict[str, Any]]:
    rows = db.query("SELECT * FROM lead_model_state WHERE lead_id = %s", [str(lead_id)])
    for row in rows:
        for col in ("engagement_as_of", "crossed_at"):
            row[col] = from_db(row[col])
        row["above"] = bool(row["above"])
        row["fit_awards"] = json.loads(row["fit_awards"])
    return {r["model"]: r for r in rows}


def ledger(db: ProjectionDB, lead_id: Any) -> list[tuple[Any, ...]]:
    return [(r["model"], r["kind"], r["rule"], r["event_id"], float(r["points"]),
             from_db(r["occurred_at"]), from_db(r["expires_at"])) for r in db.query(
        "SELECT * FROM score_ledger WHERE lead_id = %s ORDER BY notification_id, seq",
        [str(lead_id)])]


def rebuild_agrees(app: LeadflowApp, db: ProjectionDB, page_size: int = 20_000) -> None:
    """A rebuild from the first event gives the rows live processing gave."""
    live = dump(db)
    for workers in (1, 2):  # and split among processes (PostgreSQL: projections/parallel.py)
        Projector(app, db).rebuild(page_size=page_size, workers=workers)
        assert dump(db) == live, workers


def test_two_models_project_their_own_hand_computed_scores_and_a_rebuild_agrees(
        models_store: tuple[LeadflowApp, ProjectionDB], rec: Records) -> None:
    app, db = models_store
    assert not app.apply_batch(stream(rec)).rejected
    anna = app.resolve("email:" + EMAIL)
    ben = app.resolve("email:ben@beta.io")
    Projector(app, db, page_size=2).run(until_idle=True)  # pages read the rows back

    rows = model_rows(db, anna)
    assert set(rows) == {"product-b", "emea"}
    b, emea = rows["product-b"], rows["emea"]
    # product-b: the two B pages (12 each, the second a day later), the size fit 5; its
    # threshold 20 crossed at the second page (5 + 12*2^(-1/10) + 12 = 28.2).
    assert (b["fit"], b["fit_awards"]) == (5.0, {"b-big": 5.0})
    assert b["engagement_value"] == pytest.approx(B_AT_DAY_1, abs=1e-9)
    assert b["engagement_as_of"] == T0 + days(1)
    assert (b["half_life_days"], b["threshold"], b["above"], b["crossed_at"]) == (
        10.0, 20.0, True, T0 + days(1))
    # emea: every page 4 (H = 30 days), decayed to the demo's time; the demo's 30 points
    # expire after 7 days and are not in the decaying value (as for the primary model).
    assert (emea["fit"], emea["fit_awards"]) == (0.0, {})
    assert emea["engagement_value"] == pytest.approx(EMEA_PAGES_AT_DAY_3, abs=1e-9)
    assert emea["engagement_as_of"] == T0 + days(3)
    assert (emea["half_life_days"], emea["threshold"], emea["above"], emea["crossed_at"]) == (
        30.0, 30.0, True, T0 + days(3))

    # Each model's points in the ledger under its id; the primary model's rows as before.
    named = [row for row in ledger(db, anna) if row[0] is not None]
    assert named == [
        ("product-b", "fit", "b-big", "evt-1", 5.0, T0, None),
        ("product-b", "engagement", "b-page", "evt-1", 12.0, T0, None),
        ("emea", "engagement", "any-page", "evt-1", 4.0, T0, None),
        ("product-b", "engagement", "b-page", "evt-2", 12.0, T0 + days(1), None),
        ("emea", "engagement", "any-page", "evt-2", 4.0, T0 + days(1), None),
        ("emea", "engagement", "any-page", "evt-3", 4.0, T0 + days(2), None),
        ("emea", "engagement", "demo", "evt-4", 30.0, T0 + days(3), T0 + days(10)),
    ]
    primary = {(r[2], r[4]) for r in ledger(db, anna) if r[0] is None}
    assert ("demo-request", 20.0) in primary and not {"b-page", "any-page"} & {
        rule for rule, _ in primary}
    assert model_rows(db, ben)["product-b"]["above"] is False  # 12 < 20

    # Side by side, by source: how many leads each model scored and has above its threshold.
    by_source = {(r["source"], r["model"]): (r["scored_leads"], r["above_threshold"])
                 for r in db.query("SELECT * FROM models_by_source")}
    assert by_source == {("(none)", "product-b"): (1, 1), ("(none)", "emea"): (1, 1),
                         ("ads", "product-b"): (1, 0), ("ads", "emea"): (1, 0)}
    rebuild_agrees(app, db)

    # The clock records the decays below the thresholds at their exact times.
    app.advance_clock(T0 + days(40))
    Projector(app, db, page_size=2).run(until_idle=True)
    rows = model_rows(db, anna)
    assert rows["product-b"]["above"] is False
    assert abs((rows["product-b"]["crossed_at"] - B_DOWN).total_seconds()) < 1e-3
    assert (rows["emea"]["above"], rows["emea"]["crossed_at"]) == (False, T0 + days(10))
    assert db.query("SELECT SUM(above_threshold) AS n FROM models_by_source")[0]["n"] == 0
    rebuild_agrees(app, db)


def test_scores_now_by_model_decays_each_model_with_its_own_half_life(
        models_store: tuple[LeadflowApp, ProjectionDB], rec: Records) -> None:
    app, db = models_store
    app.apply_batch(stream(rec))
    anna = str(app.resolve("email:" + EMAIL))
    Projector(app, db).run(until_idle=True)
    before = datetime.now(UTC)
    rows = db.query("SELECT * FROM scores_now_by_model WHERE lead_id = %s", [anna])
    after = datetime.now(UTC)
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {None, "product-b", "emea"}
    # The primary model's row is scores_now's (asked in one statement: one now()), which
    # the named models' points leave unchanged: blog post 2 + demo 20 (no expiring points).
    [own] = db.query("SELECT s.*, m.engagement_now AS m_engagement, m.score_now AS m_score "
                     "FROM scores_now s JOIN scores_now_by_model m ON m.lead_id = s.lead_id "
                     "AND m.model IS NULL WHERE s.lead_id = %s", [anna])
    assert (own["m_engagement"], own["m_score"]) == (own["engagement_now"], own["score_now"])
    primary = app._get_lead(app.resolve("email:" + EMAIL))
    low, high = (primary.eng_value * 2 ** (-(t - primary.eng_as_of).total_seconds() / 86400
                                           / 30) for t in (after, before))
    assert low - 1e-9 <= float(own["engagement_now"]) <= high + 1e-9
    assert (by_model[None]["threshold"], by_model[None]["above"]) == (None, None)

    def decayed(value: float, as_of: datetime, half_life_days: float) -> tuple[float, float]:
        # The database's now() lies between the two clock readings.
        return tuple(value * 2 ** (-(t - as_of).total_seconds() / 86400 / half_life_days)
                     for t in (after, before))  # type: ignore[return-value]

    for model, value, as_of, half_life, fit in (
            ("product-b", B_AT_DAY_1, T0 + days(1), 10.0, 5.0),
            ("emea", EMEA_PAGES_AT_DAY_3, T0 + days(3), 30.0, 0.0)):
        low, high = decayed(value, as_of, half_life)
        row = by_model[model]
        # The demo's 30 emea points expired long before now (event times are in 2026-03).
        assert low - 1e-9 <= float(row["engagement_now"]) <= high + 1e-9, model
        assert float(row["score_now"]) == pytest.approx(fit + float(row["engagement_now"]))
        assert (row["source"], float(row["threshold"]), bool(row["above"])) == (
            None, 20.0 if model == "product-b" else 30.0, True)


def test_merges_and_unmerges_move_each_models_points_as_the_leads_record_them(
        models_store: tuple[LeadflowApp, ProjectionDB], rec: Records) -> None:
    app, db = models_store
    app.apply_batch([
        rec("page_viewed", EMAIL, at=T0, context={"properties": {"product": "b"}}),
        rec("page_viewed", None, at=T0 + days(1), lead={"phone": PHONE},
            context={"properties": {"product": "b"}}),
        # One record naming both, itself scored by emea only: the older lead absorbs the
        # newer one.
        rec("page_viewed", EMAIL, at=T0 + days(2), lead={"phone": PHONE},
            context={"properties": {"product": "a"}}),
    ])
    survivor, merged = app.resolve("email:" + EMAIL), app.resolve("phone:+442079460958")
    projector = Projector(app, db, page_size=1)
    projector.run(until_idle=True)
    assert merged == survivor
    # The survivor records the points the merge brought, as its state holds them; the merged
    # lead keeps its own rows, which score_ledger_resolved leaves out (they would count
    # twice). The merging record's own emea points are the survivor's.
    resolved = db.query("SELECT recorded_on, model, event_id, points FROM "
                        "score_ledger_resolved WHERE lead_id = %s AND model IS NOT NULL "
                        "ORDER BY model, occurred_at", [str(survivor)])
    assert [(r["model"], r["event_id"], r["recorded_on"] == str(survivor), float(r["points"]))
            for r in resolved] == [
        ("emea", "evt-1", True, 4.0), ("emea", "evt-2", True, 4.0),
        ("emea", "evt-3", True, 4.0),
        ("product-b", "evt-1", True, 12.0), ("product-b", "evt-2", True, 12.0)]
    [other] = [r["lead_id"] for r in db.query(
        "SELECT lead_id FROM lead_state WHERE merged_into = %s", [str(survivor)])]
    assert {(r[0], r[3], r[4]) for r in ledger(db, other)} == {
        ("product-b", "evt-2", 12.0), ("emea", "evt-2", 4.0)}
    expected = app._get_lead(survivor).model_states["product-b"]
    row = model_rows(db, survivor)["product-b"]
    assert row["engagement_value"] == pytest.approx(expected["value"], abs=1e-9)
    # Both pages as of the later one (day 1): 23.2, worth 21.6 >= 20 at the merge (day 2).
    assert row["engagement_value"] == pytest.approx(B_AT_DAY_1, abs=1e-9)
    assert row["engagement_as_of"] == T0 + days(1)
    assert (row["above"], row["crossed_at"]) == (True, T0 + days(2))
    rebuild_agrees(app, db)

    app.unmerge("phone:+442079460958", T0 + days(3), "ops")
    projector.run(until_idle=True)
    for lead_id in (survivor, UUID(other)):
        state = app._get_lead(lead_id).model_states["product-b"]
        row = model_rows(db, lead_id)["product-b"]
        assert (row["engagement_value"], row["engagement_as_of"], row["above"]) == (
            pytest.approx(state["value"], abs=1e-9), state["as_of"], state["above"])
    # Without the merged page the survivor is below 20 again: a crossing down at the unmerge.
    assert (row["above"], model_rows(db, survivor)["product-b"]["above"]) == (False, False)
    assert model_rows(db, survivor)["product-b"]["crossed_at"] == T0 + days(3)
    # Each lead's rows are its own records' points again: the merge's copies are gone.
    for lead_id, event_ids in ((survivor, {"evt-1", "evt-3"}), (other, {"evt-2"})):
        assert {r[3] for r in ledger(db, lead_id) if r[0] is not None} == event_ids
    rebuild_agrees(app, db)


def test_a_backfill_replaces_a_models_state_and_its_ledger_rows_in_both_ways(
        models_store: tuple[LeadflowApp, ProjectionDB], rec: Records) -> None:
    app, db = models_store
    app.apply_batch(stream(rec))
    anna = app.resolve("email:" + EMAIL)
    projector = Projector(app, db, page_size=2)
    projector.run(until_idle=True)
    # A publication halves product-b's page points: the backfill re-scores the history.
    text = default_rules_text() + MODELS.replace("points = 12", "points = 6")
    new = parse_rules(text, source="halved.toml")
    assert changed_models(app.rules, new) == ("product-b",)
    app.publish_rules(new, text, T0 + days(4), "analyst")
    assert backfill(app, ["product-b"], "analyst").leads == 2
    projector.run(until_idle=True)

    b = model_rows(db, anna)["product-b"]
    state = app._get_lead(anna).model_states["product-b"]
    assert (b["fit"], b["engagement_value"], b["engagement_as_of"], b["above"]) == (
        5.0, pytest.approx(state["value"], abs=1e-9), state["as_of"], state["above"])
    assert b["above"] is False  # 5 + 6*2^(-1/10) + 6 = 16.6 < 20: never crossed
    # Its ledger rows are the backfill's, under the new rules version; emea's are untouched.
    rows = [r for r in ledger(db, anna) if r[0] == "product-b"]
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("engagement", "b-page", "evt-1", 6.0), ("engagement", "b-page", "evt-2", 6.0),
        ("fit", "b-big", f"backfill:{new.version}", 5.0)]
    assert {r["rules_version"] for r in db.query(
        "SELECT rules_version FROM score_ledger WHERE model = 'product-b'")} == {new.version}
    assert len([r for r in ledger(db, anna) if r[0] == "emea"]) == 4
    rebuild_agrees(app, db)
    rebuild_agrees(app, db, page_size=2)  # superseded rows in pages already written


def resolved_score(db: ProjectionDB, lead_id: Any, model: str, at: datetime) -> float:
    """The lead's score in ``model`` at ``at`` from its rows in ``score_ledger_resolved``:
    its fit rows, each engagement row decayed from its time (H: the model's half-life), the
    expiring ones in full until they expire."""
    half_life = float(model_rows(db, lead_id)[model]["half_life_days"])
    score = 0.0
    for row in db.query("SELECT kind, points, occurred_at, expires_at FROM "
                        "score_ledger_resolved WHERE lead_id = %s AND model = %s",
                        [str(lead_id), model]):
        points, occurred_at = float(row["points"]), from_db(row["occurred_at"])
        expires_at = from_db(row["expires_at"])
        if row["kind"] == "fit":
            score += points
        elif expires_at is not None:
            score += points if expires_at > at else 0.0
        else:
            score += points * 2 ** (-(at - occurred_at).total_seconds() / 86400 / half_life)
    return score


def shown_models(url: str, identity: str, at: datetime) -> dict[str, float]:
    """Each named model's score of a lead at ``at``, as ``leadflow lead show --json`` says."""
    shown = subprocess.run([*LEADFLOW, "lead", "show", identity, "--at", at.isoformat(),
                            "--json"], env={**clean_env(), "LEADFLOW_DATABASE_URL": url},
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    return {model: m["score"] for model, m in json.loads(shown.stdout)["models"].items()}


def merged_the_phone_lead(app: LeadflowApp, rec: Records) -> UUID:
    """Anna's product-B page (evt-1); a lead by phone with 150 employees, a product-B page
    (evt-2) and a demo request (evt-3), merged into Anna's by a record naming both (evt-4,
    scored by no model). Returns the survivor."""
    app.publish_rules(app.rules, default_rules_text() + MODELS, T0, "analyst")  # the CLI's
    app.apply_batch([
        rec("page_viewed", EMAIL, at=T0, context={"properties": {"product": "b"}}),
        rec("page_viewed", None, at=T0 + days(1), lead={"phone": PHONE, "employees": 150},
            context={"properties": {"product": "b"}}),
        rec("demo_requested", None, at=T0 + days(1.5), lead={"phone": PHONE}),
        rec("email_opened", EMAIL, at=T0 + days(2), lead={"phone": PHONE}),
    ])
    survivor = app.resolve("email:" + EMAIL)
    assert app.resolve("phone:+442079460958") == survivor
    return survivor


def halve_product_b(app: LeadflowApp) -> None:
    """A publication halves product-b's page points; both leads are backfilled (the
    survivor with the merged lead's records, the merged lead with its own)."""
    text = default_rules_text() + MODELS.replace("points = 12", "points = 6")
    app.publish_rules(parse_rules(text, source="halved.toml"), text, T0 + days(3), "analyst")
    assert backfill(app, ["product-b"], "analyst").leads == 2


def test_a_backfilled_survivor_counts_each_record_once_before_and_after_an_unmerge(
        models_store: tuple[LeadflowApp, ProjectionDB], db_url: str, rec: Records) -> None:
    app, db = models_store
    at = T0 + days(3)
    survivor = merged_the_phone_lead(app, rec)
    projector = Projector(app, db, page_size=2)
    projector.run(until_idle=True)

    def agree(lead_id: Any, identity: str, expected: dict[str, float]) -> None:
        """The resolved ledger rows give the engine's score per model, the hand-computed."""
        shown = shown_models(db_url, identity, at)
        assert shown == pytest.approx(expected, abs=1e-4)
        assert {model: resolved_score(db, lead_id, model, at) for model in shown} == (
            pytest.approx(shown, abs=1e-4))

    # The merge brings the phone lead's points (its demo's 30 until day 8.5) and its size
    # (product-b's fit 5).
    emea_both = 4 * 2 ** (-3 / 30) + 4 * 2 ** (-2 / 30) + 30
    agree(survivor, "email:" + EMAIL, {
        "product-b": 5 + 12 * 2 ** (-3 / 10) + 12 * 2 ** (-2 / 10), "emea": emea_both})
    rebuild_agrees(app, db)

    halve_product_b(app)
    projector.run(until_idle=True)
    agree(survivor, "email:" + EMAIL, {
        "product-b": 5 + 6 * 2 ** (-3 / 10) + 6 * 2 ** (-2 / 10), "emea": emea_both})
    rebuild_agrees(app, db)
    rebuild_agrees(app, db, page_size=2)

    app.unmerge("phone:+442079460958", at, "ops")
    projector.run(until_idle=True)
    other = app.resolve("phone:+442079460958")
    assert other != survivor
    # Each lead's own records again: the survivor without the size, the page and the demo.
    agree(survivor, "email:" + EMAIL, {"product-b": 6 * 2 ** (-3 / 10),
                                       "emea": 4 * 2 ** (-3 / 30)})
    agree(other, "phone:+442079460958", {"product-b": 5 + 6 * 2 ** (-2 / 10),
                                         "emea": 4 * 2 ** (-2 / 30) + 30})
    assert {(r[0], r[3]) for r in ledger(db, survivor) if r[0] and r[1] != "fit"} == {
        ("product-b", "evt-1"), ("emea", "evt-1")}
    rebuild_agrees(app, db)
    rebuild_agrees(app, db, page_size=2)  # released rows in pages already written


def test_an_unmerge_keeps_the_rows_of_a_removed_models_points_as_the_engine_keeps_them(
        models_store: tuple[LeadflowApp, ProjectionDB], rec: Records) -> None:
    app, db = models_store
    survivor = merged_the_phone_lead(app, rec)
    halve_product_b(app)
    # product-b leaves the rules: the unmerge recomputes the models in them only, so the
    # survivor keeps product-b's backfilled points of both leads' pages (emea drops the
    # merged lead's page and demo).
    text = default_rules_text() + MODELS[MODELS.index("[models.emea]"):]
    app.publish_rules(parse_rules(text, source="emea.toml"), text, T0 + days(3), "analyst")
    app.unmerge("phone:+442079460958", T0 + days(3), "ops")
    Projector(app, db, page_size=2).run(until_idle=True)
    states = app._get_lead(survivor).model_states
    for model in ("product-b", "emea"):
        assert sorted((r[3], r[4]) for r in ledger(db, survivor)
                      if r[0] == model and r[1] == "engagement") == sorted(
            (a["event_id"], a["points"]) for a in states[model]["awards"]), model
    assert {r[3] for r in ledger(db, survivor) if r[0] == "product-b"} >= {"evt-1", "evt-2"}
    rebuild_agrees(app, db)
    rebuild_agrees(app, db, page_size=2)


def test_with_another_primary_model_its_points_are_the_primary_rows_and_scoring_a_model(
        db_url: str, rec: Records) -> None:
    extra = MODELS.replace("threshold = 20\n", "threshold = 20\nrecycle_threshold = 5\n")
    text = default_rules_text().replace(
        "[lifecycle]\n", '[lifecycle]\nprimary_model = "product-b"\n', 1) + extra
    app = engine(db_url, parse_rules(text, source="primary.toml"))
    app.apply_batch(stream(rec))
    anna = app.resolve("email:" + EMAIL)
    db = ProjectionDB(db_url)
    Projector(app, db, page_size=2).run(until_idle=True)
    # product-b drives the lifecycle: its points are the lead's own (model NULL), its
    # half-life the lead's; [scoring] scores beside it as the model "scoring".
    lead = db.query("SELECT * FROM lead_state WHERE lead_id = %s", [str(anna)])[0]
    assert (float(lead["fit"]), float(lead["half_life_days"]), lead["stage"]) == (
        5.0, 10.0, "mql")
    # The primary's engagement is decayed to each touch (the demo request, day 3).
    assert float(lead["engagement_value"]) == pytest.approx(B_AT_DAY_1 * 2 ** (-2 / 10),
                                                            abs=1e-9)
    assert set(model_rows(db, anna)) == {"scoring", "emea"}
    primary = {(r[2], r[4]) for r in ledger(db, anna) if r[0] is None}
    assert primary == {("b-big", 5.0), ("b-page", 12.0)}
    scoring = model_rows(db, anna)["scoring"]
    assert (scoring["half_life_days"], scoring["threshold"]) == (30.0, 50.0)
    rebuild_agrees(app, db)
    db.close()
    app.close()


GENERATED_MODELS = """
[models.web]
threshold = 15
half_life_days = 7
[[models.web.engagement]]
id = "page"
type = "page_viewed"
points = 3
[[models.web.engagement]]
id = "download"
type = "content_downloaded"
points = 8
expires_after_days = 10
[[models.web.fit]]
id = "big"
field = "employees"
min = 50
points = 4

[models.email]
threshold = 12
[[models.email.engagement]]
id = "open"
type = "email_opened"
points = 2
[[models.email.engagement]]
id = "click"
type = "email_clicked"
points = 5
"""


def test_a_generated_stream_projects_each_leads_model_state_as_the_lead_holds_it(
        db_url: str) -> None:
    rules = parse_rules(default_rules_text() + GENERATED_MODELS, source="models.toml")
    app = engine(db_url, rules)
    load_stream(app, leads=300, seed=31)
    db = ProjectionDB(db_url)
    Projector(app, db, page_size=97).run(until_idle=True)
    rows = {(r["lead_id"], r["model"]): r for r in db.query("SELECT * FROM lead_model_state")}
    expected = {}
    for lead_id in app.lead_ids():
        for model, state in app._get_lead(lead_id).model_states.items():
            expected[(str(lead_id), model)] = (
                pytest.approx(state["fit"]), pytest.approx(state["value"], abs=1e-9),
                state["as_of"], bool(state["above"]), state["crossed_at"])
    assert len(expected) > 300 and {m for _, m in expected} == {"web", "email"}
    assert {key: (r["fit"], r["engagement_value"], from_db(r["engagement_as_of"]),
                  bool(r["above"]), from_db(r["crossed_at"])) for key, r in rows.items()
            } == expected
    assert sum(bool(r["above"]) for r in rows.values()) > 0
    rebuild_agrees(app, db)
    db.close()
    app.close()


def test_a_projection_made_before_models_gains_the_ledgers_model_column_in_place(
        models_store: tuple[LeadflowApp, ProjectionDB], rec: Records) -> None:
    app, db = models_store
    app.apply_batch(stream(rec)[:2])
    # The read models as an earlier leadflow made them: score_ledger without its model
    # column, no lead_model_state; projected up to the first record.
    old = tables_ddl(db.dialect).replace("    model TEXT,\n    PRIMARY KEY (notification_id",
                                         "    PRIMARY KEY (notification_id")
    old = "\n;\n".join(part for part in old.split("\n;\n") if "lead_model_state" not in part)
    assert "model" not in old
    with db.transaction():
        db.executescript(old)
        db.execute("INSERT INTO score_ledger VALUES (1, 0, 'old-lead', 'evt-0', 'engagement', "
                   "'page', 'r-old', 2.5, %s, NULL)", [T0])
        # A view of the old table, made before this version's views (whose checksum differs).
        db.execute("CREATE VIEW score_ledger_resolved AS SELECT e.lead_id, e.points "
                   "FROM score_ledger e")
        db.execute("INSERT INTO projection_tracking VALUES ('views-checksum', 1)")
    Projector(app, db, page_size=3).run(until_idle=True)
    kept = db.query("SELECT model, points FROM score_ledger WHERE lead_id = 'old-lead'")
    assert [(r["model"], float(r["points"])) for r in kept] == [(None, 2.5)]
    anna = app.resolve("email:" + EMAIL)
    assert set(model_rows(db, anna)) == {"product-b", "emea"}
    assert db.query("SELECT COUNT(*) AS n FROM scores_now_by_model "
                    "WHERE model IS NOT NULL")[0]["n"] == 2
    # The old view was replaced by this version's views.
    assert len(db.query("SELECT * FROM scores_now")) == 1
    assert "recorded_on" in db.query("SELECT * FROM score_ledger_resolved")[0]
    db.execute("DELETE FROM score_ledger WHERE lead_id = 'old-lead'")
    rebuild_agrees(app, db)
