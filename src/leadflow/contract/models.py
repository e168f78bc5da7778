"""Inbound contract v1, the record: what upstream tracking systems publish, one JSON object each.

The pydantic models here are the single source of truth; ``schemas/*.json`` are generated
from them (``leadflow schemas export``) and a test fails when the files drift. They carry
the bounds every path enforces (sizes, characters, numbers, times) and normalise the
identities; contract/inbound.py parses raw bytes into them.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
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
# Records older than this are almost certainly a producer clock bug (epoch zero etc.).
DEFAULT_OLDEST = datetime(2000, 1, 1, tzinfo=UTC)


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

    def as_dict(self) -> dict[str, Any]:
        """``model_dump(exclude_none=True)`` without the serializer: the fields are plain
        values (text, and a dict of scalars, copied), so the same dict comes out, in ~0.3 µs
        against ~1.7 (once per touchpoint; tests/unit/test_identity_and_contract.py)."""
        return {k: dict(v) if type(v) is dict else v
                for k, v in self.__dict__.items() if v is not None}


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
