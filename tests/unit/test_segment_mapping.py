"""Segment-spec messages mapped to contract-v1 records by the rules' [segment] section,
with the published spec's example payloads (tests/segment_spec.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from leadflow.contract import RecordRejected
from leadflow.contract.segment import SegmentRecord, SegmentUnmapped, parse_lines, parse_message
from leadflow.contract.wire import load_json
from leadflow.domain.rules import RulesError, default_rules, default_rules_text, parse_rules
from leadflow.engine.app import LeadflowApp, Outcome
from tests.segment_spec import (
    JOURNEY_AT,
    JOURNEY_EMAIL,
    JOURNEY_SCORE,
    SPEC_ACCOUNT_CREATED,
    SPEC_BATCH,
    SPEC_EMAIL_BOUNCED,
    SPEC_EMAIL_LINK_CLICKED,
    SPEC_EMAIL_OPENED,
    SPEC_IDENTIFY,
    SPEC_SIGNED_UP,
    SPEC_TRIAL_STARTED,
    SPEC_UNSUBSCRIBED,
    dated,
    journey,
)

MAPPING = default_rules().segment
RECEIVED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def mapped(message: Any, **kwargs: Any) -> SegmentRecord:
    return parse_message(message, MAPPING, received_at=kwargs.pop("received_at", RECEIVED),
                         **kwargs)


def refused(message: Any, **kwargs: Any) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        mapped(message, **kwargs)
    return caught.value


def test_email_opened_from_the_spec_is_an_email_open_with_its_campaign_and_email_id() -> None:
    result = mapped(SPEC_EMAIL_OPENED)
    record = result.record
    assert record.type == "email_opened"
    assert record.lead.email == "pgibbons@initech.com"
    assert record.lead.external_id == "019mr8mf4r"  # the spec's snake-case user_id
    assert record.context.campaign == "New Customer Discount"
    assert record.context.content_id == "18vzF7u3z"
    assert record.context.source == "email"
    # The example has no timestamp: it happened when it was received.
    assert record.occurred_at == RECEIVED
    assert result.ignored == ()


def test_email_link_clicked_carries_the_link_as_the_touchpoint_url() -> None:
    record = mapped(SPEC_EMAIL_LINK_CLICKED).record
    assert record.type == "email_clicked"
    assert record.lead.email == "joanna@chotchkies.com"
    assert record.context.url == "https://www.buymyshirts.com?promo=NEWCUSTOMER"


def test_unsubscribed_and_a_spam_complaint_are_unsubscribes() -> None:
    assert mapped(SPEC_UNSUBSCRIBED).record.type == "unsubscribed"
    assert mapped(SPEC_UNSUBSCRIBED).record.context.content_id == "1425"
    spam = {**SPEC_EMAIL_BOUNCED, "event": "Email Marked as Spam"}
    assert mapped(spam).record.type == "unsubscribed"


def test_signed_up_takes_the_person_from_its_properties_and_reports_a_local_phone() -> None:
    result = mapped(SPEC_SIGNED_UP)
    record = result.record
    assert record.type == "form_submitted"
    assert record.context.form_id == "signup"
    assert record.lead.email == "pgibbons@initech.com"
    assert record.lead.profile() == {"first_name": "Peter", "last_name": "Gibbons",
                                     "title": "Mr"}
    # "410-555-9412" has no country code: not a person's number the contract can hold; the
    # record still applies and says what it left out.
    assert record.lead.phone is None
    assert result.ignored == ("properties.phone: not a person's phone number in "
                              "international (+country) form",)


def test_trial_started_is_a_trial_with_its_plan() -> None:
    record = mapped(SPEC_TRIAL_STARTED).record
    assert (record.type, record.context.content_id) == ("trial_started", "Business")
    assert record.lead.external_id == "019mr8mf4r"


def test_the_identify_example_links_its_ids_and_reports_a_three_letter_country() -> None:
    result = mapped(SPEC_IDENTIFY)
    record = result.record
    assert record.type == "identified"
    assert record.event_id == "022bb90c-bbac-11e4-8dfc-aa07a5b093db"
    assert record.occurred_at == datetime(2015, 2, 23, 22, 28, 55, 111000, tzinfo=UTC)
    assert (record.lead.email, record.lead.external_id, record.lead.anonymous_id) == (
        "peter@example.com", "97980cfea0067", "507f191e810c19729de860ea")
    assert result.ignored == ("traits.address.country: not an ISO 3166-1 alpha-2 country "
                              "code (like US or GB)",)


def test_identify_reads_company_traits_into_the_profile() -> None:
    message = {"type": "identify", "userId": "u1", "timestamp": "2026-03-01T00:00:00Z",
               "traits": {"email": "a@initech.com", "company": {"name": "Initech",
                                                                "employee_count": 20,
                                                                "industry": "Software"},
                          "address": {"country": "gb"}, "lastName": "Lumbergh"}}
    assert mapped(message).record.lead.profile() == {
        "company": "Initech", "employees": 20, "industry": "Software", "country": "GB",
        "last_name": "Lumbergh"}


@pytest.mark.parametrize(("message", "reason", "event"), [
    (SPEC_EMAIL_BOUNCED, "unmapped_event", "Email Bounced"),
    (SPEC_ACCOUNT_CREATED, "unmapped_event", "Account Created"),
    (SPEC_BATCH["batch"][1], "unmapped_event", "Song Played"),
    ({"type": "group", "userId": "u", "groupId": "g"}, "unsupported_call", "group"),
    ({"type": "alias", "userId": "u", "previousId": "p"}, "unsupported_call", "alias"),
    ({"type": "screen", "userId": "u", "name": "Home"}, "unsupported_call", "screen"),
    ({"type": "identify", "anonymousId": "cookie", "traits": {"plan": "pro"}},
     "anonymous_identify", "identify"),
])
def test_messages_no_rule_maps_are_unmapped_and_named(message: dict[str, Any], reason: str,
                                                       event: str) -> None:
    exc = refused(message)
    assert isinstance(exc, SegmentUnmapped)
    assert (exc.reason, exc.event) == (reason, event)


def test_event_names_match_whatever_their_case_and_separators() -> None:
    for name in ("email_opened", "EMAIL-OPENED", "  Email   Opened "):
        assert mapped({**SPEC_EMAIL_OPENED, "event": name}).record.type == "email_opened"


def test_conditions_and_rule_order_decide_the_type() -> None:
    text = default_rules_text() + """
[[segment.track]]
id = "demo-form"
event = ["Form Submitted"]
when = [{ path = "properties.form_id", equals = "demo" }]
type = "demo_requested"
"""
    # A rule further down never sees what an earlier rule already mapped: move it first.
    rules = parse_rules(text.replace('id = "seg-form-submitted"', 'id = "seg-form-any"'))
    segment = rules.segment.model_copy(update={"track": [rules.segment.track[-1],
                                                         *rules.segment.track[:-1]]})
    form = {"type": "track", "userId": "u1", "event": "Form Submitted",
            "timestamp": "2026-03-01T00:00:00Z", "properties": {"form_id": "demo"}}
    other = {**form, "properties": {"form_id": "contact-sales"}}
    assert parse_message(form, segment).record.type == "demo_requested"
    record = parse_message(other, segment).record
    assert (record.type, record.context.form_id) == ("form_submitted", "contact-sales")


def test_message_id_is_the_event_id_and_a_message_without_one_gets_a_stable_id() -> None:
    assert mapped(dated(SPEC_EMAIL_OPENED, "m-1", "2026-03-01T00:00:00Z")).record.event_id \
        == "m-1"
    first = mapped(SPEC_EMAIL_OPENED).record.event_id
    assert first.startswith("segment-")
    assert mapped(copy.deepcopy(SPEC_EMAIL_OPENED)).record.event_id == first
    later = mapped(SPEC_EMAIL_OPENED, received_at=datetime(2026, 3, 3, tzinfo=UTC))
    assert later.record.event_id != first  # another receipt of an undated message: new fact


def test_timestamp_is_occurred_at_and_a_file_message_without_a_time_is_rejected() -> None:
    record = mapped(dated(SPEC_TRIAL_STARTED, "t", "2026-03-01T10:00:00+02:00")).record
    assert record.occurred_at == datetime(2026, 3, 1, 8, tzinfo=UTC)
    exc = refused(SPEC_TRIAL_STARTED, received_at=None)
    assert (exc.reason, exc.field) == ("schema_violation", "timestamp")
    received = {**SPEC_TRIAL_STARTED, "receivedAt": "2026-02-01T00:00:00Z"}
    assert mapped(received, received_at=None).record.occurred_at == datetime(2026, 2, 1,
                                                                             tzinfo=UTC)


def test_a_rejection_names_the_segment_field_it_came_from() -> None:
    bad_email = copy.deepcopy(SPEC_EMAIL_OPENED)
    bad_email["context"]["traits"]["email"] = "pgibbons@@initech"
    exc = refused(bad_email)
    assert (exc.reason, exc.field) == ("invalid_identity", "context.traits.email")
    # The batch example's "2015-2-02" is not an RFC 3339 date.
    exc = refused(SPEC_BATCH["batch"][2])
    assert (exc.reason, exc.field) == ("schema_violation", "timestamp")
    exc = refused(dated(SPEC_EMAIL_OPENED, "x" * 201, "2026-03-01T00:00:00Z"))
    assert (exc.reason, exc.field) == ("value_too_long", "messageId")
    exc = refused(dated(SPEC_EMAIL_OPENED, "f", "2099-01-01T00:00:00Z"), now=RECEIVED)
    assert (exc.reason, exc.field) == ("timestamp_out_of_range", "timestamp")


@pytest.mark.parametrize(("message", "reason", "field"), [
    ([1, 2], "schema_violation", None),
    ({"userId": "u", "event": "Email Opened"}, "schema_violation", "type"),
    ({"type": "tweet", "userId": "u"}, "unknown_type", "type"),
    ({"type": "track", "userId": "u"}, "schema_violation", "event"),
    ({"type": "track", "userId": "u", "event": "Email Opened", "properties": [1]},
     "schema_violation", "properties"),
    ({"type": "track", "userId": {"id": 1}, "event": "Email Opened"}, "schema_violation",
     "userId"),
    ({"type": "track", "event": "Email Opened"}, "invalid_identity", "userId"),
])
def test_malformed_messages_are_rejected_with_a_reason(message: Any, reason: str,
                                                       field: str | None) -> None:
    exc = refused(message)
    assert not isinstance(exc, SegmentUnmapped)
    assert (exc.reason, exc.field) == (reason, field)


def test_lines_of_messages_parse_one_by_one_and_a_batch_envelope_is_named() -> None:
    lines = [(1, json.dumps(dated(SPEC_TRIAL_STARTED, "l1", "2026-03-01T00:00:00Z"))),
             (2, "not json"), (3, "   "), (4, json.dumps(SPEC_BATCH)),
             (5, json.dumps(SPEC_ACCOUNT_CREATED))]
    out = {n: result for n, _raw, result in parse_lines(lines, MAPPING, now=None)}
    assert isinstance(out[1], SegmentRecord)
    assert isinstance(out[2], RecordRejected) and out[2].reason == "malformed_json"
    assert 3 not in out
    assert isinstance(out[4], RecordRejected) and out[4].field == "batch"
    assert isinstance(out[5], SegmentUnmapped)


def test_a_journey_of_segment_calls_ends_with_the_expected_score() -> None:
    app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    results = []
    for message in journey():
        try:
            results.append(mapped(message).record)
        except SegmentUnmapped as exc:
            assert exc.event == "Account Created"
    outcome = app.apply_batch(results)
    assert all(r.outcome is Outcome.APPLIED for r in outcome.results)
    view = app.lead(f"email:{JOURNEY_EMAIL}", at=datetime.fromisoformat(JOURNEY_AT))
    assert view.score == pytest.approx(JOURNEY_SCORE)
    assert view.fit == pytest.approx(25)
    assert {c.rule for c in view.breakdown} == {
        "title-executive", "size-11-50", "country-target", "pricing-page", "email-open",
        "email-click", "contact-form", "trial-start"}
    assert (view.stage, view.owner) == ("mql", "rep-b")
    assert "anonymous_id:cookie-77" in view.identities
    # Re-sent, every message is a duplicate.
    again = app.apply_batch(results)
    assert all(r.outcome is Outcome.DUPLICATE for r in again.results)


def test_identified_records_need_a_person_and_score_no_engagement() -> None:
    from leadflow.contract import parse_record

    with pytest.raises(RecordRejected):
        parse_record(json.dumps({"event_id": "i", "type": "identified",
                                 "occurred_at": "2026-03-01T00:00:00Z",
                                 "lead": {"anonymous_id": "c"}}))
    app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    record = mapped(dated({"type": "identify", "userId": "u9",
                           "traits": {"email": "cfo@initech.com", "title": "CFO"}},
                          "i1", "2026-03-01T00:00:00Z")).record
    app.apply_batch([record])
    view = app.lead("email:cfo@initech.com")
    assert (view.fit, view.engagement, view.touchpoints) == (15, 0, 0)


def test_the_segment_section_is_validated_with_the_field_named() -> None:
    with pytest.raises(RulesError, match=r"segment\.track\.0\.type"):
        parse_rules('[[segment.track]]\nid = "x"\nevent = ["A"]\ntype = "tweeted"\n')
    with pytest.raises(RulesError, match=r"segment\.context\.url\.0"):
        parse_rules('[segment.context]\nurl = ["properties..url"]\n')
    with pytest.raises(RulesError, match="unique"):
        parse_rules('[[segment.page]]\nid = "p"\ntype = "page_viewed"\n'
                    '[[segment.page]]\nid = "p"\ntype = "page_viewed"\n')


def test_a_rules_file_without_a_segment_section_gets_the_built_in_mapping() -> None:
    rules = parse_rules('label = "mine"\n')
    assert rules.segment == default_rules().segment


def test_the_segment_mapping_is_not_part_of_the_rules_version() -> None:
    text = default_rules_text()
    edited = parse_rules(text.replace('user_id_prefix = ""', 'user_id_prefix = "app:"'))
    assert edited.segment.user_id_prefix == "app:"
    assert edited.version == default_rules().version


@pytest.mark.parametrize(("data", "reason"), [
    (b"1e400", "number_out_of_range"),
    (b"[" * 300 + b"]" * 300, "nesting_too_deep"),
    (b'{"a": NaN}', "malformed_json"),
    (b'"\\ud800"', "malformed_json"),
    (b"[" + b"9" * 30 + b"]", "number_out_of_range"),
])
def test_documents_are_loaded_with_the_contracts_bounds(data: bytes, reason: str) -> None:
    with pytest.raises(RecordRejected) as caught:
        load_json(data)
    assert caught.value.reason == reason


def test_a_full_name_trait_gives_first_and_last_names_but_a_property_name_does_not() -> None:
    assert mapped(SPEC_IDENTIFY).record.lead.profile() == {"first_name": "Peter",
                                                           "last_name": "Gibbons"}
    both = copy.deepcopy(SPEC_IDENTIFY)
    both["traits"]["firstName"] = "Pete"
    assert mapped(both).record.lead.profile() == {"first_name": "Pete"}
    form = {"type": "track", "event": "Form Submitted", "userId": "u1",
            "timestamp": "2026-03-01T00:00:00Z",
            "properties": {"name": "Contact us", "email": "f@initech.com"}}
    assert mapped(form).record.lead.profile() == {}
