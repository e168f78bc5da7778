"""Segment-spec messages (``identify``, ``track``, ``page``) turned into contract-v1 records.

Trackers speak the Segment spec (Segment's SDKs, RudderStack, Jitsu and other compatible
SDKs). A message is mapped by the ``[segment]`` section of the rules file
(:class:`~leadflow.domain.rules.SegmentMapping`) into a contract-v1 record, which is then
written as JSON and read by :func:`~leadflow.contract.inbound.parse_record`: the same
contract, bounds and reason codes as every other path. A rejection names the Segment field
to blame (``traits.email``, ``timestamp``), not the record field it was mapped to.

Three outcomes, never an exception of another kind:

- a :class:`SegmentRecord` (the record, the JSON bytes produced for it, and the values of
  the message left out because the contract has no place for their shape);
- :class:`SegmentUnmapped` (a :class:`RecordRejected` subclass) for a well-formed message
  the mapping does not turn into a record: a track event or page no rule maps
  (``unmapped_event``), a ``screen``/``group``/``alias`` call (``unsupported_call``), an
  ``identify`` of an anonymous visitor (``anonymous_identify``). Callers count and report
  these apart from rejections;
- :class:`RecordRejected` for a message that is not well formed.

Fields taken: ``messageId`` → ``event_id`` (derived from the message's content and time when
absent), ``timestamp`` → ``occurred_at`` (else ``receivedAt``, else the receiver's time
when there is one), ``userId`` → ``lead.external_id`` (after ``user_id_prefix``),
``anonymousId`` → ``lead.anonymous_id``, traits → email, phone and profile. The email spec's
published examples say ``user_id``/``action``; the snake-case spellings are read too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from leadflow.contract.identity import InvalidIdentityError, normalise_phone
from leadflow.contract.inbound import (
    DEFAULT_MAX_RECORD_BYTES,
    InboundRecord,
    RecordRejected,
    decode_record,
    parse_numbered,
    parse_record,
)
from leadflow.contract.wire import dump_json, load_json
from leadflow.domain.rules import SegmentMapping, SegmentRule, segment_event_key

#: Segment's calls; the last three carry nothing a lead's record can hold.
CALLS = ("identify", "track", "page", "screen", "group", "alias")
_UNSUPPORTED = frozenset({"screen", "group", "alias"})
_TEXT_TRAITS = ("email", "first_name", "last_name", "name", "title", "company", "industry")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
#: Record fields and the message fields they came from when not a mapped path.
_FIXED_PROVENANCE = {"event_id": "messageId", "occurred_at": "timestamp", "type": "type",
                     "lead": "userId"}


class SegmentUnmapped(RecordRejected):
    """A well-formed message that the mapping does not turn into a record; ``event`` names
    what it was (the track event's name, ``page``, ``identify``, or the call)."""

    def __init__(self, reason: str, detail: str, event: str) -> None:
        super().__init__(reason, detail)
        self.event = event


@dataclass(frozen=True)
class SegmentRecord:
    """A mapped message: the record, its contract-v1 JSON, and what was left out."""

    record: InboundRecord
    raw: bytes
    ignored: tuple[str, ...] = ()


def _get(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _field(message: Mapping[str, Any], *names: str) -> tuple[str, Any]:
    for name in names:
        if message.get(name) is not None:
            return name, message[name]
    return names[0], None


def _identifier(message: Mapping[str, Any], *names: str) -> str | None:
    """``userId``/``anonymousId``/``messageId``: text or an integer (SDKs send both)."""
    name, value = _field(message, *names)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordRejected("schema_violation", f"{name} must be a string", name)
    return str(value)


def _object(message: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = message.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecordRejected("schema_violation", f"{name} must be an object", name)
    return value


def _describe(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", str: "text"}.get(
        type(value), "a number")


class _Mapper:
    """One message's mapping; collects where each record field came from."""

    def __init__(self, mapping: SegmentMapping, message: Mapping[str, Any]) -> None:
        self.mapping = mapping
        self.message = message
        self.provenance: dict[str, str] = {}
        self.ignored: list[str] = []

    def call(self) -> str:
        name, call = _field(self.message, "type", "action")
        if not isinstance(call, str):
            raise RecordRejected("schema_violation",
                                 "a Segment message needs type: identify, track or page", name)
        kind = call.strip().lower()
        if kind not in CALLS:
            raise RecordRejected("unknown_type", f"type {call[:100]!r} is not a Segment call "
                                 f"({', '.join(CALLS)})", name)
        return kind

    def rule(self, kind: str) -> tuple[str, SegmentRule | None]:
        """The record type and the rule that gives it (None for identify)."""
        if kind in _UNSUPPORTED:
            raise SegmentUnmapped("unsupported_call", f"{kind} calls carry nothing leadflow "
                                  "records (identify, track and page do)", kind)
        if kind == "identify":
            if not self.mapping.identify.enabled:
                raise SegmentUnmapped("unmapped_event", "identify calls are turned off "
                                      "([segment.identify] enabled = false)", "identify")
            return "identified", None
        if kind == "page":
            for rule in self.mapping.page:
                if rule.matches(self.message):
                    return rule.type, rule
            raise SegmentUnmapped("unmapped_event", "no [[segment.page]] rule maps this page",
                                  "page")
        event = self.message.get("event")
        if not isinstance(event, str) or not event.strip():
            raise RecordRejected("schema_violation", "a track call needs its event name",
                                 "event")
        candidates = self.mapping.track_by_event.get(segment_event_key(event), ())
        for track in candidates:
            if track.matches(self.message):
                return track.type, track
        why = "whose conditions hold" if candidates else "in [segment.track]"
        raise SegmentUnmapped("unmapped_event",
                              f"track event {event[:200]!r} has no rule {why}", event[:200])

    def trait_sources(self, rule: SegmentRule | None) -> list[tuple[str, Mapping[str, Any]]]:
        paths = rule.traits_from if rule is not None else self.mapping.identify.traits_from
        sources = []
        for path in paths:
            value = _get(self.message, path)
            if isinstance(value, Mapping):
                sources.append((path, value))
        return sources

    def lead(self, rule: SegmentRule | None) -> dict[str, Any]:
        lead: dict[str, Any] = {}
        user_id = _identifier(self.message, "userId", "user_id")
        if user_id is not None:
            lead["external_id"] = self.mapping.user_id_prefix + user_id
            self.provenance["lead.external_id"] = "userId"
        anonymous_id = _identifier(self.message, "anonymousId", "anonymous_id")
        if anonymous_id is not None:
            lead["anonymous_id"] = anonymous_id
            self.provenance["lead.anonymous_id"] = "anonymousId"
        sources = self.trait_sources(rule)
        for field_name, paths in self.mapping.traits.items():
            self.trait(lead, field_name, [(f"{where}.{path}", _get(source, path))
                                          for where, source in sources for path in paths])
        self.split_name(lead)
        return lead

    def split_name(self, lead: dict[str, Any]) -> None:
        """Segment's reserved trait ``name`` (the full name) gives the first and last names
        a message does not give on their own: the first word, and the rest. A ``name`` among
        a track call's properties names the thing (a form, a product), not the person."""
        full = lead.pop("name", None)
        where = self.provenance.pop("lead.name", "name")
        if not isinstance(full, str) or "first_name" in lead or "last_name" in lead \
                or where.startswith("properties."):
            return
        first, _, last = full.strip().partition(" ")
        for name, value in (("first_name", first), ("last_name", last.strip())):
            if value:
                lead[name] = value
                self.provenance[f"lead.{name}"] = where

    def trait(self, lead: dict[str, Any], name: str,
              candidates: Sequence[tuple[str, Any]]) -> None:
        """The first candidate of a usable shape fills ``lead[name]``; when none does, the
        first one found is reported as ignored (a wrong shape is the tracker's dialect, not
        an error in the record; a usable value out of bounds is the contract's to refuse)."""
        unusable: tuple[str, str] | None = None
        for where, value in candidates:
            if value is None or value == "":
                continue
            usable, why = self.shape(name, value)
            if why is None:
                lead[name] = usable
                self.provenance[f"lead.{name}"] = where
                return
            unusable = unusable or (where, why)
        if unusable is not None:
            self.ignored.append(f"{unusable[0]}: {unusable[1]}")

    @staticmethod
    def shape(name: str, value: Any) -> tuple[Any, str | None]:
        if name in _TEXT_TRAITS:
            return (value, None) if isinstance(value, str) else (
                None, f"{_describe(value)}, not text")
        if name == "phone":
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                return None, f"{_describe(value)}, not a phone number"
            try:
                return normalise_phone(str(value)), None
            except InvalidIdentityError:
                # Segment phones are free text ("410-555-9412"); the contract's are a
                # person's number in international form, which this one cannot be read as.
                return None, "not a person's phone number in international (+country) form"
        if name == "employees":
            if isinstance(value, bool):
                return None, "a boolean, not a count"
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value.strip())
            return (value, None) if isinstance(value, int) else (
                None, f"{_describe(value)}, not a whole number")
        if name == "annual_revenue":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                return None, f"{_describe(value)}, not an amount"
            return value, None
        # country
        if isinstance(value, str) and _COUNTRY.match(value.strip()):
            return value.strip(), None
        return None, "not an ISO 3166-1 alpha-2 country code (like US or GB)"

    def context(self, rule: SegmentRule | None) -> dict[str, str]:
        context: dict[str, str] = {}
        fields = {*self.mapping.context, *(rule.context if rule else {}),
                  *(rule.context_defaults if rule else {})}
        for name in sorted(fields):
            paths = [*(rule.context.get(name, []) if rule else []),
                     *self.mapping.context.get(name, [])]
            for path in paths:
                value = _get(self.message, path)
                if value is None or value == "":
                    continue
                if isinstance(value, str) or (isinstance(value, (int, float))
                                              and not isinstance(value, bool)):
                    context[name] = str(value)
                    self.provenance[f"context.{name}"] = path
                    break
                self.ignored.append(f"{path}: {_describe(value)}, not text")
            else:
                default = rule.context_defaults.get(name) if rule else None
                if default is not None:
                    context[name] = default
        return context

    def occurred_at(self, received_at: datetime | None) -> str:
        for name in ("timestamp", "receivedAt"):
            value = self.message.get(name)
            if value is not None:
                self.provenance["occurred_at"] = name
                return value  # type: ignore[no-any-return]  # the contract checks it
        if received_at is None:
            raise RecordRejected("schema_violation", "a Segment message read from a file "
                                 "needs its timestamp (or receivedAt)", "timestamp")
        return received_at.astimezone(UTC).isoformat()

    def event_id(self, occurred_at: Any) -> str:
        message_id = _identifier(self.message, "messageId", "message_id")
        if message_id is not None:
            return message_id
        # Without a messageId the same message (content and time) always gets the same id,
        # so a re-sent copy is a duplicate; SDKs always send one.
        digest = hashlib.sha256(dump_json(self.message) + b"|" + str(occurred_at).encode())
        return "segment-" + digest.hexdigest()[:32]


def map_message(message: Any, mapping: SegmentMapping, *,
                received_at: datetime | None = None) -> tuple[dict[str, Any], dict[str, str],
                                                              tuple[str, ...]]:
    """The contract-v1 record (as a JSON object) for a Segment message, where each record
    field came from, and the values left out. Raises :class:`SegmentUnmapped` or
    :class:`RecordRejected`.

    ``received_at`` is when the receiver got the message (an HTTP request, a Kafka record's
    timestamp): a message without ``timestamp`` or ``receivedAt`` happened then.
    """
    if not isinstance(message, Mapping):
        raise RecordRejected("schema_violation",
                             f"a Segment message is a JSON object, not {_describe(message)}")
    mapper = _Mapper(mapping, message)
    kind = mapper.call()
    for name in ("properties", "context", "traits"):
        _object(message, name)
    record_type, rule = mapper.rule(kind)
    lead = mapper.lead(rule)
    if record_type == "identified" and not (lead.get("email") or lead.get("phone")
                                            or lead.get("external_id")) \
            and lead.get("anonymous_id"):
        raise SegmentUnmapped("anonymous_identify", "identify without userId, email or "
                              "phone: an anonymous visitor's traits have no person to land on",
                              "identify")
    occurred_at = mapper.occurred_at(received_at)
    record: dict[str, Any] = {"event_id": mapper.event_id(occurred_at), "type": record_type,
                              "occurred_at": occurred_at, "lead": lead}
    context = mapper.context(rule)
    if context:
        record["context"] = context
    return record, {**_FIXED_PROVENANCE, **mapper.provenance}, tuple(mapper.ignored)


def parse_message(message: Any, mapping: SegmentMapping, *, received_at: datetime | None = None,
                  now: datetime | None = None, max_future_skew: timedelta = timedelta(minutes=5),
                  max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SegmentRecord:
    """Map a parsed Segment message and validate the record by the contract (``now``,
    ``max_future_skew`` and ``max_bytes`` as for :func:`parse_record`)."""
    record, provenance, ignored = map_message(message, mapping, received_at=received_at)
    raw = dump_json(record)
    try:
        parsed = parse_record(raw, now=now, max_future_skew=max_future_skew, max_bytes=max_bytes)
    except RecordRejected as exc:
        raise RecordRejected(exc.reason, exc.detail, _segment_field(exc.field, provenance)) \
            from None
    return SegmentRecord(parsed, raw, ignored)


def _segment_field(field: str | None, provenance: Mapping[str, str]) -> str | None:
    """The message field a record field came from (``lead.email`` → ``traits.email``)."""
    if field is None:
        return None
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        source = provenance.get(".".join(parts[:end]))
        if source is not None:
            return ".".join([source, *parts[end:]])
    return field


def parse_raw(raw: bytes | str | None, mapping: SegmentMapping, *,
              received_at: datetime | None = None, now: datetime | None = None,
              max_future_skew: timedelta = timedelta(minutes=5),
              max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SegmentRecord:
    """Decode, parse and map one message's bytes (a file line, a Kafka value): total, like
    :func:`parse_record` -- a :class:`SegmentRecord` or :class:`RecordRejected`."""
    data = decode_record(raw, max_bytes=max_bytes)
    message = load_json(data)
    if isinstance(message, Mapping) and isinstance(message.get("batch"), list):
        raise RecordRejected("schema_violation", "a batch envelope: one message per line or "
                             "Kafka record (POST /v1/batch takes batches)", "batch")
    return parse_message(message, mapping, received_at=received_at, now=now,
                         max_future_skew=max_future_skew, max_bytes=max_bytes)


def parse_lines(
    lines: Iterable[tuple[int, bytes | str]], mapping: SegmentMapping, *, now: datetime | None,
    max_future_skew: timedelta = timedelta(minutes=5),
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[tuple[int, bytes, SegmentRecord | RecordRejected]]:
    """Numbered lines of Segment messages -> (line number, raw bytes, mapped record or the
    rejection, :class:`SegmentUnmapped` included). Blank lines are skipped."""
    return parse_numbered(lines, lambda data: parse_raw(
        data, mapping, now=now, max_future_skew=max_future_skew, max_bytes=max_bytes))
