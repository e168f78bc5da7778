"""Named scoring models (``[models.<id>]``): each scores the same stream with its own rules,
half-life and threshold, records its points and threshold crossings as events in the
record's row, and shows in the lead's view; the lifecycle follows the primary model only."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from leadflow.contract.inbound import RecordRejected, parse_record
from leadflow.contract.lifecycle import to_lifecycle
from leadflow.domain import Lead
from leadflow.domain import rules as quick
from leadflow.domain.rules import Rules, RulesError, default_rules, default_rules_text, parse_rules
from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, days, make_app

MODELS = """
[models.product-b]
threshold = 20
half_life_days = 10
description = "interest in product B"
[[models.product-b.engagement]]
id = "b-page"
type = "page_viewed"
when = [{field = "properties.product", equals = "b"}]
points = 12
[[models.product-b.fit]]
id = "b-big"
field = "employees"
min = 100
points = 5

[models.emea]
threshold = 30
[[models.emea.engagement]]
id = "any-page"
type = "page_viewed"
points = 4
[[models.emea.engagement]]
id = "demo"
type = "demo_requested"
points = 30
expires_after_days = 7
"""
EMAIL = "anna@acme.io"
H_B = 10 * 86400.0
H_EMEA = 30 * 86400.0


def models_rules() -> Rules:
    return parse_rules(default_rules_text() + MODELS, source="models.toml")


def stream(rec: Records) -> list[Any]:
    return [
        rec("page_viewed", EMAIL, at=T0, lead={"employees": 150},
            context={"url": "https://acme.io/blog/x", "properties": {"product": "b"}}),
        rec("page_viewed", EMAIL, at=T0 + days(1), context={"properties": {"product": "B"}}),
        rec("page_viewed", EMAIL, at=T0 + days(2), context={"properties": {"product": "a"}}),
        rec("demo_requested", EMAIL, at=T0 + days(3)),
    ]


def lead_events(app: LeadflowApp, lead_id: Any) -> list[list[Any]]:
    """The lead's stored rows, each as the events it holds."""
    rows = app.codec.select_many([lead_id])[lead_id]
    return [list(app.codec.expander.expand(row)) for row in rows]


def crossings(app: LeadflowApp, lead_id: Any) -> list[tuple[str, str, Any]]:
    return [(e.model, e.direction, e.occurred_at) for row in lead_events(app, lead_id)
            for e in row if isinstance(e, Lead.ModelThresholdCrossed)]


# The hand-computed numbers (2^(-t/H) decay per model).
B_AT_DAY_1 = 12 * 2 ** (-1 / 10) + 12  # two product-B pages, one day apart (H = 10 days)
B_DOWN = T0 + days(1) + timedelta(days=10 * math.log2(B_AT_DAY_1 / 15))  # 5 + e = 20
EMEA_PAGES_AT_DAY_3 = 4 * (2 ** (-3 / 30) + 2 ** (-2 / 30) + 2 ** (-1 / 30))
EMEA_PAGES_AT_DAY_10 = 4 * (2 ** (-10 / 30) + 2 ** (-9 / 30) + 2 ** (-8 / 30))


@pytest.fixture
def models_app(store: str, tmp_path: Path) -> Any:
    application = make_app(store, tmp_path, models_rules())
    yield application
    application.close()


def test_two_models_score_the_same_stream_differently_and_exactly(
        models_app: LeadflowApp, rec: Records) -> None:
    models_app.apply_batch(stream(rec))
    view = models_app.lead("email:" + EMAIL)
    assert view.at == T0 + days(3)
    b, emea = view.models["product-b"], view.models["emea"]
    # product-b: only the two pages with properties.product = b (any case) count, 12 each;
    # the 150-employee company gives its fit 5.
    assert b.fit == 5
    assert b.engagement == pytest.approx(B_AT_DAY_1 * 2 ** (-2 / 10), abs=1e-9)
    assert b.score == pytest.approx(5 + B_AT_DAY_1 * 2 ** (-2 / 10), abs=1e-9)
    # emea: every page 4 (H = 30 days), the demo 30 for 7 days without decay.
    assert emea.fit == 0
    assert emea.engagement == pytest.approx(EMEA_PAGES_AT_DAY_3 + 30, abs=1e-9)
    assert {(c.rule, c.kind, c.points, c.count) for c in b.breakdown} == {
        ("b-big", "fit", 5.0, 1), ("b-page", "engagement", 24.0, 2)}
    assert {(c.rule, c.points, c.count) for c in emea.breakdown} == {
        ("any-page", 12.0, 3), ("demo", 30.0, 1)}
    # The primary model is untouched by the named ones: blog post 2 + demo 20 (seed numbers).
    assert view.score == pytest.approx(
        models_app.lead("email:" + EMAIL).fit + 2 * 2 ** (-3 / 30) + 20, abs=1e-9)
    shown = view.to_json()["models"]
    assert set(shown) == {"product-b", "emea"}
    assert set(shown["product-b"]) >= {"score", "fit", "engagement", "breakdown"}
    # As of an earlier event time: only the first page.
    early = models_app.lead("email:" + EMAIL, at=T0 + days(0.5)).models["product-b"]
    assert early.engagement == pytest.approx(12 * 2 ** (-0.5 / 10), abs=1e-9)


def test_each_record_keeps_one_row_holding_each_models_points(
        models_app: LeadflowApp, rec: Records) -> None:
    models_app.apply_batch(stream(rec))
    lead_id = models_app.lead("email:" + EMAIL).lead_id
    rows = lead_events(models_app, lead_id)
    assert len(rows) == 4  # one row per record
    scored = [[e for e in row if isinstance(e, Lead.ModelsScored)] for row in rows]
    # The first record: the profile (fit) and the touchpoint; the demo scores emea only.
    assert [sorted(m for e in found for m in e.models) for found in scored] == [
        ["emea", "product-b", "product-b"], ["emea", "product-b"], ["emea"], ["emea"]]
    for row, found in zip(rows, scored, strict=True):
        for event in found:
            assert event.rules_version == models_app.rules.version
            assert event.event_id == next(e.event_id for e in row if hasattr(e, "event_id"))
    first_points = scored[0][1].models["product-b"]["awards"]
    assert [(a["rule"], a["points"], a["event_id"]) for a in first_points] == [
        ("b-page", 12.0, "evt-1")]
    # The primary model's events carry nothing of the named models.
    touch = next(e for e in rows[0] if isinstance(e, Lead.TouchpointScored))
    assert "models" not in touch.__dict__


def test_threshold_crossings_are_events_at_their_exact_times(
        models_app: LeadflowApp, rec: Records) -> None:
    models_app.apply_batch(stream(rec))
    lead_id = models_app.lead("email:" + EMAIL).lead_id
    assert crossings(models_app, lead_id) == [
        ("product-b", "up", T0 + days(1)),  # 5 + 12*2^(-1/10) + 12 = 28.2 >= 20
        ("emea", "up", T0 + days(3)),  # pages 11.7 + demo 30 >= 30
    ]
    models_app.advance_clock(T0 + days(40))
    found = crossings(models_app, lead_id)[2:]
    assert [(m, d) for m, d, _ in found] == [("product-b", "down"), ("emea", "down")]
    # product-b decays below 20 at 1 + 10*log2(23.196/15) = 7.29 days; emea falls when the
    # demo's 30 points expire, 7 days after day 3 (its pages alone: 9.75).
    assert abs((found[0][2] - B_DOWN).total_seconds()) < 1e-3
    assert found[1][2] == T0 + days(10)
    view = models_app.lead("email:" + EMAIL, at=T0 + days(10))
    assert view.models["emea"].score == pytest.approx(EMEA_PAGES_AT_DAY_10, abs=1e-9)
    # The lifecycle follows the primary model only: still new (22 points < 50).
    assert view.stage_now == "new"


def test_crossings_are_relayed_as_score_threshold_crossed(
        models_app: LeadflowApp, rec: Records) -> None:
    models_app.apply_batch(stream(rec))
    models_app.advance_clock(T0 + days(40))
    lead_id = models_app.lead("email:" + EMAIL).lead_id
    messages = [m for row in lead_events(models_app, lead_id) for e in row
                if (m := to_lifecycle(e)) is not None
                and m.type == "lead.score_threshold_crossed"]
    assert [(m.model, m.direction, m.threshold) for m in messages] == [
        ("product-b", "up", 20.0), ("emea", "up", 30.0),
        ("product-b", "down", 20.0), ("emea", "down", 30.0)]
    up = messages[0]
    assert up.score == pytest.approx(round(5 + B_AT_DAY_1, 4))
    assert up.occurred_at == T0 + days(1) and up.lead_id == lead_id
    assert up.rules_version == models_app.rules.version
    assert json.loads(up.model_dump_json())["type"] == "lead.score_threshold_crossed"


def test_replays_are_deterministic(tmp_path: Path, rec: Records) -> None:
    records = stream(rec)
    first = make_app("sqlite", tmp_path, models_rules(), name="a.db")
    first.apply_batch(records)
    first.advance_clock(T0 + days(40))
    view = first.lead("email:" + EMAIL).to_json()
    lead_id = first.lead("email:" + EMAIL).lead_id
    stored = crossings(first, lead_id)
    first.close()
    reopened = make_app("sqlite", tmp_path, models_rules(), name="a.db")
    assert reopened.lead("email:" + EMAIL).to_json() == view
    replayed = reopened.replay_leads([lead_id])[0]
    assert replayed.model_states == reopened._get_lead(lead_id).model_states
    reopened.close()
    # Another store fed the same records in another batching decides alike.
    other = make_app("sqlite", tmp_path, models_rules(), name="b.db")
    for record in records:
        other.apply_batch([record])
    other.advance_clock(T0 + days(20))
    other.advance_clock(T0 + days(40))
    assert crossings(other, lead_id) == stored
    assert other.lead("email:" + EMAIL).to_json() == view
    other.close()


def test_a_store_without_models_records_nothing_new(app: LeadflowApp, rec: Records) -> None:
    assert default_rules().version == "r-f5e0d832a88f"
    app.apply_batch(stream(rec))
    view = app.lead("email:" + EMAIL)
    assert view.models == {} and "models" not in view.to_json()
    names = {type(e).__name__ for row in lead_events(app, view.lead_id) for e in row}
    assert not names & {"ModelsScored", "ModelThresholdCrossed"}
    assert app._get_lead(view.lead_id).model_states == {}


def test_a_merge_brings_the_merged_leads_model_points(
        models_app: LeadflowApp, rec: Records) -> None:
    phone = "+44 20 7946 0958"
    models_app.apply_batch([
        rec("page_viewed", EMAIL, at=T0, context={"properties": {"product": "b"}}),
        rec("page_viewed", None, at=T0 + days(1), lead={"phone": phone},
            context={"properties": {"product": "b"}}),
        # One record naming both: the older lead absorbs the newer one.
        rec("email_opened", EMAIL, at=T0 + days(2), lead={"phone": phone}),
    ])
    view = models_app.lead("email:" + EMAIL)
    assert view.models["product-b"].engagement == pytest.approx(B_AT_DAY_1 * 2 ** (-1 / 10),
                                                                abs=1e-9)
    # Neither lead reached 20 alone (12 each); together 21.6 at the merging record's time.
    assert crossings(models_app, view.lead_id) == [("product-b", "up", T0 + days(2))]


def test_an_unmerge_takes_the_merged_leads_model_points_back(
        models_app: LeadflowApp, rec: Records) -> None:
    phone = "+44 20 7946 0958"
    models_app.apply_batch([
        rec("page_viewed", EMAIL, at=T0, context={"properties": {"product": "b"}}),
        rec("page_viewed", None, at=T0 + days(1), lead={"phone": phone},
            context={"properties": {"product": "b"}}),
        rec("email_opened", EMAIL, at=T0 + days(2), lead={"phone": phone}),
    ])
    models_app.unmerge("phone:+442079460958", T0 + days(3), "ops")
    survivor = models_app.lead("email:" + EMAIL, at=T0 + days(2)).models["product-b"]
    restored = models_app.lead("phone:+442079460958", at=T0 + days(2)).models["product-b"]
    assert survivor.engagement == pytest.approx(12 * 2 ** (-2 / 10), abs=1e-9)
    assert restored.engagement == pytest.approx(12 * 2 ** (-1 / 10), abs=1e-9)
    # The merged points took product-b above 20; without them it is below again.
    survivor_id = models_app.lead("email:" + EMAIL).lead_id
    assert crossings(models_app, survivor_id) == [("product-b", "up", T0 + days(2)),
                                                  ("product-b", "down", T0 + days(3))]


def test_anonymous_interest_is_scored_by_the_models_once_identified(
        models_app: LeadflowApp, rec: Records) -> None:
    models_app.apply_batch([
        rec("page_viewed", None, at=T0, lead={"anonymous_id": "cookie-1"},
            context={"properties": {"product": "b"}}),
        rec("form_submitted", EMAIL, at=T0 + days(1), lead={"anonymous_id": "cookie-1"}),
    ])
    b = models_app.lead("email:" + EMAIL).models["product-b"]
    assert b.engagement == pytest.approx(12 * 2 ** (-1 / 10), abs=1e-9)
    assert [(c.rule, c.count) for c in b.breakdown] == [("b-page", 1)]


# ----------------------------------------------------------------- the rules file


def test_a_file_with_models_is_read_alike_by_both_readings() -> None:
    data = tomllib.loads(default_rules_text() + MODELS)
    read = quick._build(Rules, copy.deepcopy(data))
    from leadflow.domain import rules_schema

    model = rules_schema.Rules.model_validate(data)
    by_pydantic = quick._from_model(model)
    assert repr(read) == repr(by_pydantic) and read == by_pydantic
    assert quick._data(read) == model.model_dump(mode="json", by_alias=True)
    assert read.version == by_pydantic.version != default_rules().version
    assert list(read.models) == ["product-b", "emea"]
    assert read.models["product-b"].half_life_seconds == H_B
    assert read.models["emea"].half_life_seconds == H_EMEA  # the default 30 days


@pytest.mark.parametrize(("text", "named"), [
    ('[[scoring.engagement]]\nid = "a"\ntype = "page_viewed"\npoints = 1\n'
     'when = [{field = "utm", equals = "x"}]\n',
     "scoring.engagement.0.when.0.field: Value error, unknown field 'utm'"),
    ('[models.b]\nthreshold = 1\n[[models.b.engagement]]\nid = "a"\ntype = "page_viewed"\n'
     'points = 1\nwhen = [{field = "properties.a b", equals = "x"}]\n',
     "models.b.engagement.0.when.0.field: Value error, unknown field 'properties.a b'"),
    ('[models.b]\nhalf_life_days = 3\n', "models.b.threshold: Field required"),
    ('[models.b]\nthreshold = 1\nhalf_life_days = 0\n', "models.b.half_life_days"),
    ('[models.b]\nthreshold = 1\n[[models.b.engagement]]\nid = "a"\ntype = "page_viewed"\n'
     'points = 1\n[[models.b.fit]]\nid = "a"\nfield = "title"\nin = ["x"]\npoints = 1\n',
     "rule ids must be unique within a model: a"),
    ('[models."B.x"]\nthreshold = 1\n', "models.B.x.[key]"),
])
def test_a_bad_model_or_field_is_named(text: str, named: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="r.toml")
    assert named in str(caught.value)


def test_models_rules_may_use_properties_and_the_primary_model_too() -> None:
    rules = parse_rules('[[scoring.engagement]]\nid = "p"\ntype = "page_viewed"\npoints = 3\n'
                        'when = [{field = "properties.trial", equals = "true"}]\n')
    condition = rules.scoring.engagement[0].when[0]
    assert condition.matches({"properties": {"trial": True}})
    assert not condition.matches({"properties": {"trial": False}})
    assert not condition.matches({"url": "true"})
    number = parse_rules('[[scoring.engagement]]\nid = "p"\ntype = "page_viewed"\npoints = 3\n'
                         'when = [{field = "properties.seats", in = ["5", "10"]}]\n')
    assert number.scoring.engagement[0].when[0].matches({"properties": {"seats": 10}})


# ----------------------------------------------------------------- the contract


def _record(properties: Any) -> bytes:
    return json.dumps({"event_id": "e1", "type": "page_viewed",
                       "occurred_at": "2026-03-02T09:15:00+01:00",
                       "lead": {"email": "a@acme.io"},
                       "context": {"properties": properties}}).encode()


def test_properties_are_scalars_within_bounds() -> None:
    record = parse_record(_record({"product": " b ", "seats": 10, "ratio": 0.5, "trial": True}))
    assert record.context.properties == {"product": "b", "seats": 10, "ratio": 0.5,
                                         "trial": True}


@pytest.mark.parametrize(("properties", "reason"), [
    ({f"k{i}": 1 for i in range(51)}, "value_too_long"),
    ({"k" * 65: "x"}, "value_too_long"),
    ({"k": "x" * 501}, "value_too_long"),
    ({"k": "a\u0007b"}, "forbidden_character"),
    ({"a\u200bb": "x"}, "forbidden_character"),
    ({"a b": "x"}, "schema_violation"),
    ({"a.b": "x"}, "schema_violation"),
    ({"k": 2**60}, "number_out_of_range"),
    ({"k": [1]}, "schema_violation"),
    ({"k": {"x": 1}}, "schema_violation"),
    ({"k": None}, "schema_violation"),
    ({"k": " "}, "schema_violation"),
    (["k"], "schema_violation"),
])
def test_properties_out_of_bounds_are_refused_with_the_contracts_reasons(
        properties: Any, reason: str) -> None:
    with pytest.raises(RecordRejected) as caught:
        parse_record(_record(properties))
    assert caught.value.reason == reason
    assert (caught.value.field or "").startswith("context.properties")


def test_a_models_score_does_not_depend_on_arrival_order(tmp_path: Path) -> None:
    in_order = make_app("memory", tmp_path, models_rules())
    reversed_ = make_app("memory", tmp_path, models_rules())
    in_order.apply_batch(stream(Records()))
    reversed_.apply_batch(list(reversed(stream(Records()))))
    when = T0 + days(5)
    for model_id in ("product-b", "emea"):
        a = in_order.lead("email:" + EMAIL, at=when).models[model_id]
        b = reversed_.lead("email:" + EMAIL, at=when).models[model_id]
        assert a.score == pytest.approx(b.score, abs=1e-9), model_id
