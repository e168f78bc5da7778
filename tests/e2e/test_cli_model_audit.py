"""Named scoring models for auditors, through the real CLI on the embedded store:
``explain --model``, ``rescore --model``, the backfill ``rescore --apply`` records for a
model it adds, and ``[lifecycle] primary_model``. Every number is computed by hand here."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from leadflow.config import Settings
from leadflow.domain import Lead
from leadflow.domain.rules import default_rules_text, load_rules
from leadflow.engine.app import LeadflowApp
from tests.e2e.test_cli import run
from tests.e2e.test_cli_models import MODELS, record

DAY1, DAY2, DAY3 = ("2026-03-02T09:00:00Z", "2026-03-03T09:00:00Z", "2026-03-04T09:00:00Z")
# product-b: +12 per product-B page (H = 10 days), fit 5 for 150 employees, threshold 20.
B_AT_DAY2 = 5 + 12 * 2 ** (-1 / 10) + 12
B_AT_DAY3 = 5 + 12 * 2 ** (-2 / 10) + 12 * 2 ** (-1 / 10)
# emea: +4 per page (H = 30 days), threshold 30.
EMEA_AT_DAY3 = 4 * (2 ** (-2 / 30) + 2 ** (-1 / 30) + 1)


def ingest(tmp_path: Path, env: dict[str, str] | None = None) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([record("m1", DAY1, "b", employees=150),
                                 record("m2", DAY2, "b"), record("m3", DAY3, "a")]) + "\n")
    done = run(["ingest", str(source)], tmp_path, env=env)
    assert done.returncode == 0, done.stderr


def json_of(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    done = run(args, tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def candidate(tmp_path: Path, extra: str = MODELS) -> Path:
    rules = tmp_path / "candidate.toml"
    rules.write_text(default_rules_text() + extra)
    return rules


def test_explain_model_names_each_point_of_each_model(tmp_path: Path) -> None:
    rules = candidate(tmp_path)
    env = {"LEADFLOW_RULES": str(rules)}
    ingest(tmp_path, env)
    version = load_rules(rules).version
    b = json_of(["explain", "anna@acme.io", "--model", "product-b", "--at", DAY3, "--json"],
                tmp_path, env)
    assert (b["model"], b["threshold"], b["half_life_days"]) == ("product-b", 20, 10)
    assert b["fit"] == [{"rule": "b-big", "points": 5}]
    assert [(p["event_id"], p["rule"], p["points"], p["rules_version"])
            for p in b["engagement"]] == [("m1", "b-page", 12, version),
                                          ("m2", "b-page", 12, version)]
    assert [p["value"] for p in b["engagement"]] == pytest.approx(
        [12 * 2 ** (-2 / 10), 12 * 2 ** (-1 / 10)], abs=1e-4)
    assert b["score"] == pytest.approx(B_AT_DAY3, abs=1e-4)
    emea = json_of(["explain", "anna@acme.io", "--model", "emea", "--at", DAY3, "--json"],
                   tmp_path, env)
    assert [p["event_id"] for p in emea["engagement"]] == ["m1", "m2", "m3"]
    assert emea["fit_total"] == 0
    assert emea["score"] == pytest.approx(EMEA_AT_DAY3, abs=1e-4)
    # The primary model's explanation is unchanged: blog posts, +2 each (H = 30 days).
    primary = json_of(["explain", "anna@acme.io", "--at", DAY3, "--json"], tmp_path, env)
    assert "model" not in primary
    assert primary["engagement_total"] == pytest.approx(
        2 * (2 ** (-2 / 30) + 2 ** (-1 / 30) + 1), abs=1e-4)
    text = run(["explain", "anna@acme.io", "--model", "product-b", "--at", DAY3], tmp_path,
               env=env)
    assert text.returncode == 0, text.stderr
    assert "model product-b (threshold 20)" in text.stdout
    refused = run(["explain", "anna@acme.io", "--model", "product-c"], tmp_path, env=env)
    assert refused.returncode == 2
    assert "unknown model 'product-c'" in refused.stderr
    assert "product-b, emea" in refused.stderr
    # Without models in the rules, the message says there are none.
    plain = run(["explain", "anna@acme.io", "--model", "product-b"], tmp_path)
    assert plain.returncode == 2
    assert "named models: none" in plain.stderr


def test_rescore_model_backtests_one_model_against_the_current_rules(tmp_path: Path) -> None:
    ingest(tmp_path)  # the built-in rules: no named models
    rules = candidate(tmp_path)
    b = json_of(["rescore", "--rules", str(rules), "--model", "product-b", "--json"],
                tmp_path)
    assert b["model"] == "product-b"
    assert b["threshold"] == {"current": None, "new": 20}
    assert b["new_version"] == load_rules(rules).version
    assert b["changes"]["newly"] == 1
    assert b["crossed_count"] == {"current": 0, "new": 1}
    [lead] = b["changed_leads"]
    # 17 after the first page, 28.2 after the second: the threshold is crossed on day 2.
    assert lead["crossed_at_current"] is None
    assert lead["crossed_at_new"] == "2026-03-03T09:00:00+00:00"
    assert lead["score_current"] is None
    assert lead["score_new"] == pytest.approx(B_AT_DAY3, abs=1e-4)
    emea = json_of(["rescore", "--rules", str(rules), "--model", "emea", "--json"], tmp_path)
    assert emea["changes"]["same"] == 1  # never reaches 30: no crossing under either
    assert emea["scores"] == {"changed": 1, "higher": 1, "lower": 0}
    assert emea["changed_leads"][0]["score_new"] == pytest.approx(EMEA_AT_DAY3, abs=1e-4)
    text = run(["rescore", "--rules", str(rules), "--model", "product-b"], tmp_path)
    assert text.returncode == 0, text.stderr
    assert "(model product-b) over 1 leads: 0 model product-b threshold earlier" in text.stdout
    assert "crossing model product-b threshold: 0 -> 1" in text.stdout
    assert "email:anna@acme.io: newly (- -> 2026-03-03T09:00:00+00:00, score - -> 26.64)" \
        in text.stdout
    refused = run(["rescore", "--rules", str(rules), "--model", "apac"], tmp_path)
    assert refused.returncode == 2
    assert "unknown model 'apac'" in refused.stderr
    assert "product-b, emea" in refused.stderr


def _backfills(url: str) -> list[Any]:
    app = LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}))
    try:
        [lead_id] = list(app.lead_ids())
        return [e for e in app.events.get(lead_id) if isinstance(e, Lead.ModelBackfilled)]
    finally:
        app.close()


def test_rescore_apply_backfills_a_new_model_as_events_that_verify(tmp_path: Path) -> None:
    ingest(tmp_path)
    assert run(["clock", "advance", "--to", "2026-03-20T00:00:00Z"], tmp_path).returncode == 0
    rules = candidate(tmp_path)
    version = load_rules(rules).version
    applied = json_of(["rescore", "--rules", str(rules), "--apply", "--json"], tmp_path)
    assert applied["applied"] == version
    assert applied["backfill"] == {"models": ["product-b", "emea"], "leads": 1, "scanned": 1,
                                   "unloadable_leads": []}
    verified = run(["verify"], tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    history = json_of(["history", "anna@acme.io", "--json"], tmp_path)
    last = history[-1]
    assert last["events"][:2] == ["ModelBackfilled", "ModelBackfilled"]
    assert last["cause"]["command"] == "backfill models"
    assert last["cause"]["rules_version"] == version
    # The recorded rows before it are untouched: the three records' rows come first.
    assert [row["cause"].get("event_id") for row in history[:3]] == ["m1", "m2", "m3"]
    url = f"sqlite:///{tmp_path / 'lf.db'}"
    b, emea = _backfills(url)
    assert (b.model, b.rules_version, emea.model) == ("product-b", version, "emea")
    assert [(a["event_id"], a["points"]) for a in b.awards] == [("m1", 12), ("m2", 12)]
    assert b.fit == 5
    # Up on day 2 at 28.2; then 5 + 23.2 * 2^(-t/10d) falls below 20 at t = 10d * log2(23.2/15),
    # before the clock's position (March 20): recorded as a crossing down at that moment.
    up_at = datetime(2026, 3, 3, 9, tzinfo=UTC)
    down_at = up_at + timedelta(days=10 * math.log2((12 * 2 ** (-1 / 10) + 12) / 15))
    assert [c["direction"] for c in b.crossings] == ["up", "down"]
    assert b.crossings[0]["at"] == up_at
    assert b.crossings[0]["score"] == pytest.approx(B_AT_DAY2, abs=1e-6)
    assert abs((b.crossings[1]["at"] - down_at).total_seconds()) < 1
    assert b.crossings[1]["score"] == pytest.approx(20, abs=1e-6)
    assert emea.crossings == []  # 11.8 at most: never 30
    # What the lead shows and explains now is the backfilled model (a fresh replay).
    models = json_of(["lead", "show", "anna@acme.io", "--at", DAY3, "--json"], tmp_path)["models"]
    assert models["product-b"]["score"] == pytest.approx(B_AT_DAY3, abs=1e-4)
    assert models["emea"]["score"] == pytest.approx(EMEA_AT_DAY3, abs=1e-4)
    explained = json_of(["explain", "anna@acme.io", "--model", "product-b", "--at", DAY3,
                         "--json"], tmp_path)
    assert {p["rules_version"] for p in explained["engagement"]} == {version}
    assert explained["score"] == pytest.approx(B_AT_DAY3, abs=1e-4)
    # Publishing the same rules again backfills nothing; --model forces one model's
    # backfill (finishing one that was stopped), which records nothing already there.
    again = json_of(["rescore", "--rules", str(rules), "--apply", "--json"], tmp_path)
    assert again["backfill"]["models"] == []
    forced = json_of(["rescore", "--rules", str(rules), "--model", "emea", "--apply", "--json"],
                     tmp_path)
    assert forced["backfill"] == {"models": ["emea"], "leads": 0, "scanned": 1,
                                  "unloadable_leads": []}
    assert len(_backfills(url)) == 2
    # A changed model is backfilled again: a new event, the earlier ones stay.
    changed = candidate(tmp_path, MODELS.replace("points = 12", "points = 6"))
    json_of(["rescore", "--rules", str(changed), "--apply", "--json"], tmp_path)
    *_, latest = _backfills(url)
    assert (latest.model, [a["points"] for a in latest.awards]) == ("product-b", [6, 6])
    assert run(["verify"], tmp_path).returncode == 0
    shown = json_of(["lead", "show", "anna@acme.io", "--at", DAY3, "--json"], tmp_path)
    assert shown["models"]["product-b"]["score"] == pytest.approx(5 + (B_AT_DAY3 - 5) / 2,
                                                                  abs=1e-4)


def test_a_named_model_can_be_the_primary_one(tmp_path: Path) -> None:
    extra = MODELS.replace("threshold = 20\n", "threshold = 20\nrecycle_threshold = 5\n")
    rules = tmp_path / "primary.toml"
    rules.write_text(default_rules_text().replace(
        "[lifecycle]\n", '[lifecycle]\nprimary_model = "product-b"\n', 1) + extra)
    checked = run(["rules", "check", str(rules)], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "primary model product-b" in checked.stdout
    env = {"LEADFLOW_RULES": str(rules)}
    ingest(tmp_path, env)
    view = json_of(["lead", "show", "anna@acme.io", "--at", DAY3, "--json"], tmp_path, env)
    # product-b drives the lifecycle: MQL on day 2 (28.2 >= 20), its score is the lead's.
    assert view["stage"] == "mql"
    assert [t["at"] for t in view["transitions"] if t["to"] == "mql"] == [
        "2026-03-03T09:00:00+00:00"]
    assert view["score"] == pytest.approx(B_AT_DAY3, abs=1e-4)
    # [scoring] scores beside it as the named model "scoring": +2 per blog post (H = 30).
    assert set(view["models"]) == {"scoring", "emea"}
    scoring = view["models"]["scoring"]
    assert scoring["threshold"] == 50
    assert scoring["engagement"] == pytest.approx(2 * (2 ** (-2 / 30) + 2 ** (-1 / 30) + 1),
                                                  abs=1e-4)
    explained = json_of(["explain", "anna@acme.io", "--model", "scoring", "--at", DAY3,
                         "--json"], tmp_path, env)
    assert [p["rule"] for p in explained["engagement"]] == ["blog-post"] * 3
    for old, new, message in (
            ('primary_model = "product-b"', 'primary_model = "product-c"',
             "lifecycle.primary_model: unknown model 'product-c'; the named models of this "
             "file: product-b, emea"),
            ("recycle_threshold = 5\n", "", "models.product-b.recycle_threshold is needed")):
        bad = tmp_path / "bad.toml"
        bad.write_text(rules.read_text().replace(old, new))
        refused = run(["rules", "check", str(bad)], tmp_path)
        assert refused.returncode == 1
        assert message in refused.stdout + refused.stderr
