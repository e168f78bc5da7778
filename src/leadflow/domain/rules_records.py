"""The records scoring, lifecycle, accounts and routing read from a rules file (see
:mod:`leadflow.domain.rules`): conditions, engagement and fit rules, models, reps, teams
and routes, with the tests they run on a touchpoint or a profile."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from leadflow.domain.rules_checks import (
    _TextTest,
    check_band_order,
    check_fit_test,
    check_model,
    check_references,
    check_thresholds,
    one_test,
)
from leadflow.domain.rules_quick import (
    _MODEL_ID,
    _RULE_ID,
    _STRINGS,
    _TOUCHPOINT,
    _build,
    _choice,
    _condition_field,
    _Field,
    _flag,
    _integer,
    _list,
    _number,
    _optional,
    _Record,
    _record,
    _text,
)

if TYPE_CHECKING:

    from leadflow.domain.vocabulary import TouchpointType


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
        if self.in_ is not None and text not in self._in_lower:
            return False
        if self.contains_any is not None:
            words = _words(text)
            return any(_phrase_in(term, text, words) for term in self._contains_lower)
        return True

    # Lower-cased once per rule, not at each profile it is tested on.
    @cached_property
    def _in_lower(self) -> frozenset[str]:
        return frozenset(v.lower() for v in self.in_ or ())

    @cached_property
    def _contains_lower(self) -> tuple[str, ...]:
        return tuple(term.lower() for term in self.contains_any or ())


@lru_cache(maxsize=4096)  # a profile's title is tested by several rules, and titles repeat
def _words(text: str) -> frozenset[str]:
    return frozenset("".join(ch if ch.isalnum() else " " for ch in text).split())


def _phrase_in(term: str, text: str, words: frozenset[str]) -> bool:
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
