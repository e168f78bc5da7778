"""Identity normalisation and the inbound contract, including the published schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from leadflow.contract import RecordRejected, parse_record
from leadflow.contract.identity import InvalidIdentityError, normalise_email, normalise_phone
from leadflow.contract.models import Context
from leadflow.contract.schemas import all_schemas, render

ROOT = Path(__file__).resolve().parents[2]


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalise_email("  John.Doe@Example.COM ") == "john.doe@example.com"


@pytest.mark.parametrize("bad", ["bob@@x.com", "no-at-sign", "a@b", "@example.com", "a b@c.io"])
def test_an_invalid_email_is_refused_with_a_named_error(bad: str) -> None:
    with pytest.raises(InvalidIdentityError, match="invalid email"):
        normalise_email(bad)


def test_phone_is_normalised_to_e164() -> None:
    assert normalise_phone("+44 20 7946 0958") == "+442079460958"
    assert normalise_phone("+7 (912) 345-67-89") == "+79123456789"


@pytest.mark.parametrize("bad", ["12345", "+1 000 000 0000", "not a phone", "+44 800 123 4567"])
def test_an_invalid_or_company_phone_is_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentityError, match="invalid phone"):
        normalise_phone(bad)


def good_line(**overrides: object) -> str:
    data: dict[str, object] = {
        "event_id": "e1", "type": "email_opened", "occurred_at": "2026-03-02T12:00:00+03:00",
        "lead": {"email": "A@B.io"},
    }
    data.update(overrides)
    return json.dumps(data)


def test_a_valid_record_is_normalised_to_utc_and_lower_case_email() -> None:
    record = parse_record(good_line())
    assert record.occurred_at.isoformat() == "2026-03-02T09:00:00+00:00"
    assert record.lead.email == "a@b.io"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"event_id": "e1", "type": ', "malformed_json"),
        ("[1, 2]", "schema_violation"),
        (good_line(type="tweet_liked"), "unknown_type"),
        (good_line(lead={"email": "bob@@x"}), "invalid_identity"),
        (good_line(lead={"phone": "12"}), "invalid_identity"),
        (good_line(lead={}), "invalid_identity"),
        (good_line(occurred_at="2026-03-02T12:00:00"), "schema_violation"),
        (good_line(occurred_at="1970-01-01T00:00:00Z"), "timestamp_out_of_range"),
        (good_line(lead={"email": "a@b.io", "employees": "many"}), "schema_violation"),
        (good_line(unexpected="x"), "schema_violation"),
        (good_line(type="converted"), "schema_violation"),
        (good_line(type="owner_assigned"), "schema_violation"),
        (good_line(schema_version=2), "schema_violation"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(RecordRejected) as caught:
        parse_record(raw)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_a_record_from_the_far_future_is_rejected_relative_to_the_receivers_clock() -> None:
    from datetime import UTC, datetime

    line = good_line(occurred_at="2099-01-01T00:00:00Z")
    with pytest.raises(RecordRejected) as caught:
        parse_record(line, now=datetime(2026, 3, 2, tzinfo=UTC))
    assert caught.value.reason == "timestamp_out_of_range"
    assert parse_record(line).event_id == "e1"  # archives replayed without a clock pass


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_published_schema_files_match_the_models(name: str) -> None:
    path = ROOT / "schemas" / name
    assert path.exists(), f"{path} missing: run `leadflow schemas export`"
    assert path.read_text(encoding="utf-8") == render(all_schemas()[name]), (
        f"{path} is out of date: run `leadflow schemas export`"
    )


_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1,
                max_size=20)
_SCALAR = st.one_of(st.booleans(), st.integers(-(2**53), 2**53),
                    st.floats(allow_nan=False, allow_infinity=False), _TEXT)


@given(st.fixed_dictionaries({}, optional={
    "source": _TEXT, "campaign": _TEXT, "url": _TEXT, "content_id": _TEXT, "form_id": _TEXT,
    "landing_page": _TEXT,
    "properties": st.dictionaries(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,10}",
                                                fullmatch=True), _SCALAR, max_size=5)}))
def test_a_contexts_dict_is_its_model_dump(fields: dict[str, object]) -> None:
    # The record path reads a touchpoint's context with as_dict (the serializer cost more
    # than the rest of the touchpoint's scoring); it must be model_dump(exclude_none=True).
    try:
        context = Context.model_validate(fields)
    except ValidationError:
        return
    dumped = context.as_dict()
    assert dumped == context.model_dump(exclude_none=True)
    assert [type(v) for v in dumped.values()] == [
        type(v) for v in context.model_dump(exclude_none=True).values()]
    if "properties" in dumped:  # a copy: the event's context never aliases the record's
        assert dumped["properties"] is not context.properties
