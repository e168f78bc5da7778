"""The records of the ``[segment]`` table's rules (see :mod:`leadflow.domain.rules`): how a
Segment message's values are tested and which touchpoint a call becomes. The mapping
itself (``SegmentMapping``) is in ``rules``: its defaults are read from the built-in
rules there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from leadflow.domain.rules_checks import ContextField, one_test
from leadflow.domain.rules_quick import (
    _CONTEXT_FIELD,
    _RULE_ID,
    _SEGMENT_PATH,
    _TOUCHPOINT,
    _Field,
    _flag,
    _list,
    _mapping,
    _Record,
    _record,
    _text,
)
from leadflow.domain.rules_records import _OPTIONAL_STRINGS, _OPTIONAL_TEXT, _text_test

if TYPE_CHECKING:

    from leadflow.domain.vocabulary import TouchpointType


def segment_event_key(name: str) -> str:
    """How Segment event names are compared: case, spacing, ``_`` and ``-`` do not matter, so
    ``Email Opened``, ``email_opened`` and ``EMAIL-OPENED`` are one event."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def _segment_value(message: Mapping[str, Any], path: str) -> Any:
    value: Any = message
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class SegmentCondition(_Record):
    """A test on a value of the message (``path``), compared as lower-case text."""

    path: str
    equals: str | None
    contains: str | None
    prefix: str | None
    in_: list[str] | None

    _FIELDS = (_Field("path", _SEGMENT_PATH), _Field("equals", _OPTIONAL_TEXT, None),
               _Field("contains", _OPTIONAL_TEXT, None), _Field("prefix", _OPTIONAL_TEXT, None),
               _Field("in_", _OPTIONAL_STRINGS, None, key="in"))
    _CHECK = one_test

    def matches(self, message: Mapping[str, Any]) -> bool:
        value = _segment_value(message, self.path)
        if value is None or isinstance(value, (dict, list)):
            return False
        return _text_test(self, str(value))


_PATHS = _list(_SEGMENT_PATH)
_CONTEXT_PATHS = _mapping(_CONTEXT_FIELD, _PATHS)


class SegmentRule(_Record):
    """One Segment call mapped to a touchpoint: the first rule whose event names (``track``)
    and conditions match decides the type; ``context`` paths (first with a value wins) and
    ``context_defaults`` fill the touchpoint's context beside the mapping-wide ones."""

    id: str
    type: TouchpointType
    when: list[SegmentCondition]
    context: dict[ContextField, list[str]]
    context_defaults: dict[ContextField, str]
    traits_from: list[str]
    description: str

    _FIELDS: ClassVar[tuple[_Field, ...]] = (
        _Field("id", _RULE_ID), _Field("type", _TOUCHPOINT),
        _Field("when", _list(_record(SegmentCondition)), factory=list),
        _Field("context", _CONTEXT_PATHS, factory=dict),
        _Field("context_defaults", _mapping(_CONTEXT_FIELD, _text(min_length=1, max_length=500)),
               factory=dict),
        _Field("traits_from", _PATHS, factory=lambda: ["context.traits"]),
        _Field("description", _text(), ""))

    def matches(self, message: Mapping[str, Any]) -> bool:
        return all(c.matches(message) for c in self.when)


class SegmentTrack(SegmentRule):
    event: list[str]

    _FIELDS = (*SegmentRule._FIELDS,
               _Field("event", _list(_text(min_length=1, max_length=200), min_length=1)))


class SegmentIdentify(_Record):
    """``identify`` calls: a person's identities and profile, recorded as ``identified``."""

    enabled: bool
    traits_from: list[str]

    _FIELDS = (_Field("enabled", _flag, True),
               _Field("traits_from", _PATHS, factory=lambda: ["traits", "context.traits"]))
