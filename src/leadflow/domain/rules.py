"""The rules file: scoring, lifecycle, account and routing rules as validated data.

Rules are TOML (standard library ``tomllib``) validated against the pydantic models of
:mod:`leadflow.domain.rules_schema`. The *version* of a rule set is a content hash of its
validated, canonical JSON form, so two files that mean the same thing have the same version
and every recorded score names exactly what produced it.

What scoring and routing read is the plain, frozen records below (same classes, fields and
values as the models). A file this module can vouch for by itself (every value of the type
the model asks for, every constraint met: the built-in rules, rules published with
``rescore --apply``, any file written like them) is read into them without pydantic, which a
command such as ``lead show`` would otherwise import for more than the rest of its start-up.
Anything else (a value pydantic would convert, any error) is validated by pydantic, which
names the problem exactly as before; ``tests/unit/test_rules_quick.py`` checks that both
readings give the same records.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol, Self, TypeVar

from leadflow.domain.vocabulary import TOUCHPOINT_TYPES

if TYPE_CHECKING:
    from pydantic import BaseModel

    from leadflow.domain.vocabulary import TouchpointType

ContextField = Literal["url", "form_id", "content_id", "landing_page", "source", "campaign"]
CONTEXT_FIELDS = ("url", "form_id", "content_id", "landing_page", "source", "campaign")
#: What a rule's condition may test: a context field, or a custom property of the record
#: (``properties.<key>``, ``context.properties`` in the inbound contract).
CONDITION_FIELD = (r"(url|form_id|content_id|landing_page|source|campaign"
                   r"|properties\.[A-Za-z0-9_][A-Za-z0-9_-]{0,63})")
_CONDITION_FIELD_RE = re.compile(CONDITION_FIELD)
#: A model's id (``[models.<id>]``): a rule id without dots (a dot would nest the table).
MODEL_ID = r"[a-z0-9][a-z0-9_-]{0,63}"
#: What a Segment trait can fill on the lead: its identities and its profile fields.
TraitField = Literal["email", "phone", "first_name", "last_name", "name", "company", "title",
                     "industry", "employees", "annual_revenue", "country"]


class _TextTest(Protocol):
    """What a condition tests a value with: exactly one of the four is set (read-only, as
    the frozen records have them)."""

    @property
    def equals(self) -> str | None: ...
    @property
    def contains(self) -> str | None: ...
    @property
    def prefix(self) -> str | None: ...
    @property
    def in_(self) -> list[str] | None: ...


_T = TypeVar("_T", bound=_TextTest)
_M = TypeVar("_M")


# --------------------------------------------------------------------------- checks
# The model validators, written once: the pydantic models (rules_schema) and the quick reading
# below both call them. They read attributes only, so either kind of object will do.


def one_test(condition: _T) -> _T:
    tests = [condition.equals, condition.contains, condition.prefix, condition.in_]
    if sum(t is not None for t in tests) != 1:
        raise ValueError("a condition needs exactly one of equals, contains, prefix, in")
    return condition


def check_band_order(rule: _M) -> _M:
    points, bands = getattr(rule, "points"), getattr(rule, "bands")  # noqa: B009
    if (points is None) == (bands is None):
        raise ValueError("an engagement rule needs exactly one of points or bands")
    if bands:
        previous_max = 0
        for band in bands:
            if band.min <= previous_max:
                raise ValueError("bands must be ordered and must not overlap")
            if band.max is not None and band.max < band.min:
                raise ValueError("band max must be >= min")
            previous_max = band.max if band.max is not None else 10**9
    return rule


def check_fit_test(rule: _M) -> _M:
    has_text = getattr(rule, "contains_any") is not None or getattr(rule, "in_") is not None  # noqa: B009
    has_range = getattr(rule, "min") is not None or getattr(rule, "max") is not None  # noqa: B009
    if has_text == has_range:
        raise ValueError("a fit rule needs either contains_any/in or min/max")
    return rule


def check_thresholds(scoring: _M) -> _M:
    if getattr(scoring, "recycle_threshold") >= getattr(scoring, "mql_threshold"):  # noqa: B009
        raise ValueError("recycle_threshold must be below mql_threshold")
    ids = ([r.id for r in getattr(scoring, "engagement")]  # noqa: B009
           + [r.id for r in getattr(scoring, "fit")])  # noqa: B009
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"rule ids must be unique: {', '.join(duplicates)}")
    return scoring


def check_condition_field(field: str) -> str:
    """A condition's field: a context field or ``properties.<key>``; anything else is named."""
    if _CONDITION_FIELD_RE.fullmatch(field) is None:
        raise ValueError(f"unknown field {field!r}: a condition tests one of "
                         f"{', '.join(CONTEXT_FIELDS)} or properties.<key> (a custom property "
                         "of the record: letters, digits, _ and -)")
    return field


def check_model(model: _M) -> _M:
    ids = ([r.id for r in getattr(model, "engagement")]  # noqa: B009
           + [r.id for r in getattr(model, "fit")])  # noqa: B009
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"rule ids must be unique within a model: {', '.join(duplicates)}")
    recycle = getattr(model, "recycle_threshold")  # noqa: B009
    if recycle is not None and recycle >= getattr(model, "threshold"):  # noqa: B009
        raise ValueError("recycle_threshold must be below threshold")
    return model


#: The id ``[scoring]`` scores under as a named model when another model is the primary one
#: (``[lifecycle] primary_model``).
SCORING_MODEL = "scoring"


def check_primary(rules: _M) -> _M:
    """``[lifecycle] primary_model`` names a model of the file, one that can drive the
    lifecycle (a ``recycle_threshold``); ``[scoring]`` then scores as the model
    ``scoring``, so no model of the file may take that id."""
    primary = getattr(getattr(rules, "lifecycle"), "primary_model")  # noqa: B009
    if primary is None:
        return rules
    models = getattr(rules, "models")  # noqa: B009
    if primary not in models:
        known = ", ".join(models) if models else "none"
        raise ValueError(f"lifecycle.primary_model: unknown model {primary!r}; the named "
                         f"models of this file: {known}")
    if models[primary].recycle_threshold is None:
        raise ValueError(f"models.{primary}.recycle_threshold is needed: as the primary model "
                         "it recycles an MQL whose score decays below it")
    if SCORING_MODEL in models:
        raise ValueError(f"models.{SCORING_MODEL}: with another primary model, [scoring] "
                         f"scores as the named model {SCORING_MODEL!r}; rename this one")
    return rules


def check_references(routing: _M) -> _M:
    reps = {r.id for r in getattr(routing, "reps")}  # noqa: B009
    teams = {t.id for t in getattr(routing, "teams")}  # noqa: B009
    for team in getattr(routing, "teams"):  # noqa: B009
        unknown = [m for m in team.members if m not in reps]
        if unknown:
            raise ValueError(f"team {team.id!r} names unknown reps: {', '.join(unknown)}")
    for rule in getattr(routing, "rules"):  # noqa: B009
        if rule.team not in teams:
            raise ValueError(f"routing rule {rule.id!r} names unknown team {rule.team!r}")
    fallback = getattr(routing, "fallback")  # noqa: B009
    if fallback != "pool" and fallback not in teams:
        raise ValueError(f"fallback {fallback!r} is neither 'pool' nor a team id")
    return routing


def check_segment_ids(segment: _M) -> _M:
    ids = ([r.id for r in getattr(segment, "track")]  # noqa: B009
           + [r.id for r in getattr(segment, "page")])  # noqa: B009
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"segment rule ids must be unique: {', '.join(duplicates)}")
    return segment


# --------------------------------------------------------------------------- quick reading


class _Unsure(Exception):
    """The quick reading cannot vouch for a value: pydantic decides, and names any error."""


_UNSURE = _Unsure()
_REQUIRED: Any = object()
_Read = Callable[[Any], Any]


class _Field(NamedTuple):
    name: str
    read: _Read
    default: Any = _REQUIRED
    factory: Callable[[], Any] | None = None
    key: str = ""  # the name in the file when it is not ``name`` (``in`` for ``in_``)


def _text(pattern: str | None = None, min_length: int = 0,
          max_length: int | None = None) -> _Read:
    compiled = re.compile(pattern) if pattern is not None else None

    def read(value: Any) -> str:
        if (type(value) is not str or len(value) < min_length
                or (max_length is not None and len(value) > max_length)
                or (compiled is not None and compiled.fullmatch(value) is None)):
            raise _UNSURE
        return value

    return read


def _choice(choices: frozenset[str]) -> _Read:
    def read(value: Any) -> str:
        if type(value) is not str or value not in choices:
            raise _UNSURE
        return value

    return read


#: The readers of float fields: their values are dumped as floats, as pydantic dumps them
#: (an int default such as ``mql_threshold = 50`` included).
_FLOATS: set[_Read] = set()


def _number(gt: float | None = None) -> _Read:
    def read(value: Any) -> float:
        # pydantic turns an int into a float; non-finite numbers and huge ints it decides.
        if type(value) is int and abs(value) <= 2**53:
            value = float(value)
        if type(value) is not float or not math.isfinite(value) or (
                gt is not None and not value > gt):
            raise _UNSURE
        return value

    _FLOATS.add(read)
    return read


def _integer(ge: int | None = None) -> _Read:
    def read(value: Any) -> int:
        if type(value) is not int or (ge is not None and value < ge):
            raise _UNSURE
        return value

    return read


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise _UNSURE
    return value


def _optional(read: _Read) -> _Read:
    def read_optional(value: Any) -> Any:
        return None if value is None else read(value)

    if read in _FLOATS:
        _FLOATS.add(read_optional)
    return read_optional


def _list(read: _Read, min_length: int = 0) -> _Read:
    def read_list(value: Any) -> list[Any]:
        if type(value) is not list or len(value) < min_length:
            raise _UNSURE
        return [read(item) for item in value]

    return read_list


def _mapping(read_key: _Read, read: _Read) -> _Read:
    def read_mapping(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _UNSURE
        return {read_key(key): read(item) for key, item in value.items()}

    return read_mapping


def _record(cls: type[_Record]) -> _Read:
    return lambda value: _build(cls, value)


_RULE_ID = _text(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SEGMENT_NAME = r"[A-Za-z_$][A-Za-z0-9_$-]*"
_SEGMENT_PATH = _text(rf"{_SEGMENT_NAME}(\.{_SEGMENT_NAME})*", max_length=200)
_TOUCHPOINT = _choice(TOUCHPOINT_TYPES)
_CONTEXT_FIELD = _choice(frozenset(("url", "form_id", "content_id", "landing_page", "source",
                                    "campaign")))
_TRAIT_FIELD = _choice(frozenset(("email", "phone", "first_name", "last_name", "name",
                                  "company", "title", "industry", "employees",
                                  "annual_revenue", "country")))
_STRINGS = _list(_text())


def _condition_field(value: Any) -> str:
    if type(value) is not str or _CONDITION_FIELD_RE.fullmatch(value) is None:
        raise _UNSURE
    return value


_MODEL_ID = _text(MODEL_ID)


class _Record:
    """A frozen record of validated values, as the pydantic model of the same name in
    ``rules_schema`` holds them (fields in the same order, under the same names)."""

    #: The fields, in the model's order, and how the quick reading reads each.
    _FIELDS: ClassVar[tuple[_Field, ...]] = ()
    #: The model validator, if any (raises ValueError).
    _CHECK: ClassVar[Callable[[Any], Any] | None] = None

    def __init__(self, **values: Any) -> None:
        for spec in self._FIELDS:
            object.__setattr__(self, spec.name, values[spec.name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, spec.name) for spec in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{spec.name}={getattr(self, spec.name)!r}" for spec in self._FIELDS)
        return f"{type(self).__name__}({fields})"

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update`` applied, not validated (as pydantic's ``model_copy``)."""
        values = {spec.name: getattr(self, spec.name) for spec in self._FIELDS}
        return type(self)(**{**values, **(update or {})})


def _build(cls: type[_M], data: Any) -> _M:
    """``cls`` from a table of the file, or ``_Unsure`` when pydantic has to decide."""
    assert issubclass(cls, _Record)
    if type(data) is not dict:
        raise _UNSURE
    values: dict[str, Any] = {}
    for spec in cls._FIELDS:
        key = spec.key or spec.name
        if key in data:
            values[spec.name] = spec.read(data[key])
        elif spec.factory is not None:
            values[spec.name] = spec.factory()
        elif spec.default is not _REQUIRED:
            values[spec.name] = spec.default
        else:
            raise _UNSURE
    if len(data) != sum(1 for spec in cls._FIELDS if (spec.key or spec.name) in data):
        raise _UNSURE  # a key the model does not have (or a field under its python name)
    record = cls(**values)
    if cls._CHECK is not None:
        try:
            cls._CHECK(record)
        except ValueError:
            raise _UNSURE from None
    return record


def _from_model(model: BaseModel) -> Any:
    """The record of a model pydantic validated: same class name, same values."""
    cls: type[_Record] = globals()[type(model).__name__]
    return cls(**{spec.name: _copy(getattr(model, spec.name)) for spec in cls._FIELDS})


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if hasattr(value, "model_fields_set"):  # a pydantic model
        return _from_model(value)
    return value


def _data(value: Any) -> Any:
    """``model_dump(mode="json", by_alias=True)`` of a record (and of what it holds)."""
    if isinstance(value, _Record):
        return {spec.key or spec.name: _dumped(getattr(value, spec.name), spec)
                for spec in value._FIELDS}
    if isinstance(value, list):
        return [_data(item) for item in value]
    if isinstance(value, dict):
        return {key: _data(item) for key, item in value.items()}
    return value


def _dumped(value: Any, spec: _Field) -> Any:
    if spec.read in _FLOATS and type(value) is int:
        return float(value)
    return _data(value)


# --------------------------------------------------------------------------- the records


def _text_test(condition: _TextTest, value: str) -> bool:
    """The condition's test on ``value``, compared as lower-case text."""
    text = value.lower()
    if condition.equals is not None:
        return text == condition.equals.lower()
    if condition.contains is not None:
        return condition.contains.lower() in text
    if condition.prefix is not None:
        return text.startswith(condition.prefix.lower())
    return text in {v.lower() for v in condition.in_ or ()}


_OPTIONAL_TEXT = _optional(_text())
_OPTIONAL_STRINGS = _optional(_STRINGS)


class Condition(_Record):
    """A test on one context field of a touchpoint, or on one of its custom properties
    (``properties.<key>``; a boolean reads as ``true``/``false``, a number as written)."""

    field: str
    equals: str | None
    contains: str | None
    prefix: str | None
    in_: list[str] | None

    _FIELDS = (_Field("field", _condition_field), _Field("equals", _OPTIONAL_TEXT, None),
               _Field("contains", _OPTIONAL_TEXT, None), _Field("prefix", _OPTIONAL_TEXT, None),
               _Field("in_", _OPTIONAL_STRINGS, None, key="in"))
    _CHECK = one_test

    @cached_property
    def _property(self) -> str | None:
        return self.field[11:] if self.field.startswith("properties.") else None

    def matches(self, context: Mapping[str, Any]) -> bool:
        key = self._property
        if key is None:
            value = context.get(self.field)
        else:
            properties = context.get("properties")
            value = properties.get(key) if isinstance(properties, Mapping) else None
            if isinstance(value, bool):
                value = "true" if value else "false"
        return value is not None and _text_test(self, str(value))


class Band(_Record):
    """Frequency band: the rule is worth ``points`` in total once the count is in range."""

    min: int
    max: int | None
    points: float

    _FIELDS = (_Field("min", _integer(ge=1)), _Field("max", _optional(_integer(ge=1)), None),
               _Field("points", _number()))


class EngagementRule(_Record):
    id: str
    type: TouchpointType
    when: list[Condition]
    points: float | None
    bands: list[Band] | None
    cap: float | None
    expires_after_days: float | None
    description: str

    _FIELDS = (_Field("id", _RULE_ID), _Field("type", _TOUCHPOINT),
               _Field("when", _list(_record(Condition)), factory=list),
               _Field("points", _optional(_number()), None),
               _Field("bands", _optional(_list(_record(Band))), None),
               _Field("cap", _optional(_number(gt=0)), None),
               _Field("expires_after_days", _optional(_number(gt=0)), None),
               _Field("description", _text(), ""))
    _CHECK = check_band_order

    def matches(self, record_type: str, context: Mapping[str, Any]) -> bool:
        return record_type == self.type and all(c.matches(context) for c in self.when)

    def band_total(self, count: int) -> float:
        """Total points this banded rule is worth after ``count`` matching touchpoints."""
        total = 0.0
        for band in self.bands or ():
            if count >= band.min:
                total = band.points
        return total


class FitRule(_Record):
    id: str
    field: Literal["title", "employees", "annual_revenue", "country", "industry", "company"]
    contains_any: list[str] | None
    in_: list[str] | None
    min: float | None
    max: float | None
    points: float
    description: str

    _FIELDS = (_Field("id", _RULE_ID),
               _Field("field", _choice(frozenset(("title", "employees", "annual_revenue",
                                                  "country", "industry", "company")))),
               _Field("contains_any", _OPTIONAL_STRINGS, None),
               _Field("in_", _OPTIONAL_STRINGS, None, key="in"),
               _Field("min", _optional(_number()), None),
               _Field("max", _optional(_number()), None),
               _Field("points", _number()), _Field("description", _text(), ""))
    _CHECK = check_fit_test

    def matches(self, profile: Mapping[str, Any]) -> bool:
        value = profile.get(self.field)
        if value is None:
            return False
        if self.min is not None or self.max is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return False
            return (self.min is None or number >= self.min) and (
                self.max is None or number <= self.max
            )
        text = str(value).lower()
        if self.in_ is not None and text not in {v.lower() for v in self.in_}:
            return False
        if self.contains_any is not None:
            words = _words(text)
            return any(_phrase_in(term.lower(), text, words) for term in self.contains_any)
        return True


def _words(text: str) -> set[str]:
    return set("".join(ch if ch.isalnum() else " " for ch in text).split())


def _phrase_in(term: str, text: str, words: set[str]) -> bool:
    # Single words match whole words ("vp" must not match "mvp"); phrases match substrings.
    return term in words if " " not in term else term in text


class Scoring(_Record):
    mql_threshold: float
    recycle_threshold: float
    half_life_days: float
    engagement: list[EngagementRule]
    fit: list[FitRule]

    # The defaults are ints, as the model's are (pydantic does not convert defaults).
    _FIELDS = (_Field("mql_threshold", _number(), 50),
               _Field("recycle_threshold", _number(), 20),
               _Field("half_life_days", _number(gt=0), 30),
               _Field("engagement", _list(_record(EngagementRule)), factory=list),
               _Field("fit", _list(_record(FitRule)), factory=list))
    _CHECK = check_thresholds


class Model(_Record):
    """A named scoring model beside the primary one (``[scoring]``, or the model
    ``[lifecycle] primary_model`` names): its own engagement and fit rules, half-life and
    threshold. It records its own points and threshold crossings; the lifecycle is driven
    by the primary model only (``recycle_threshold`` is read when this model is it)."""

    threshold: float
    half_life_days: float
    engagement: list[EngagementRule]
    fit: list[FitRule]
    description: str
    recycle_threshold: float | None

    _FIELDS = (_Field("threshold", _number()),
               _Field("half_life_days", _number(gt=0), 30),
               _Field("engagement", _list(_record(EngagementRule)), factory=list),
               _Field("fit", _list(_record(FitRule)), factory=list),
               _Field("description", _text(), ""),
               _Field("recycle_threshold", _optional(_number()), None))
    _CHECK = check_model

    @cached_property
    def half_life_seconds(self) -> float:
        return self.half_life_days * 86400.0

    @cached_property
    def engagement_by_type(self) -> dict[str, tuple[EngagementRule, ...]]:
        return _by_type(self.engagement)


def _by_type(rules: list[EngagementRule]) -> dict[str, tuple[EngagementRule, ...]]:
    index: dict[str, list[EngagementRule]] = {}
    for rule in rules:
        index.setdefault(rule.type, []).append(rule)
    return {kind: tuple(found) for kind, found in index.items()}


class AutoSql(_Record):
    id: str
    type: TouchpointType
    min_fit: float
    min_score: float

    _FIELDS = (_Field("id", _RULE_ID), _Field("type", _TOUCHPOINT),
               _Field("min_fit", _number(), 0), _Field("min_score", _number(), 0))


class Lifecycle(_Record):
    dormant_after_days: float
    auto_sql: list[AutoSql]
    #: The named model that drives the lifecycle (None: ``[scoring]``).
    primary_model: str | None

    _FIELDS = (_Field("dormant_after_days", _number(gt=0), 60),
               _Field("auto_sql", _list(_record(AutoSql)), factory=list),
               _Field("primary_model", _optional(_MODEL_ID), None))


class Accounts(_Record):
    surge_min_people: int
    surge_window_days: float
    surge_points: float
    free_mail_domains: list[str]

    _FIELDS = (_Field("surge_min_people", _integer(ge=2), 3),
               _Field("surge_window_days", _number(gt=0), 14),
               _Field("surge_points", _number(), 10),
               _Field("free_mail_domains", _STRINGS, factory=list))


class Rep(_Record):
    id: str
    available: bool
    capacity: int | None

    _FIELDS = (_Field("id", _RULE_ID), _Field("available", _flag, True),
               _Field("capacity", _optional(_integer(ge=1)), None))


class Team(_Record):
    id: str
    members: list[str]
    strategy: Literal["round_robin", "least_loaded", "pool"]

    _FIELDS = (_Field("id", _RULE_ID), _Field("members", _list(_text(), min_length=1)),
               _Field("strategy", _choice(frozenset(("round_robin", "least_loaded", "pool"))),
                      "round_robin"))


class RouteCondition(_Record):
    country_in: list[str] | None
    employees_min: int | None
    employees_max: int | None
    industry_in: list[str] | None
    min_score: float | None

    _FIELDS = (_Field("country_in", _OPTIONAL_STRINGS, None),
               _Field("employees_min", _optional(_integer()), None),
               _Field("employees_max", _optional(_integer()), None),
               _Field("industry_in", _OPTIONAL_STRINGS, None),
               _Field("min_score", _optional(_number()), None))

    def matches(self, profile: Mapping[str, Any], score: float) -> bool:
        if self.country_in is not None:
            country = profile.get("country")
            if country is None or str(country).upper() not in {c.upper() for c in self.country_in}:
                return False
        if self.employees_min is not None or self.employees_max is not None:
            employees = profile.get("employees")
            if employees is None:
                return False
            if self.employees_min is not None and employees < self.employees_min:
                return False
            if self.employees_max is not None and employees > self.employees_max:
                return False
        if self.industry_in is not None:
            industry = profile.get("industry")
            if industry is None or str(industry).lower() not in {
                i.lower() for i in self.industry_in
            }:
                return False
        return self.min_score is None or score >= self.min_score


class RouteRule(_Record):
    id: str
    team: str
    when: RouteCondition

    _FIELDS = (_Field("id", _RULE_ID), _Field("team", _text()),
               _Field("when", _record(RouteCondition),
                      factory=lambda: _build(RouteCondition, {})))


class Routing(_Record):
    assign_on: Literal["mql", "created", "manual"]
    first_contact_sla_hours: float
    fallback: str
    reps: list[Rep]
    teams: list[Team]
    rules: list[RouteRule]

    _FIELDS = (_Field("assign_on", _choice(frozenset(("mql", "created", "manual"))), "mql"),
               _Field("first_contact_sla_hours", _number(gt=0), 24),
               _Field("fallback", _text(), "pool"),
               _Field("reps", _list(_record(Rep)), factory=list),
               _Field("teams", _list(_record(Team)), factory=list),
               _Field("rules", _list(_record(RouteRule)), factory=list))
    _CHECK = check_references

    def rep(self, rep_id: str) -> Rep | None:
        return next((r for r in self.reps if r.id == rep_id), None)

    def team(self, team_id: str) -> Team:
        return next(t for t in self.teams if t.id == team_id)


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


def builtin_segment() -> dict[str, Any]:
    """The ``[segment]`` table of the built-in rules, as TOML gives it."""
    table = default_rules_data().get("segment", {})
    return table if isinstance(table, dict) else {}


class SegmentMapping(_Record):
    """How Segment-spec messages (``identify``, ``track``, ``page``) become records.

    ``userId`` becomes the lead's ``external_id`` (after ``user_id_prefix``),
    ``anonymousId`` its ``anonymous_id``; traits found at ``traits`` paths (relative to each
    rule's ``traits_from`` objects) give its email, phone and profile.
    """

    user_id_prefix: str
    context: dict[ContextField, list[str]]
    traits: dict[TraitField, list[str]]
    identify: SegmentIdentify
    track: list[SegmentTrack]
    page: list[SegmentRule]

    _FIELDS = (_Field("user_id_prefix", _text(max_length=100), ""),
               _Field("context", _CONTEXT_PATHS, factory=dict),
               # Not validated, as the model's default is not.
               _Field("traits", _mapping(_TRAIT_FIELD, _PATHS),
                      factory=lambda: dict(builtin_segment().get("traits", {}))),
               _Field("identify", _record(SegmentIdentify),
                      factory=lambda: _build(SegmentIdentify, {})),
               _Field("track", _list(_record(SegmentTrack)), factory=list),
               _Field("page", _list(_record(SegmentRule)), factory=list))
    _CHECK = check_segment_ids

    @cached_property
    def track_by_event(self) -> dict[str, tuple[SegmentTrack, ...]]:
        """Track rules per normalised event name, in file order."""
        index: dict[str, list[SegmentTrack]] = {}
        for rule in self.track:
            for name in rule.event:
                index.setdefault(segment_event_key(name), []).append(rule)
        return {name: tuple(rules) for name, rules in index.items()}


class Rules(_Record):
    """A complete, validated rule set."""

    label: str
    scoring: Scoring
    lifecycle: Lifecycle
    accounts: Accounts
    routing: Routing
    #: Tracker intake (a file without ``[segment]`` gets the built-in mapping).
    segment: SegmentMapping
    #: Named models beside the primary one (``[scoring]``), by id, in file order.
    models: dict[str, Model]

    _FIELDS = (_Field("label", _text(), "custom"),
               _Field("scoring", _record(Scoring), factory=lambda: _build(Scoring, {})),
               _Field("lifecycle", _record(Lifecycle), factory=lambda: _build(Lifecycle, {})),
               _Field("accounts", _record(Accounts), factory=lambda: _build(Accounts, {})),
               _Field("routing", _record(Routing), factory=lambda: _build(Routing, {})),
               _Field("segment", _record(SegmentMapping),
                      factory=lambda: _build(SegmentMapping, builtin_segment())),
               _Field("models", _mapping(_MODEL_ID, _record(Model)), factory=dict))
    _CHECK = check_primary

    @cached_property
    def version(self) -> str:
        """Content hash: the same meaning gives the same version, whatever the formatting.

        The ``[segment]`` mapping is left out: it decides what record a tracker's message
        becomes, and that record (type, context) is what is stored and scored, so a score is
        reproduced from it and these rules alone; editing the mapping re-versions no score.
        """
        data = _data(self)
        del data["segment"]
        # A file without models, or without the primary-model choice, keeps the version it
        # always had.
        if not data["models"]:
            del data["models"]
        for model in data.get("models", {}).values():
            if model["recycle_threshold"] is None:
                del model["recycle_threshold"]
        if data["lifecycle"]["primary_model"] is None:
            del data["lifecycle"]["primary_model"]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "r-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @cached_property
    def half_life_seconds(self) -> float:
        return self.scoring.half_life_days * 86400.0

    @cached_property
    def engagement_by_type(self) -> dict[str, tuple[EngagementRule, ...]]:
        """Engagement rules per record type, in file order: a touchpoint only tests the rules
        written for its type (most rule sets have one or two per type)."""
        return _by_type(self.scoring.engagement)

    @cached_property
    def free_mail(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.accounts.free_mail_domains)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the field."""


def _validated(data: dict[str, Any], source: str) -> Rules:
    """``data`` validated by pydantic: its records, or RulesError naming every problem."""
    from pydantic import ValidationError

    from leadflow.domain import rules_schema

    try:
        model = rules_schema.Rules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
            problems.append(f"{where}: {err.get('msg')}")
        raise RulesError(f"{source}: invalid rules: " + "; ".join(problems)) from exc
    rules: Rules = _from_model(model)
    return rules


def _with_primary(rules: Rules) -> Rules:
    """The rules as scoring reads them: the model ``[lifecycle] primary_model`` names in
    ``scoring`` (its threshold as the MQL threshold), and ``[scoring]`` among the named
    models as ``scoring``. Everything that reads ``rules.scoring`` then follows the chosen
    model and every named model, ``[scoring]`` included, records its own points."""
    primary = rules.lifecycle.primary_model
    if primary is None:
        return rules
    chosen, section = rules.models[primary], rules.scoring
    assert chosen.recycle_threshold is not None  # check_primary
    scoring = Scoring(mql_threshold=chosen.threshold, recycle_threshold=chosen.recycle_threshold,
                      half_life_days=chosen.half_life_days, engagement=chosen.engagement,
                      fit=chosen.fit)
    as_model = Model(threshold=section.mql_threshold, half_life_days=section.half_life_days,
                     engagement=section.engagement, fit=section.fit,
                     description="the [scoring] section",
                     recycle_threshold=section.recycle_threshold)
    models = {SCORING_MODEL: as_model,
              **{model_id: m for model_id, m in rules.models.items() if model_id != primary}}
    return rules.model_copy(update={"scoring": scoring, "models": models})


def _toml(text: str, source: str) -> dict[str, Any]:
    # Imported here: the built-in rules are read from their JSON snapshot (start-up).
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc


def parse_rules(text: str, *, source: str = "<rules>") -> Rules:
    return _rules_from(_toml(text, source), source)


def _rules_from(data: dict[str, Any], source: str) -> Rules:
    try:
        rules = _build(Rules, data)
    except _Unsure:
        rules = _validated(data, source)
    return _with_primary(rules)


def load_rules(path: str | Path | None = None) -> Rules:
    """Rules from ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return default_rules()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{file}: cannot read rules file: {exc.strerror}") from exc
    return parse_rules(text, source=str(file))


def default_rules_text() -> str:
    # The file beside this module, in every install that has one; importlib.resources (whose
    # readers import tempfile, shutil and more: ~5 ms of lead show's start-up) only where the
    # package is no directory (a zip import).
    try:
        return Path(__file__).with_name("default_rules.toml").read_text(encoding="utf-8")
    except OSError:
        from importlib import resources

        return (resources.files("leadflow.domain").joinpath("default_rules.toml")
                .read_text(encoding="utf-8"))


#: Beside ``default_rules.toml``: what ``tomllib`` makes of it, as JSON, with the sha256 of
#: the text it was made from. Reading it is ~15x cheaper than parsing the TOML (a tenth of
#: ``lead show``'s run, start-up issue 15); it is used only while the hash matches the text,
#: so an edited TOML is parsed as before. ``make rules-snapshot`` rewrites it, and
#: tests/unit/test_rules.py fails while it is stale.
SNAPSHOT = "default_rules.json"


def default_rules_snapshot(text: str) -> str:
    """The snapshot file's content for the built-in rules ``text``."""
    return json.dumps({"toml_sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "rules": _toml(text, "default_rules.toml")}, indent=1, sort_keys=True) + "\n"


def default_rules_data() -> dict[str, Any]:
    """The built-in rules as ``tomllib`` gives them: from the snapshot when it is the
    snapshot of this text, else parsed."""
    text = default_rules_text()
    try:
        snapshot = json.loads(Path(__file__).with_name(SNAPSHOT).read_bytes())
    except (OSError, ValueError):
        snapshot = None
    if (isinstance(snapshot, dict)
            and snapshot.get("toml_sha256") == hashlib.sha256(text.encode()).hexdigest()):
        return snapshot["rules"]  # type: ignore[no-any-return]
    return _toml(text, "default_rules.toml")


_DEFAULT: Rules | None = None


def default_rules() -> Rules:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _rules_from(default_rules_data(), "default_rules.toml")
    return _DEFAULT


def rules_json_schema() -> dict[str, Any]:
    from leadflow.domain.rules_schema import Rules as RulesModel

    schema = RulesModel.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "leadflow rules file"
    return schema
