"""The rebuild's fast path reads stored fields exactly as attribute reads did.

``EventData`` keeps each untagged field in the instance after its first read and shares
parsed times between readers; ``fields`` reads several at once. Both must give what a plain
attribute read gives: the same values, the same text cleaning, the same errors.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

from leadflow.projections.events import EventData, fields

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
