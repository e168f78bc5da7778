"""Inbound contract v1: what upstream tracking systems publish, one JSON object per record.

The pydantic models here are the single source of truth; ``schemas/*.json`` are generated
from them (``leadflow schemas export``) and a test fails when the files drift.

Parsing is a boundary concern: :func:`parse_record` turns raw bytes into a validated
:class:`InboundRecord` or raises :class:`RecordRejected` naming the problem, so a caller
(the CLI's ingest, the Kafka consumer) can dead-letter the record with a reason.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from leadflow.contract.identity import InvalidIdentityError, normalise_email, normalise_phone
from leadflow.domain.vocabulary import (
    TOUCHPOINT_TYPES,
    RecordType,
)

SCHEMA_VERSION = 1


# Bounds every path enforces before a record reaches the engine (see README "Bounds"). Text
# may not carry control characters: PostgreSQL text cannot hold NUL, and a tab or escape in a
# name or id is a producer bug or an attack, never data. Identities additionally refuse
# invisible format characters (zero-width, bidi overrides): they make two keys that look
# the same and are not.
_NO_CONTROLS = r"^[^\u0000-\u001f\u007f-\u009f]*$"
_NO_CONTROLS_OR_FORMAT = (r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f"
                          r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*$")
# Free text from a person (a disqualification reason) may span lines and use tabs.
_FREE_TEXT = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"

ShortText = Annotated[str, Field(min_length=1, max_length=500, pattern=_NO_CONTROLS)]
IdentityText = Annotated[str, Field(min_length=1, max_length=320, pattern=_NO_CONTROLS_OR_FORMAT)]
FreeText = Annotated[str, Field(min_length=1, max_length=2000, pattern=_FREE_TEXT)]
# Money and revenue: finite, at most 10^13 (ten trillion), 4 decimal places. "1e400" is refused
# here rather than becoming an infinity that no read model can show.
MAX_AMOUNT = Decimal(10) ** 13
Amount = Annotated[Decimal, Field(ge=0, le=MAX_AMOUNT, max_digits=18, decimal_places=4,
                                  allow_inf_nan=False)]

#: Largest record accepted on any path, in bytes (``LEADFLOW_MAX_RECORD_BYTES``).
DEFAULT_MAX_RECORD_BYTES = 1 << 20
#: Event times outside [2000-01-01, 2200-01-01) are refused whatever the clock says: beyond
#: them, decay and timer arithmetic would leave the range of a datetime.
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class _Frozen(BaseModel):
    # extra="forbid": a misspelt field is a producer bug we want to surface, not ignore.
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class LeadRef(_Frozen):
    """Who the record is about: at least one identity, optionally profile fields."""

    email: IdentityText | None = None
    phone: IdentityText | None = None
    external_id: IdentityText | None = None
    anonymous_id: IdentityText | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    company: ShortText | None = None
    title: ShortText | None = None
    industry: ShortText | None = None
    employees: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    annual_revenue: Amount | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = Field(
        default=None, description="ISO 3166-1 alpha-2 country code"
    )

    @field_validator("email", "phone")
    @classmethod
    def _identity_reaches_a_person(cls, value: str | None,
                                   info: ValidationInfo) -> str | None:
        """An email must look like one; a phone must be a person's number (E.164)."""
        if value is None:
            return None
        normalise = normalise_email if info.field_name == "email" else normalise_phone
        try:
            return normalise(value)
        except InvalidIdentityError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("country")
    @classmethod
    def _country_upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _at_least_one_identity(self) -> LeadRef:
        if not (self.email or self.phone or self.external_id or self.anonymous_id):
            raise ValueError(
                "lead needs at least one identity: email, phone, external_id or anonymous_id"
            )
        return self

    def profile(self) -> dict[str, Any]:
        """Profile fields present on this record (identities excluded)."""
        fields = ("first_name", "last_name", "company", "title", "industry", "employees",
                  "annual_revenue", "country")
        out: dict[str, Any] = {}
        for name in fields:
            value = getattr(self, name)
            if value is not None:
                out[name] = float(value) if isinstance(value, Decimal) else value
        return out


#: Custom properties (``context.properties``): at most this many, keys of at most
#: ``MAX_PROPERTY_KEY`` characters matching ``PROPERTY_KEY``, values scalars (text of at most
#: 500 characters without control characters, integers within +-2^53, finite numbers,
#: booleans). Rules test them as ``field = "properties.<key>"``.
MAX_PROPERTIES = 50
MAX_PROPERTY_KEY = 64
PROPERTY_KEY = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
_MAX_PROPERTY_INT = 2**53
_CONTROLS = re.compile(r"[\u0000-\u001f\u007f-\u009f]")


def _property_value(value: Any) -> bool | int | float | str:
    """A property's value: a scalar within the contract's bounds (the same reason codes as
    the other fields: value_too_long, forbidden_character, number_out_of_range)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_PROPERTY_INT:
            raise PydanticCustomError("less_than_equal", "an integer property must lie within "
                                      "+-2^53 (9007199254740992)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "a number property must be finite")
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise PydanticCustomError("string_too_short", "a text property must not be empty")
        if len(text) > 500:
            raise PydanticCustomError("string_too_long",
                                      "a text property must have at most 500 characters")
        if _CONTROLS.search(text):
            raise PydanticCustomError("string_pattern_mismatch",
                                      "a text property must not hold control characters")
        return text
    raise PydanticCustomError("property_type", "a property is text, a number or a boolean "
                              "(not a list, an object or null)")


PropertyKey = Annotated[str, Field(min_length=1, max_length=MAX_PROPERTY_KEY,
                                   pattern=PROPERTY_KEY)]
_PROPERTY_VALUE_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "boolean"},
    {"type": "integer", "minimum": -_MAX_PROPERTY_INT, "maximum": _MAX_PROPERTY_INT},
    {"type": "number"},
    {"type": "string", "minLength": 1, "maxLength": 500, "pattern": _NO_CONTROLS},
]}
PropertyValue = Annotated[bool | int | float | str, PlainValidator(_property_value),
                          WithJsonSchema(_PROPERTY_VALUE_SCHEMA)]
Properties = Annotated[
    dict[PropertyKey, PropertyValue], Field(max_length=MAX_PROPERTIES),
    WithJsonSchema({"type": "object", "maxProperties": MAX_PROPERTIES,
                    "propertyNames": {"minLength": 1, "maxLength": MAX_PROPERTY_KEY,
                                      "pattern": PROPERTY_KEY},
                    "additionalProperties": _PROPERTY_VALUE_SCHEMA})]


class Context(_Frozen):
    """Where the touchpoint happened; used by scoring rules and segment reports."""

    source: ShortText | None = None
    campaign: ShortText | None = None
    url: Annotated[str, Field(min_length=1, max_length=2000, pattern=_NO_CONTROLS)] | None = None
    content_id: ShortText | None = None
    form_id: ShortText | None = None
    landing_page: ShortText | None = None
    properties: Properties | None = Field(
        default=None,
        description=f"Custom properties, as trackers send them: at most {MAX_PROPERTIES} "
                    f"keys of 1-{MAX_PROPERTY_KEY} characters (letters, digits, _ and -), "
                    "scalar values (text of at most 500 characters, integers within "
                    "+-2^53, finite numbers, booleans). Rules test them as "
                    "field = \"properties.<key>\". Scoring facts (product, plan, region), "
                    "not personal data: they are stored readable.")


class Deal(_Frozen):
    id: ShortText
    amount: Amount | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None


class InboundRecord(_Frozen):
    """One fact from an upstream system: a touchpoint or a sales disposition."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        str_strip_whitespace=True,
        title="leadflow inbound record v1",
        json_schema_extra={
            "$id": "https://leadflow.dev/schemas/inbound-record.v1.json",
            "$comment": (
                "Bounds beyond the keywords below: a record is at most 1 MiB of UTF-8 "
                "(configurable, LEADFLOW_MAX_RECORD_BYTES; a leading byte-order mark is "
                "ignored); JSON nesting deeper than 200 levels is refused before validation; "
                "numbers must be finite; occurred_at is an RFC 3339 string with an offset, "
                "in [2000-01-01, 2200-01-01) UTC and at most LEADFLOW_MAX_FUTURE_SKEW_SECONDS "
                "ahead of the receiver's clock; emails mixing Latin, Cyrillic or Greek "
                "letters, or written with full-width/styled letters, are refused."),
        },
    )

    schema_version: Literal[1] = 1
    event_id: Annotated[str, Field(min_length=1, max_length=200,
                                   pattern=_NO_CONTROLS_OR_FORMAT)] = Field(
        description="Producer's unique id: a re-sent copy (same id, same content) is ignored; "
                    "the same id with other content is refused as event_id_conflict."
    )
    type: RecordType
    occurred_at: AwareDatetime = Field(
        description="When it happened at the source (RFC 3339 with offset). Drives scoring."
    )
    lead: LeadRef
    context: Context = Field(default_factory=Context)
    actor: ShortText | None = Field(default=None, description="Who did it (rep, system)")
    owner: ShortText | None = Field(
        default=None, description="Rep id for owner_assigned (and deal owner on converted)"
    )
    reason: FreeText | None = None
    deal: Deal | None = None

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: Any) -> Any:
        # pydantic would read 1767225600 (or "1767225600") as Unix time; the contract says
        # RFC 3339 with an offset, and a number here is a producer bug worth naming.
        if not isinstance(value, (str, datetime)) or (
                isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1)
                .isdigit()):
            raise PydanticCustomError(
                "datetime_rfc3339", "occurred_at must be an RFC 3339 date-time string with "
                "an offset, like 2026-03-02T09:15:00+01:00")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        try:
            utc = value.astimezone(UTC)
        except OverflowError:  # 9999-12-31T23:59:59-01:00 is past the end of time in UTC
            raise PydanticCustomError(
                "timestamp_out_of_range", "occurred_at {value} is outside the representable "
                "range once normalised to UTC", {"value": value.isoformat()}) from None
        if not DEFAULT_OLDEST <= utc < LATEST:
            raise PydanticCustomError(
                "timestamp_out_of_range", "occurred_at {value} is outside "
                "[2000-01-01, 2200-01-01)", {"value": utc.isoformat()})
        return utc

    @model_validator(mode="after")
    def _disposition_requirements(self) -> InboundRecord:
        if self.type == "converted" and self.deal is None:
            raise ValueError("converted needs a deal {id, amount, currency}")
        if self.type == "owner_assigned" and not self.owner:
            raise ValueError("owner_assigned needs owner (the rep id)")
        if self.type == "identified" and not (self.lead.email or self.lead.phone
                                              or self.lead.external_id):
            # An anonymous visitor's profile has no person to land on (interest is scored
            # engagement, not a profile): only a known person can be identified.
            raise ValueError("identified needs a person identity: email, phone or external_id")
        return self

    @property
    def is_touchpoint(self) -> bool:
        return self.type in TOUCHPOINT_TYPES


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


# Records older than this are almost certainly a producer clock bug (epoch zero etc.).
DEFAULT_OLDEST = datetime(2000, 1, 1, tzinfo=UTC)

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
