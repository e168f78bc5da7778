"""Named scoring models through the real CLI on the embedded store: ``rules check`` and
``lead show --json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leadflow.domain.rules import default_rules_text
from tests.e2e.test_cli import run
from tests.unit.test_scoring_models import MODELS  # the models the unit tests score by hand


def record(event_id: str, at: str, product: str, **lead: object) -> str:
    return json.dumps({"event_id": event_id, "type": "page_viewed", "occurred_at": at,
                       "lead": {"email": "anna@acme.io", **lead},
                       "context": {"url": "https://acme.io/blog/x",
                                   "properties": {"product": product}}})


def test_lead_show_json_shows_each_models_score(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(default_rules_text() + MODELS)
    checked = run(["rules", "check", str(rules)], tmp_path)
    assert checked.returncode == 0, checked.stderr
    env = {"LEADFLOW_RULES": str(rules)}
    lines = [record("m1", "2026-03-02T09:00:00Z", "b", employees=150),
             record("m2", "2026-03-03T09:00:00Z", "b"),
             record("m3", "2026-03-04T09:00:00Z", "a")]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    done = run(["ingest", str(source), "--json"], tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    shown = run(["lead", "show", "anna@acme.io", "--at", "2026-03-04T09:00:00Z", "--json"],
                tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    models = json.loads(shown.stdout)["models"]
    assert set(models) == {"product-b", "emea"}
    b, emea = models["product-b"], models["emea"]
    at_day_1 = 12 * 2 ** (-1 / 10) + 12  # two product-B pages a day apart, H = 10 days
    assert b["fit"] == 5
    assert b["engagement"] == pytest.approx(at_day_1 * 2 ** (-1 / 10), abs=1e-4)
    assert b["score"] == pytest.approx(5 + at_day_1 * 2 ** (-1 / 10), abs=1e-4)
    assert {(c["rule"], c["kind"], c["count"]) for c in b["breakdown"]} == {
        ("b-big", "fit", 1), ("b-page", "engagement", 2)}
    assert emea["fit"] == 0
    assert emea["engagement"] == pytest.approx(
        4 * (2 ** (-2 / 30) + 2 ** (-1 / 30) + 1), abs=1e-4)
    # The built-in rules have no models: nothing is shown for them.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "in.jsonl").write_text(lines[0] + "\n")
    assert run(["ingest", str(plain / "in.jsonl")], plain).returncode == 0
    view = json.loads(run(["lead", "show", "anna@acme.io", "--json"], plain).stdout)
    assert "models" not in view


def test_rules_check_names_an_unknown_field(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[models.b]\nthreshold = 10\n[[models.b.engagement]]\nid = "x"\n'
                     'type = "page_viewed"\npoints = 1\n'
                     'when = [{field = "utm_source", equals = "ads"}]\n')
    checked = run(["rules", "check", str(rules)], tmp_path)
    assert checked.returncode != 0
    assert "models.b.engagement.0.when.0.field" in checked.stdout + checked.stderr
    assert "unknown field 'utm_source'" in checked.stdout + checked.stderr
