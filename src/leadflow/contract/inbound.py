"""Inbound contract v1: raw bytes to a validated record, or a named rejection.

Parsing is a boundary concern: :func:`parse_record` turns raw bytes into a validated
:class:`~leadflow.contract.models.InboundRecord` (the models, and the bounds they enforce,
are in contract/models.py) or raises :class:`RecordRejected` naming the problem, so a caller
(the CLI's ingest, the Kafka consumer) can dead-letter the record with a reason.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from leadflow.contract.models import (
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_OLDEST,
    LATEST,
    SCHEMA_VERSION,
    Context,
    Deal,
    InboundRecord,
    LeadRef,
)


class RecordRejected(Exception):
    """A record that cannot be applied.

    ``reason`` is a short machine-readable code (the table in the README), ``detail`` says
    what is wrong in words, ``field`` names the offending field (``lead.email``) when one is
    to blame.
    """

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field



_BOM = b"\xef\xbb\xbf"
# Byte signatures of inputs that are not UTF-8 JSON at all, named so the producer knows why.
_SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed data; decompress it first"),
    (b"\xff\xfe", "UTF-16 (little-endian) text; send UTF-8"),
    (b"\xfe\xff", "UTF-16 (big-endian) text; send UTF-8"),
    (b"PK\x03\x04", "a ZIP archive; extract it first"),
)


def decode_record(raw: bytes | str | None, *,
                  max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    """The record's UTF-8 bytes without a leading BOM, or :class:`RecordRejected`.

    Bounds the input before any parsing: a record over ``max_bytes`` is never parsed.
    """
    if raw is None:  # a Kafka tombstone
        raise RecordRejected("empty_record", "the message has no value (a tombstone)")
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise RecordRejected("record_too_large",
                             f"more than {max_bytes:,} bytes, the limit "
                             "(LEADFLOW_MAX_RECORD_BYTES)")
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    for signature, what in _SIGNATURES:
        if data.startswith(signature):
            raise RecordRejected("malformed_encoding", f"the record is {what}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordRejected(
            "malformed_encoding",
            f"not UTF-8: byte {data[exc.start]:#04x} at offset {exc.start} ({exc.reason})",
        ) from None
    if not data.strip():
        raise RecordRejected("empty_record", "the record is empty")
    return data


def parse_record(
    raw: bytes | str | None,
    *,
    now: datetime | None = None,
    max_future_skew: timedelta = timedelta(minutes=5),
    oldest: datetime = DEFAULT_OLDEST,
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> InboundRecord:
    """Decode and validate one record, or raise :class:`RecordRejected` -- nothing else.

    Total over every input: bytes that are not UTF-8, not JSON, nested too deep, numbers out
    of range, control characters, times that overflow at their offset all become a
    rejection with a reason and the field. ``now`` is the receiving system's clock; it only
    bounds how far in the future a record may claim to be. Pass ``None`` to skip that check
    (replays of archived files).
    """
    data = decode_record(raw, max_bytes=max_bytes)
    try:
        # pydantic's JSON parser (jiter): no intermediate dict, depth-limited, finite
        # numbers only, refuses lone surrogates.
        record = InboundRecord.model_validate_json(data)
    except ValidationError as exc:
        raise _rejection(exc) from None
    except Exception as exc:  # pragma: no cover -- no known input gets here
        # A validator raising outside pydantic's error model is still this record's problem,
        # never a crash of the path reading it: rejected with the error named.
        raise RecordRejected("schema_violation", f"{type(exc).__name__}: {exc}") from exc
    if record.occurred_at < oldest:
        raise RecordRejected(
            "timestamp_out_of_range",
            f"occurred_at {record.occurred_at.isoformat()} is before {oldest.isoformat()}",
            "occurred_at",
        )
    if now is not None and record.occurred_at > now + max_future_skew:
        raise RecordRejected(
            "timestamp_out_of_range",
            f"occurred_at {record.occurred_at.isoformat()} is in the future "
            f"(more than {max_future_skew} after {now.isoformat()})",
            "occurred_at",
        )
    return record


T = TypeVar("T")


def parse_lines(
    lines: Iterable[tuple[int, bytes | str]],
    *,
    now: datetime | None,
    max_future_skew: timedelta = timedelta(minutes=5),
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[tuple[int, bytes, InboundRecord | RecordRejected]]:
    """Numbered JSONL lines -> (line number, raw bytes, record or the rejection).

    Blank lines are skipped; the raw bytes are the line without its line ending.
    """
    return parse_numbered(lines, lambda data: parse_record(
        data, now=now, max_future_skew=max_future_skew, max_bytes=max_bytes))


def parse_numbered(lines: Iterable[tuple[int, bytes | str]], parse: Callable[[bytes], T]
                   ) -> Iterator[tuple[int, bytes, T | RecordRejected]]:
    """Numbered lines -> (line number, raw bytes, ``parse(raw)`` or its RecordRejected), for
    every line format (contract v1, Segment): blank lines skipped, line endings dropped."""
    for line_no, raw in lines:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        data = data.rstrip(b"\r\n")
        if not data.strip():
            continue
        try:
            yield line_no, data, parse(data)
        except RecordRejected as exc:
            yield line_no, data, exc


# pydantic error types -> reason codes. Anything else is a schema violation.
_NUMBER_ERRORS = frozenset({
    "finite_number", "decimal_max_digits", "decimal_max_places", "decimal_whole_digits",
    "less_than_equal", "less_than", "greater_than_equal", "greater_than",
})
_IDENTITY_FIELDS = frozenset({"email", "phone", "external_id", "anonymous_id"})


def _forbidden(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf")


def _rejection(exc: ValidationError) -> RecordRejected:
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"type": "", "loc": (), "msg": str(exc)}
    return RecordRejected(_reason(first), _describe(errors),
                          ".".join(str(p) for p in first.get("loc", ())) or None)


def _reason(err: Any) -> str:
    kind: str = err.get("type", "")
    loc: tuple[Any, ...] = tuple(err.get("loc", ()))
    msg: str = err.get("msg", "")
    if kind == "json_invalid":
        if "recursion limit" in msg:
            return "nesting_too_deep"
        if "number out of range" in msg:
            return "number_out_of_range"
        return "malformed_json"
    if kind == "model_type" and not loc:
        return "schema_violation"
    if loc == ("type",) and kind == "literal_error" and isinstance(err.get("input"), str):
        return "unknown_type"
    if loc[:2] == ("context", "properties"):
        if kind == "too_long" and len(loc) == 2:
            return "value_too_long"  # more than MAX_PROPERTIES properties
        if loc[-1:] == ("[key]",) and kind == "string_pattern_mismatch":
            # A key may only hold letters, digits, _ and -: a control or invisible character
            # is named as such, anything else (a space, a dot) is the schema's.
            key = err.get("input")
            return "forbidden_character" if isinstance(key, str) and any(
                _forbidden(ch) for ch in key) else "schema_violation"
    if kind == "string_pattern_mismatch":
        # Every text field's pattern only excludes characters; the country and currency
        # codes have shape patterns of their own.
        return "schema_violation" if loc[-1:] in (("country",), ("currency",)) \
            else "forbidden_character"
    if kind == "timestamp_out_of_range":
        return "timestamp_out_of_range"
    if kind in _NUMBER_ERRORS:
        return "number_out_of_range"
    if kind == "string_too_long":
        return "value_too_long"
    if loc[:1] == ("lead",) and ((loc[1:2] and loc[1] in _IDENTITY_FIELDS)
                                 or (len(loc) == 1 and "identity" in msg)):
        return "invalid_identity"
    return "schema_violation"


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors[:10]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "record"
        message = err.get("msg", "invalid")
        value = err.get("input")
        if _reason(err) == "forbidden_character" and isinstance(value, str):
            # The pattern itself is unreadable; name the character and where it is.
            at = next((i for i, ch in enumerate(value) if _forbidden(ch)), None)
            message = "contains a control or invisible formatting character" + (
                f" (U+{ord(value[at]):04X} at position {at})" if at is not None else "")
        parts.append(f"{where}: {message}")
    if len(errors) > 10:
        parts.append(f"... and {len(errors) - 10} more")
    return "; ".join(parts)


def inbound_json_schema() -> dict[str, Any]:
    """The published JSON Schema of the inbound record (v1)."""
    schema = InboundRecord.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# The models are the contract's too: importable from here, where callers found them.
__all__ = ["DEFAULT_MAX_RECORD_BYTES", "DEFAULT_OLDEST", "LATEST", "SCHEMA_VERSION", "Context",
           "Deal", "InboundRecord", "LeadRef", "RecordRejected", "decode_record",
           "inbound_json_schema", "parse_lines", "parse_numbered", "parse_record"]
