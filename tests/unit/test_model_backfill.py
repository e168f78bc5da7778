"""The backfill a rules publication records for a named model it adds or changes: the
model's points and crossings over the whole recorded history, as one event per lead, that
a replay (and an unmerge) reads like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from leadflow.domain import Lead, scoring
from leadflow.domain.rules import default_rules, default_rules_text, parse_rules
from leadflow.engine.backfill import backfill, changed_models
from tests.conftest import T0, Records, days, make_app
from tests.unit.test_scoring_models import EMAIL, MODELS, lead_events


def test_a_model_crosses_down_when_an_expiring_award_expires() -> None:
    rules = parse_rules(MODELS)
    emea = rules.models["emea"]  # +30 for a demo request, for 7 days; threshold 30
    touches = [("d", "demo_requested", T0, {}), ("p", "page_viewed", T0 + days(1), {})]
    replay = scoring.replay_model(emea, {}, touches, T0, T0 + days(10))
    assert [(a.rule, a.points) for a in replay.awards] == [("demo", 30), ("any-page", 4)]
    # 30 at T0 (up); 30 + 4 on day 1; on day 7 the demo's 30 expire: 4 * 2^(-6/30) left.
    assert [(d, at) for d, at, _ in replay.crossings] == [("up", T0), ("down", T0 + days(7))]
    assert replay.crossings[1][2] == pytest.approx(4 * 2 ** (-6 / 30), abs=1e-9)
    # Up to day 5 only: still above.
    assert [d for d, _, _ in scoring.replay_model(emea, {}, touches, T0,
                                                  T0 + days(5)).crossings] == ["up"]


def _stream(rec: Records) -> list[Any]:
    phone = "+44 20 7946 0958"
    return [
        rec("page_viewed", EMAIL, at=T0, event_id="own",
            context={"properties": {"product": "b"}}),
        rec("page_viewed", None, at=T0 + days(1), lead={"phone": phone}, event_id="theirs",
            context={"properties": {"product": "b"}}),
        # One record naming both: the older lead absorbs the newer one.
        rec("email_opened", EMAIL, at=T0 + days(2), lead={"phone": phone}, event_id="both"),
    ]


def test_a_backfill_replays_to_the_same_state_and_an_unmerge_gives_points_back(
        tmp_path: Path, rec: Records) -> None:
    app = make_app("sqlite", tmp_path)  # the built-in rules: no models
    app.apply_batch(_stream(rec))
    new = parse_rules(default_rules_text() + MODELS)
    models = changed_models(app.rules, new)
    assert models == ("product-b", "emea")
    app.publish_rules(new, default_rules_text() + MODELS, T0 + days(3), "test")
    result = backfill(app, models, "test")
    assert (result.leads, result.scanned) == (2, 2)  # the merged lead gets its own
    survivor = app.lead("email:" + EMAIL, at=T0 + days(2))
    # Both leads' product-B pages: 12 decayed 2 days and 12 decayed 1 day (H = 10 days).
    assert survivor.models["product-b"].engagement == pytest.approx(
        12 * 2 ** (-2 / 10) + 12 * 2 ** (-1 / 10), abs=1e-9)
    events = [e for row in lead_events(app, survivor.lead_id) for e in row]
    [b] = [e for e in events if isinstance(e, Lead.ModelBackfilled) and e.model == "product-b"]
    # The person's history as one: 12 * 2^(-1/10) + 12 = 23.2 at the merged lead's page on
    # day 1 (live, the model crossed at the merge, day 2: the pages were two leads' then).
    assert [d["direction"] for d in b.crossings] == ["up"]
    assert b.crossings[0]["at"] == T0 + days(1)
    live = app._get_lead(survivor.lead_id).model_states
    app.close()
    reopened = make_app("sqlite", tmp_path, new)
    assert reopened._get_lead(survivor.lead_id).model_states == live
    # Backfilling again records nothing.
    assert backfill(reopened, models, "test").leads == 0
    reopened.unmerge("phone:+442079460958", T0 + days(3), "ops")
    kept = reopened.lead("email:" + EMAIL, at=T0 + days(2)).models["product-b"]
    back = reopened.lead("phone:+442079460958", at=T0 + days(2)).models["product-b"]
    assert kept.engagement == pytest.approx(12 * 2 ** (-2 / 10), abs=1e-9)
    assert back.engagement == pytest.approx(12 * 2 ** (-1 / 10), abs=1e-9)
    reopened.close()


def test_a_backfill_names_models_the_rules_do_not_have(tmp_path: Path) -> None:
    app = make_app("memory", tmp_path)
    with pytest.raises(ValueError, match="product-b"):
        backfill(app, ["product-b"], "test")
    assert changed_models(default_rules(), default_rules()) == ()
