"""A poison record costs only itself; idempotency has teeth; a damaged lead is named."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from leadflow.domain import AggregateUnloadableError, Lead
from leadflow.engine.app import LeadflowApp, Outcome
from tests.conftest import T0, Records, days, make_app


def _explode_on(monkeypatch: pytest.MonkeyPatch, event_id: str) -> None:
    """Make applying ``event_id`` fail half-way: after the lead has recorded it."""
    original = Lead.record_touchpoint

    def record_touchpoint(self: Lead, eid: str, *args: Any, **kwargs: Any) -> None:
        original(self, eid, *args, **kwargs)
        if eid == event_id:
            raise ZeroDivisionError("a bug that only this record triggers")

    monkeypatch.setattr(Lead, "record_touchpoint", record_touchpoint)


def test_a_record_that_fails_half_way_is_rejected_alone_and_leaves_nothing_behind(
        app: LeadflowApp, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    app.apply_batch([rec("form_submitted", "anna@acme.io", event_id="first")])
    before = app.lead("email:anna@acme.io").to_json()
    _explode_on(monkeypatch, "poison")
    result = app.apply_batch([
        rec("email_opened", "bob@bravo.io", event_id="b1"),
        rec("content_downloaded", "anna@acme.io", event_id="poison", at=T0 + days(1)),
        rec("email_opened", "carl@charlie.io", event_id="c1"),
    ])
    outcomes = [(r.event_id, r.outcome, r.reason) for r in result.results]
    assert outcomes == [("b1", Outcome.APPLIED, None),
                        ("poison", Outcome.REJECTED, "apply_failed"),
                        ("c1", Outcome.APPLIED, None)]
    poisoned = result.results[1]
    assert poisoned.error_class == "ZeroDivisionError"
    assert "only this record" in (poisoned.detail or "")
    # The half-applied touchpoint is gone, in the cache and in the store.
    assert app.lead("email:anna@acme.io").to_json() == before
    monkeypatch.undo()
    again = app.apply_batch([rec("content_downloaded", "anna@acme.io", event_id="poison",
                                 at=T0 + days(1))])
    assert again.results[0].outcome is Outcome.APPLIED  # a refused record can come back


def test_a_poisoned_record_creating_a_lead_creates_nothing(
        app: LeadflowApp, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    _explode_on(monkeypatch, "poison")
    result = app.apply_batch([rec("email_opened", "new@acme.io", event_id="poison")])
    assert result.results[0].reason == "apply_failed"
    with pytest.raises(Exception, match="no lead known"):
        app.lead("email:new@acme.io")


def test_the_same_event_id_with_other_content_is_a_conflict_never_a_silent_duplicate(
        app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("email_opened", "anna@acme.io", event_id="e-1")])
    result = app.apply_batch([
        rec("email_opened", "anna@acme.io", event_id="e-1"),           # a re-send
        rec("email_clicked", "anna@acme.io", event_id="e-1"),          # other content
        rec("email_opened", "zoe@other.io", event_id="e-1"),           # another lead
        rec("email_opened", "anna@acme.io", event_id="e-2"),
        rec("email_clicked", "anna@acme.io", event_id="e-2"),          # conflict in a batch
    ])
    assert [(r.outcome, r.reason) for r in result.results] == [
        (Outcome.DUPLICATE, None), (Outcome.REJECTED, "event_id_conflict"),
        (Outcome.REJECTED, "event_id_conflict"), (Outcome.APPLIED, None),
        (Outcome.REJECTED, "event_id_conflict")]
    assert "already applied to lead" in (result.results[2].detail or "")
    with pytest.raises(Exception, match="no lead known"):
        app.lead("email:zoe@other.io")  # the id never sits on two leads
    assert app.lead("email:anna@acme.io").touchpoints == 2


def test_a_re_sent_record_in_another_offset_or_spelling_is_still_a_duplicate(
        app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("email_opened", "anna@acme.io", event_id="e-1")])
    same = rec("email_opened", "  Anna@ACME.io ", event_id="e-1",
               at=T0.astimezone().replace())  # same instant, other spelling of the email
    assert app.apply_batch([same]).results[0].outcome is Outcome.DUPLICATE


def damaged_store(tmp_path: Path, records: list[Any], damaged: str) -> tuple[LeadflowApp, UUID]:
    """A SQLite store of ``records`` whose lead ``damaged`` lost its second row (deleted by
    hand), reopened with a cold cache so that the lead must come from the store."""
    app = make_app("sqlite", tmp_path)
    app.apply_batch(records)
    lead_id = app.resolve(damaged)
    app.close()
    with sqlite3.connect(tmp_path / "leadflow.db") as db:
        # Its second stored row (one row per record; a row is keyed by its first version).
        db.execute("DELETE FROM stored_events WHERE originator_id = ? AND originator_version = "
                   "(SELECT originator_version FROM stored_events WHERE originator_id = ? "
                   "ORDER BY originator_version LIMIT 1 OFFSET 1)", [lead_id.hex, lead_id.hex])
    return make_app("sqlite", tmp_path), lead_id


def test_a_lead_with_a_deleted_middle_event_is_named_and_costs_only_its_records(
        tmp_path: Path, rec: Records) -> None:
    app, lead_id = damaged_store(tmp_path, [
        rec("form_submitted", "anna@acme.io"),
        rec("email_opened", "anna@acme.io", at=T0 + days(1)),
        rec("email_clicked", "anna@acme.io", at=T0 + days(2)),
        rec("email_opened", "bob@acme.io")], "email:anna@acme.io")
    result = app.apply_batch([rec("email_opened", "bob@acme.io", at=T0 + days(3)),
                              rec("email_opened", "anna@acme.io", at=T0 + days(3)),
                              rec("email_opened", "carl@other.io", at=T0 + days(3))])
    assert [(r.outcome, r.reason) for r in result.results] == [
        (Outcome.APPLIED, None), (Outcome.REJECTED, "lead_unloadable"), (Outcome.APPLIED, None)]
    assert str(lead_id) in (result.results[1].detail or "")
    assert result.results[1].error_class == "OriginatorVersionError"
    with pytest.raises(AggregateUnloadableError) as caught:
        app.lead("email:anna@acme.io")
    assert caught.value.aggregate_id == lead_id
    assert app.lead("email:bob@acme.io").touchpoints == 2
    app.close()


def test_a_record_whose_events_cannot_be_stored_is_rejected_alone(
        app: LeadflowApp, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Lead.record_touchpoint

    def record_touchpoint(self: Lead, eid: str, record_type: str, at: Any,
                          context: dict[str, Any], rules: Any, actor: str | None = None
                          ) -> None:
        if eid == "unstorable":  # a value no JSON encoder takes, in the event's state
            context = {**context, "form_id": object()}
        original(self, eid, record_type, at, context, rules, actor)

    monkeypatch.setattr(Lead, "record_touchpoint", record_touchpoint)
    result = app.apply_batch([rec("email_opened", "bob@bravo.io", event_id="b1"),
                              rec("form_submitted", "anna@acme.io", event_id="unstorable"),
                              rec("email_opened", "carl@charlie.io", event_id="c1")])
    assert [(r.event_id, r.reason) for r in result.rejected] == [("unstorable", "apply_failed")]
    assert "cannot be stored" in (result.rejected[0].detail or "")
    assert result.applied == 2
    with pytest.raises(Exception, match="no lead known"):
        app.lead("email:anna@acme.io")


def test_the_clock_skips_a_damaged_lead_and_moves_every_other_one_on(
        tmp_path: Path, rec: Records) -> None:
    app, anna = damaged_store(tmp_path, [
        rec("form_submitted", "anna@acme.io"),
        rec("email_opened", "anna@acme.io", at=T0 + days(1)),
        rec("email_clicked", "anna@acme.io", at=T0 + days(2)),
        rec("form_submitted", "bob@bravo.io")], "email:anna@acme.io")
    result = app.advance_clock(T0 + days(90))
    assert result.unloadable == (anna,)
    assert app.lead("email:bob@bravo.io").dormant
    app.close()
