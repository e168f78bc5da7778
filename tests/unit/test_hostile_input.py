"""The record parser is total: any bytes become a record or a named rejection, nothing else."""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadflow.contract import RecordRejected, inbound_json_schema, parse_record
from leadflow.engine.batch import record_digest
from tests.hostile_corpus import CASES, Case, record

NOW = datetime(2026, 3, 3, tzinfo=UTC)
# Reasons decided after parsing, by the engine: the parser must let these records through.
ENGINE_OUTCOMES = {"applied", "duplicate", "event_id_conflict", "unknown_lead", "unknown_rep"}


def test_the_corpus_has_at_least_60_hostile_cases_over_every_class() -> None:
    hostile = [c for c in CASES if c.expect not in ("applied", "duplicate")]
    assert len(hostile) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    assert set(Counter(c.expect for c in hostile)) >= {
        "malformed_encoding", "malformed_json", "schema_violation", "record_too_large",
        "nesting_too_deep", "number_out_of_range", "timestamp_out_of_range",
        "forbidden_character", "invalid_identity", "value_too_long", "unknown_type",
        "event_id_conflict", "unknown_lead", "unknown_rep"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_hostile_record_is_refused_with_its_reason_and_field(case: Case) -> None:
    if case.expect in ENGINE_OUTCOMES:
        parse_record(case.raw, now=NOW)
        return
    with pytest.raises(RecordRejected) as caught:
        parse_record(case.raw, now=NOW)
    assert caught.value.reason == case.expect, caught.value.detail
    assert caught.value.detail
    if "Invalid JSON" in caught.value.detail:
        # Refused by the JSON parser, before any field exists: the place is named instead.
        assert "column" in caught.value.detail
    elif case.expect in ("forbidden_character", "number_out_of_range", "invalid_identity",
                         "timestamp_out_of_range", "value_too_long"):
        assert caught.value.field, f"{case.name}: no field named"


def test_a_forbidden_character_is_named_with_its_code_point_and_position() -> None:
    raw = json.dumps(record("e1", lead={"email": "a@acme.io", "company": "Acme\u0000Corp"}))
    with pytest.raises(RecordRejected) as caught:
        parse_record(raw)
    assert caught.value.field == "lead.company"
    assert "U+0000 at position 4" in caught.value.detail


def test_the_published_schema_states_the_bounds() -> None:
    schema = json.dumps(inbound_json_schema())
    for bound in ('"maxLength": 500', '"maxLength": 320', '"maximum": 10000000',
                  "u0000-\\\\u001f", "1 MiB", "2200-01-01"):
        assert bound in schema, bound


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_a_record_or_a_rejection(raw: bytes) -> None:
    try:
        parse_record(raw, now=NOW)
    except RecordRejected as exc:
        assert exc.reason and exc.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=50) | st.decimals(allow_nan=False).map(str),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
FIELDS = ["event_id", "type", "occurred_at", "lead", "context", "actor", "owner", "reason",
          "deal", "schema_version"]
LEAD_FIELDS = ["email", "phone", "external_id", "anonymous_id", "first_name", "company",
               "employees", "annual_revenue", "country", "title"]


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_arbitrary_json_values_are_a_record_or_a_rejection(value: Any) -> None:
    try:
        parse_record(json.dumps(value, allow_nan=True), now=NOW)
    except RecordRejected as exc:
        assert exc.reason


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(FIELDS), json_values, st.sampled_from(LEAD_FIELDS), json_values)
def test_a_valid_record_with_any_field_replaced_is_a_record_or_a_rejection(
        field: str, value: Any, lead_field: str, lead_value: Any) -> None:
    data = record("fuzz", lead={"email": "anna@acme.io"})
    data[field] = value
    if isinstance(data.get("lead"), dict):
        data["lead"] = {**data["lead"], lead_field: lead_value}
    try:
        parsed = parse_record(json.dumps(data, allow_nan=True, ensure_ascii=False)
                              .encode("utf-8", "surrogatepass"), now=NOW)
    except RecordRejected as exc:
        assert exc.reason
    else:
        # What gets in is finite, free of control characters and inside the time range.
        _assert_storable(parsed.model_dump())
        assert datetime(2000, 1, 1, tzinfo=UTC) <= parsed.occurred_at <= NOW
        # The stored record-id digest (duplicate or conflict?) must keep its definition: a
        # digest of the record's JSON dump, whatever way it is computed.
        assert record_digest(parsed) == hashlib.sha256(
            parsed.model_dump_json().encode()).digest()[:16]


def _assert_storable(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _assert_storable(item)
    elif isinstance(value, (float, Decimal)):
        assert math.isfinite(value)
    elif isinstance(value, str):
        # Only a free-text reason may keep line breaks and tabs.
        assert not any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r"
                       for ch in value), value
