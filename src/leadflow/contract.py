"""Inbound contract v1: what upstream tracking systems publish, one JSON object per record.

The pydantic models here are the single source of truth; ``schemas/*.json`` are generated
from them (``leadflow schemas export``) and a test fails when the files drift.

Parsing is a boundary concern: :func:`parse_record` turns raw bytes into a validated
:class:`InboundRecord` or raises :class:`RecordRejected` naming the problem, so a caller
(the CLI's ingest, the Kafka consumer) can dead-letter the record with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leadflow.identity import InvalidIdentityError, normalise_email, normalise_phone

SCHEMA_VERSION = 1

TouchpointType = Literal[
    "form_submitted",
    "email_opened",
    "email_clicked",
    "page_viewed",
    "content_downloaded",
    "call_logged",
    "demo_requested",
    "trial_started",
    "event_attended",
    "unsubscribed",
]
DispositionType = Literal[
    "sales_accepted",
    "disqualified",
    "recycled",
    "converted",
    "deal_won",
    "deal_lost",
    "owner_assigned",
    "contacted",
]
RecordType = Literal[TouchpointType, DispositionType]

TOUCHPOINT_TYPES: frozenset[str] = frozenset(get_args(TouchpointType))
DISPOSITION_TYPES: frozenset[str] = frozenset(get_args(DispositionType))
RECORD_TYPES: frozenset[str] = TOUCHPOINT_TYPES | DISPOSITION_TYPES

ShortText = Annotated[str, Field(min_length=1, max_length=500)]


class _Frozen(BaseModel):
    # extra="forbid": a misspelt field is a producer bug we want to surface, not ignore.
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class LeadRef(_Frozen):
    """Who the record is about: at least one identity, optionally profile fields."""

    email: ShortText | None = None
    phone: ShortText | None = None
    external_id: ShortText | None = None
    anonymous_id: ShortText | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    company: ShortText | None = None
    title: ShortText | None = None
    industry: ShortText | None = None
    employees: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    annual_revenue: Annotated[Decimal, Field(ge=0)] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = Field(
        default=None, description="ISO 3166-1 alpha-2 country code"
    )

    @field_validator("email")
    @classmethod
    def _email_looks_like_an_email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_email(value)
        except InvalidIdentityError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("phone")
    @classmethod
    def _phone_is_a_persons_number(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_phone(value)
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


class Context(_Frozen):
    """Where the touchpoint happened; used by scoring rules and segment reports."""

    source: ShortText | None = None
    campaign: ShortText | None = None
    url: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    content_id: ShortText | None = None
    form_id: ShortText | None = None
    landing_page: ShortText | None = None


class Deal(_Frozen):
    id: ShortText
    amount: Annotated[Decimal, Field(ge=0)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None


class InboundRecord(_Frozen):
    """One fact from an upstream system: a touchpoint or a sales disposition."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        str_strip_whitespace=True,
        title="leadflow inbound record v1",
        json_schema_extra={"$id": "https://leadflow.dev/schemas/inbound-record.v1.json"},
    )

    schema_version: Literal[1] = 1
    event_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="Producer's unique id; re-sent copies with the same id are ignored."
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
    reason: ShortText | None = None
    deal: Deal | None = None

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _disposition_requirements(self) -> InboundRecord:
        if self.type == "converted" and self.deal is None:
            raise ValueError("converted needs a deal {id, amount, currency}")
        if self.type == "owner_assigned" and not self.owner:
            raise ValueError("owner_assigned needs owner (the rep id)")
        return self

    @property
    def is_touchpoint(self) -> bool:
        return self.type in TOUCHPOINT_TYPES


class RecordRejected(Exception):
    """A record that cannot be applied; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Records older than this are almost certainly a producer clock bug (epoch zero etc.).
DEFAULT_OLDEST = datetime(2000, 1, 1, tzinfo=UTC)


def parse_record(
    raw: bytes | str,
    *,
    now: datetime | None = None,
    max_future_skew: timedelta = timedelta(minutes=5),
    oldest: datetime = DEFAULT_OLDEST,
) -> InboundRecord:
    """Decode and validate one record, or raise :class:`RecordRejected`.

    ``now`` is the receiving system's clock; it only bounds how far in the future a record
    may claim to be. Pass ``None`` to skip that check (replays of archived files).
    """
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordRejected("malformed_json", str(exc)) from exc
    if not isinstance(data, dict):
        raise RecordRejected("schema_violation", "record must be a JSON object")
    if "type" in data and isinstance(data["type"], str) and data["type"] not in RECORD_TYPES:
        raise RecordRejected("unknown_type", f"unknown record type {data['type']!r}")
    try:
        record = InboundRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordRejected(_classify(exc), _describe(exc)) from exc
    if record.occurred_at < oldest:
        raise RecordRejected(
            "timestamp_out_of_range",
            f"occurred_at {record.occurred_at.isoformat()} is before {oldest.isoformat()}",
        )
    if now is not None and record.occurred_at > now + max_future_skew:
        raise RecordRejected(
            "timestamp_out_of_range",
            f"occurred_at {record.occurred_at.isoformat()} is in the future "
            f"(more than {max_future_skew} after {now.isoformat()})",
        )
    return record


def parse_lines(
    lines: Iterable[tuple[int, str]],
    *,
    now: datetime | None,
    max_future_skew: timedelta = timedelta(minutes=5),
) -> Iterator[tuple[int, str, InboundRecord | RecordRejected]]:
    """Numbered JSONL lines -> (line number, text, record or the rejection); blanks skipped."""
    for line_no, raw in lines:
        text = raw.strip()
        if not text:
            continue
        try:
            yield line_no, text, parse_record(text, now=now, max_future_skew=max_future_skew)
        except RecordRejected as exc:
            yield line_no, text, exc


def _classify(exc: ValidationError) -> str:
    for err in exc.errors():
        loc = err.get("loc", ())
        if loc[:1] == ("lead",) and len(loc) >= 2 and loc[1] in ("email", "phone"):
            return "invalid_identity"
        if loc == ("lead",) and "identity" in err.get("msg", ""):
            return "invalid_identity"
    return "schema_violation"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "record"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def inbound_json_schema() -> dict[str, Any]:
    """The published JSON Schema of the inbound record (v1)."""
    schema = InboundRecord.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
