"""The rebuild's fast path reads stored fields exactly as attribute reads did.

``EventData`` keeps each untagged field in the instance after its first read and shares
parsed times between readers; ``fields`` reads several at once. Both must give what a plain
attribute read gives: the same values, the same text cleaning, the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

from leadflow.projections.events import EventData, fields, touchpoint_fields

LEAD = UUID("00000000-0000-4000-8000-00000000000a")

_TRANSCODER = JSONTranscoder()
for _transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
    _TRANSCODER.register(_transcoding)


def stored(**payload: object) -> EventData:
    return EventData(LEAD, orjson.loads(_TRANSCODER.encode(payload)), _TRANSCODER.names)


def test_fields_read_together_equal_the_attributes_read_one_by_one() -> None:
    at = datetime(2026, 1, 5, 18, 42, 27, tzinfo=UTC)
    payload = {
        "awards": [{"rule": "blog\x00post", "points": 2.0, "at": at, "event_id": "e1",
                    "expires_at": None}],
        "rules_version": "r-1", "engagement_value": 13.5, "engagement_as_of": at,
        "occurred_at": datetime(2026, 1, 5, 19, tzinfo=timezone(timedelta(hours=1))),
        "account_id": UUID("00000000-0000-4000-8000-0000000000ac"),
    }
    names = ("awards", "rules_version", "engagement_value", "engagement_as_of",
             "occurred_at", "account_id")
    one_by_one = stored(**payload)
    together = stored(**payload)
    expected = [getattr(one_by_one, name) for name in names]
    assert fields(together, names) == expected
    assert [getattr(together, name) for name in names] == expected  # kept, not re-read
    assert expected[0][0]["rule"] == "blog\ufffdpost"  # text cleaned as the column holds it
    assert expected[0][0]["at"] == at and expected[0][0]["at"].tzinfo is not None
    assert expected[4] == datetime(2026, 1, 5, 18, tzinfo=UTC)
    assert expected[5] == UUID("00000000-0000-4000-8000-0000000000ac")


def test_a_time_without_zone_reads_as_utc_and_a_missing_field_raises_attribute_error() -> None:
    event = EventData(LEAD, {"occurred_at": {"_type_": "datetime_iso",
                                             "_data_": "2026-02-01T10:00:00"}},
                      _TRANSCODER.names)
    assert event.occurred_at == datetime(2026, 2, 1, 10, tzinfo=UTC)
    with pytest.raises(AttributeError, match="reason"):
        fields(event, ("occurred_at", "reason"))
    with pytest.raises(AttributeError, match="reason"):
        _ = event.reason


def test_fields_of_an_event_the_library_decoded_are_its_attributes() -> None:
    class Decoded:
        rules_version = "r-2"
        engagement_value = 1.0

    assert fields(Decoded(), ("rules_version", "engagement_value")) == ["r-2", 1.0]


def attribute_reads(event: EventData) -> tuple[object, ...]:
    """A touchpoint's fields as its handler read them before the in-place reading: every
    field first, then each award's as its ledger rows were made."""
    awards, *rest = fields(event, ("awards", "rules_version", "engagement_value",
                                   "engagement_as_of", "occurred_at"))
    return ([(a["event_id"], a["rule"], a["points"], a["at"], a.get("expires_at"))
             for a in awards], *rest)


def touchpoint(awards: list[dict[str, object]], **fields: object) -> dict[str, object]:
    at = datetime(2026, 1, 5, 18, 42, 27, tzinfo=UTC)
    payload: dict[str, object] = {
        "event_id": "e1", "awards": awards, "rules_version": "r-1", "engagement_value": 13.5,
        "engagement_as_of": at, "occurred_at": at, "score": 40.0}
    payload.update(fields)
    return payload


def test_a_touchpoint_read_in_place_equals_its_attributes_read_one_by_one() -> None:
    at = datetime(2026, 1, 5, 18, 42, 27, tzinfo=UTC)
    plain = [{"rule": "form", "points": 15.0, "at": at, "event_id": "e1", "expires_at": None},
             {"rule": "visit", "points": 2, "at": at, "event_id": "e1",
              "expires_at": at + timedelta(days=30)}]
    irregular = [
        *plain,
        {"rule": "blog\x00post", "points": 2.0, "at": at, "event_id": "e1", "expires_at": None},
        {"rule": "no-expiry", "points": 1.0, "at": at, "event_id": "e1"},
        {"rule": "extra", "points": 1.0, "at": at, "event_id": "e1", "expires_at": None,
         "note": "x"},
        {"rule": "naive", "points": 1.0, "at": datetime(2026, 1, 5), "event_id": None,
         "expires_at": None},
    ]
    for payload in (touchpoint(plain), touchpoint(irregular), touchpoint([]),
                    touchpoint(plain, occurred_at=None, engagement_as_of=None),
                    touchpoint(plain, rules_version="r\x00", engagement_value="12")):
        read = touchpoint_fields(stored(**payload))
        assert (list(read[0]), *read[1:]) == attribute_reads(stored(**payload))
    read = touchpoint_fields(stored(**touchpoint(irregular)))
    assert [row[1] for row in read[0]][2:] == ["blog\ufffdpost", "no-expiry", "extra", "naive"]


def failure(read: Callable[[], object]) -> str:
    with pytest.raises(Exception) as caught:
        read()
    return repr(caught.value)


def test_a_touchpoint_that_cannot_be_read_fails_as_its_attribute_reads_did() -> None:
    at = datetime(2026, 1, 5, 18, 42, 27, tzinfo=UTC)
    no_rule = [{"points": 1.0, "at": at, "event_id": "e1", "expires_at": None}]
    bad_award = [{"rule": "r", "points": 1.0, "at": "2026-13-45T00:00:00",
                  "event_id": "e1", "expires_at": None}]
    cases = []
    for awards, changes in ((no_rule, {"occurred_at": None}), (no_rule, {}),
                            (bad_award, {"rules_version": None}),
                            ([], {"occurred_at": "not-a-time"})):
        payload = orjson.loads(_TRANSCODER.encode(touchpoint(awards)))
        for name, value in changes.items():
            if value is None:
                del payload[name]  # a missing field
            else:
                payload[name] = {"_type_": "datetime_iso", "_data_": value}
        for award in payload["awards"]:
            if award["at"] == "2026-13-45T00:00:00":
                award["at"] = {"_type_": "datetime_iso", "_data_": award["at"]}

        def in_place(data: dict[str, object] = payload) -> object:
            read = touchpoint_fields(EventData(LEAD, data, _TRANSCODER.names))
            return list(read[0])  # the awards are indexed as the ledger takes them

        def one_by_one(data: dict[str, object] = payload) -> object:
            return attribute_reads(EventData(LEAD, data, _TRANSCODER.names))

        cases.append(failure(in_place))
        assert cases[-1] == failure(one_by_one)
    assert cases == ["AttributeError('occurred_at')", "KeyError('rule')",
                     "ValueError('month must be in 1..12')",
                     "ValueError(\"Invalid isoformat string: 'not-a-time'\")"]
