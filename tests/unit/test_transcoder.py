"""The orjson transcoder writes exactly the library's JSON format."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow.store.transcoder import OrjsonTranscoder, isoformat


def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


LIBRARY = registered(JSONTranscoder())
FAST = registered(OrjsonTranscoder())

zones = st.sampled_from([UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-5))])
times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=zones)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
           | st.uuids() | times | st.decimals(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda inner: (
    st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
states = st.dictionaries(st.text(max_size=12), values, max_size=8)


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def encodable(state: dict[str, Any]) -> bool:
    try:
        LIBRARY.encode(state)
    except (UnicodeEncodeError, ValueError):
        return False  # lone surrogates: neither transcoder can write them
    return True


@settings(max_examples=300)
@given(states)
def test_both_transcoders_read_what_either_wrote(state: dict[str, Any]) -> None:
    if not encodable(state):
        with pytest.raises((UnicodeEncodeError, ValueError)):
            FAST.encode(state)
        return
    fast, library = FAST.encode(state), LIBRARY.encode(state)
    for data in (fast, library):
        assert same(FAST.decode(data), LIBRARY.decode(data))
    assert same(LIBRARY.decode(fast), LIBRARY.decode(library))


def test_the_bytes_are_the_librarys_format() -> None:
    at = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    lead = UUID(int=10)
    state = {"lead_id": lead, "occurred_at": at, "awards": [{"points": 1.5, "at": at}],
             "amount": Decimal("12.50"), "note": "Grüße"}
    assert json.loads(FAST.encode(state)) == json.loads(LIBRARY.encode(state)) == {
        "lead_id": {"_type_": "uuid_hex", "_data_": lead.hex},
        "occurred_at": {"_type_": "datetime_iso", "_data_": at.isoformat()},
        "awards": [{"points": 1.5, "at": {"_type_": "datetime_iso", "_data_": at.isoformat()}}],
        "amount": {"_type_": "decimal_str", "_data_": "12.50"}, "note": "Grüße"}


@settings(max_examples=500)
@given(st.datetimes(timezones=st.none() | zones | st.timezones()))
def test_a_time_is_written_as_isoformat_writes_it(value: datetime) -> None:
    # Any year, any microsecond, any zone (UTC's go through orjson and the cache), twice:
    # the cached text is the same.
    assert isoformat(value) == value.isoformat()
    assert isoformat(value) == value.isoformat()


def test_equal_times_in_other_zones_keep_their_own_text() -> None:
    # The same instant in two zones is one dict key: only UTC's own times are cached.
    utc = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert utc == paris
    assert (isoformat(utc), isoformat(paris)) == (utc.isoformat(), paris.isoformat())
    assert json.loads(FAST.encode({"a": utc, "b": paris})) == {
        "a": {"_type_": "datetime_iso", "_data_": "2026-03-02T09:30:00+00:00"},
        "b": {"_type_": "datetime_iso", "_data_": "2026-03-02T10:30:00+01:00"}}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 2**70, -(2**70)])
def test_values_orjson_writes_otherwise_go_through_the_library(value: Any) -> None:
    # orjson writes a non-finite float as null and refuses big integers: the library writes
    # NaN, Infinity and the digits, and both read that back.
    data = FAST.encode({"x": value})
    assert data == LIBRARY.encode({"x": value})
    assert same(FAST.decode(data)["x"], value)


def test_an_unregistered_type_is_refused_as_by_the_library() -> None:
    with pytest.raises(TranscodingNotRegisteredError):
        FAST.encode({"x": object()})
    with pytest.raises(TranscodingNotRegisteredError):
        FAST.decode(b'{"x": {"_type_": "nope", "_data_": 1}}')


def test_a_transcoding_registered_in_place_of_the_librarys_is_the_one_used() -> None:
    # Times and ids are tagged without the transcoding's call only for the library's own
    # transcodings: another one registered for the type (here a subclass) is called.
    class Minutes(DatetimeAsISO):
        def encode(self, obj: datetime) -> str:
            return obj.isoformat(timespec="minutes")

    at = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)
    custom = registered(OrjsonTranscoder())
    custom.register(Minutes())
    library = registered(JSONTranscoder())
    library.register(Minutes())
    state = {"at": at, "nested": [{"at": at}]}
    assert json.loads(custom.encode(state)) == json.loads(library.encode(state))
    assert json.loads(custom.encode(state))["at"]["_data_"] == "2026-03-02T09:30+00:00"
