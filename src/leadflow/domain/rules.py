"""The rules file: scoring, lifecycle, account and routing rules as validated data.

Rules are TOML (standard library ``tomllib``) validated by pydantic. The *version* of a rule
set is a content hash of its validated, canonical JSON form, so two files that mean the
same thing have the same version and every recorded score names exactly what produced it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from leadflow.domain.vocabulary import TouchpointType

RuleId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
ContextField = Literal["url", "form_id", "content_id", "landing_page", "source", "campaign"]
#: A dotted path into a Segment message, from its root: ``properties.email_id``,
#: ``context.campaign.source``, ``traits.company.name``.
_SEGMENT_NAME = r"[A-Za-z_$][A-Za-z0-9_$-]*"
SegmentPath = Annotated[str, Field(pattern=rf"^{_SEGMENT_NAME}(\.{_SEGMENT_NAME})*$",
                                   max_length=200)]
#: What a Segment trait can fill on the lead: its identities and its profile fields.
TraitField = Literal["email", "phone", "first_name", "last_name", "name", "company", "title",
                     "industry", "employees", "annual_revenue", "country"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class _TextTest(Protocol):
    """What a condition tests a value with: exactly one of the four is set (read-only, as
    the frozen models have them)."""

    @property
    def equals(self) -> str | None: ...
    @property
    def contains(self) -> str | None: ...
    @property
    def prefix(self) -> str | None: ...
    @property
    def in_(self) -> list[str] | None: ...


_T = TypeVar("_T", bound=_TextTest)


def _one_test(condition: _T) -> _T:
    tests = [condition.equals, condition.contains, condition.prefix, condition.in_]
    if sum(t is not None for t in tests) != 1:
        raise ValueError("a condition needs exactly one of equals, contains, prefix, in")
    return condition


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


class Condition(_Strict):
    """A test on one context field of a touchpoint."""

    field: ContextField
    equals: str | None = None
    contains: str | None = None
    prefix: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        return _one_test(self)

    def matches(self, context: Mapping[str, Any]) -> bool:
        value = context.get(self.field)
        return value is not None and _text_test(self, str(value))


class Band(_Strict):
    """Frequency band: the rule is worth ``points`` in total once the count is in range."""

    min: Annotated[int, Field(ge=1)]
    max: Annotated[int, Field(ge=1)] | None = None
    points: float


class EngagementRule(_Strict):
    id: RuleId
    type: TouchpointType
    when: list[Condition] = Field(default_factory=list)
    points: float | None = None
    bands: list[Band] | None = None
    cap: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="most raw points this rule may give one lead in total"
    )
    expires_after_days: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="points count fully for this window, then expire (no decay)"
    )
    description: str = ""

    @model_validator(mode="after")
    def _points_or_bands(self) -> EngagementRule:
        if (self.points is None) == (self.bands is None):
            raise ValueError("an engagement rule needs exactly one of points or bands")
        if self.bands:
            previous_max = 0
            for band in self.bands:
                if band.min <= previous_max:
                    raise ValueError("bands must be ordered and must not overlap")
                if band.max is not None and band.max < band.min:
                    raise ValueError("band max must be >= min")
                previous_max = band.max if band.max is not None else 10**9
        return self

    def matches(self, record_type: str, context: Mapping[str, Any]) -> bool:
        return record_type == self.type and all(c.matches(context) for c in self.when)

    def band_total(self, count: int) -> float:
        """Total points this banded rule is worth after ``count`` matching touchpoints."""
        total = 0.0
        for band in self.bands or ():
            if count >= band.min:
                total = band.points
        return total


class FitRule(_Strict):
    id: RuleId
    field: Literal["title", "employees", "annual_revenue", "country", "industry", "company"]
    contains_any: list[str] | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    min: float | None = None
    max: float | None = None
    points: float
    description: str = ""

    @model_validator(mode="after")
    def _one_test(self) -> FitRule:
        has_text = self.contains_any is not None or self.in_ is not None
        has_range = self.min is not None or self.max is not None
        if has_text == has_range:
            raise ValueError("a fit rule needs either contains_any/in or min/max")
        return self

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


class Scoring(_Strict):
    mql_threshold: float = 50
    recycle_threshold: float = 20
    half_life_days: Annotated[float, Field(gt=0)] = 30
    engagement: list[EngagementRule] = Field(default_factory=list)
    fit: list[FitRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _thresholds(self) -> Scoring:
        if self.recycle_threshold >= self.mql_threshold:
            raise ValueError("recycle_threshold must be below mql_threshold")
        ids = [r.id for r in self.engagement] + [r.id for r in self.fit]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"rule ids must be unique: {', '.join(duplicates)}")
        return self


class AutoSql(_Strict):
    id: RuleId
    type: TouchpointType
    min_fit: float = 0
    min_score: float = 0


class Lifecycle(_Strict):
    dormant_after_days: Annotated[float, Field(gt=0)] = 60
    auto_sql: list[AutoSql] = Field(default_factory=list)


class Accounts(_Strict):
    surge_min_people: Annotated[int, Field(ge=2)] = 3
    surge_window_days: Annotated[float, Field(gt=0)] = 14
    surge_points: float = 10
    free_mail_domains: list[str] = Field(default_factory=list)


class Rep(_Strict):
    id: RuleId
    available: bool = True
    capacity: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="most open leads the rep may hold; full reps are skipped"
    )


class Team(_Strict):
    id: RuleId
    members: Annotated[list[str], Field(min_length=1)]
    strategy: Literal["round_robin", "least_loaded", "pool"] = "round_robin"


class RouteCondition(_Strict):
    country_in: list[str] | None = None
    employees_min: int | None = None
    employees_max: int | None = None
    industry_in: list[str] | None = None
    min_score: float | None = None

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


class RouteRule(_Strict):
    id: RuleId
    team: str
    when: RouteCondition = Field(default_factory=RouteCondition)


class Routing(_Strict):
    assign_on: Literal["mql", "created", "manual"] = "mql"
    first_contact_sla_hours: Annotated[float, Field(gt=0)] = 24
    fallback: str = Field(default="pool", description="'pool' or a team id")
    reps: list[Rep] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    rules: list[RouteRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Routing:
        reps = {r.id for r in self.reps}
        teams = {t.id for t in self.teams}
        for team in self.teams:
            unknown = [m for m in team.members if m not in reps]
            if unknown:
                raise ValueError(f"team {team.id!r} names unknown reps: {', '.join(unknown)}")
        for rule in self.rules:
            if rule.team not in teams:
                raise ValueError(f"routing rule {rule.id!r} names unknown team {rule.team!r}")
        if self.fallback != "pool" and self.fallback not in teams:
            raise ValueError(f"fallback {self.fallback!r} is neither 'pool' nor a team id")
        return self

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


class SegmentCondition(_Strict):
    """A test on a value of the message (``path``), compared as lower-case text."""

    path: SegmentPath
    equals: str | None = None
    contains: str | None = None
    prefix: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")

    @model_validator(mode="after")
    def _one_test(self) -> SegmentCondition:
        return _one_test(self)

    def matches(self, message: Mapping[str, Any]) -> bool:
        value = _segment_value(message, self.path)
        if value is None or isinstance(value, (dict, list)):
            return False
        return _text_test(self, str(value))


class SegmentRule(_Strict):
    """One Segment call mapped to a touchpoint: the first rule whose event names (``track``)
    and conditions match decides the type; ``context`` paths (first with a value wins) and
    ``context_defaults`` fill the touchpoint's context beside the mapping-wide ones."""

    id: RuleId
    type: TouchpointType
    when: list[SegmentCondition] = Field(default_factory=list)
    context: dict[ContextField, list[SegmentPath]] = Field(default_factory=dict)
    context_defaults: dict[ContextField, Annotated[str, Field(min_length=1, max_length=500)]] = (
        Field(default_factory=dict))
    traits_from: list[SegmentPath] = Field(
        default_factory=lambda: ["context.traits"],
        description="objects read as traits (identities, profile), first value wins")
    description: str = ""

    def matches(self, message: Mapping[str, Any]) -> bool:
        return all(c.matches(message) for c in self.when)


class SegmentTrack(SegmentRule):
    event: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                     Field(min_length=1)]


class SegmentIdentify(_Strict):
    """``identify`` calls: a person's identities and profile, recorded as ``identified``."""

    enabled: bool = True
    traits_from: list[SegmentPath] = Field(default_factory=lambda: ["traits", "context.traits"])


def _builtin_segment() -> dict[str, Any]:
    table = tomllib.loads(default_rules_text()).get("segment", {})
    return table if isinstance(table, dict) else {}


class SegmentMapping(_Strict):
    """How Segment-spec messages (``identify``, ``track``, ``page``) become records.

    ``userId`` becomes the lead's ``external_id`` (after ``user_id_prefix``),
    ``anonymousId`` its ``anonymous_id``; traits found at ``traits`` paths (relative to each
    rule's ``traits_from`` objects) give its email, phone and profile.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              ignored_types=(cached_property,))

    user_id_prefix: Annotated[str, Field(max_length=100)] = ""
    context: dict[ContextField, list[SegmentPath]] = Field(default_factory=dict)
    traits: dict[TraitField, list[SegmentPath]] = Field(
        default_factory=lambda: dict(_builtin_segment().get("traits", {})))
    identify: SegmentIdentify = Field(default_factory=SegmentIdentify)
    track: list[SegmentTrack] = Field(default_factory=list)
    page: list[SegmentRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> SegmentMapping:
        ids = [r.id for r in self.track] + [r.id for r in self.page]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"segment rule ids must be unique: {', '.join(duplicates)}")
        return self

    @cached_property
    def track_by_event(self) -> dict[str, tuple[SegmentTrack, ...]]:
        """Track rules per normalised event name, in file order."""
        index: dict[str, list[SegmentTrack]] = {}
        for rule in self.track:
            for name in rule.event:
                index.setdefault(segment_event_key(name), []).append(rule)
        return {name: tuple(rules) for name, rules in index.items()}


def _default_segment() -> SegmentMapping:
    return SegmentMapping.model_validate(_builtin_segment())


class Rules(_Strict):
    """A complete, validated rule set."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              ignored_types=(cached_property,))

    label: str = "custom"
    scoring: Scoring = Field(default_factory=Scoring)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    accounts: Accounts = Field(default_factory=Accounts)
    routing: Routing = Field(default_factory=Routing)
    #: Tracker intake (a file without ``[segment]`` gets the built-in mapping).
    segment: SegmentMapping = Field(default_factory=_default_segment)

    @cached_property
    def version(self) -> str:
        """Content hash: the same meaning gives the same version, whatever the formatting.

        The ``[segment]`` mapping is left out: it decides what record a tracker's message
        becomes, and that record (type, context) is what is stored and scored, so a score is
        reproduced from it and these rules alone; editing the mapping re-versions no score.
        """
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True, exclude={"segment"}),
                               sort_keys=True, separators=(",", ":"))
        return "r-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @cached_property
    def half_life_seconds(self) -> float:
        return self.scoring.half_life_days * 86400.0

    @cached_property
    def engagement_by_type(self) -> dict[str, tuple[EngagementRule, ...]]:
        """Engagement rules per record type, in file order: a touchpoint only tests the rules
        written for its type (most rule sets have one or two per type)."""
        index: dict[str, list[EngagementRule]] = {}
        for rule in self.scoring.engagement:
            index.setdefault(rule.type, []).append(rule)
        return {kind: tuple(rules) for kind, rules in index.items()}

    @cached_property
    def free_mail(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.accounts.free_mail_domains)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the field."""


def parse_rules(text: str, *, source: str = "<rules>") -> Rules:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
            problems.append(f"{where}: {err.get('msg')}")
        raise RulesError(f"{source}: invalid rules: " + "; ".join(problems)) from exc


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
    return (resources.files("leadflow.domain").joinpath("default_rules.toml")
            .read_text(encoding="utf-8"))


_DEFAULT: Rules | None = None


def default_rules() -> Rules:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = parse_rules(default_rules_text(), source="default_rules.toml")
    return _DEFAULT


def rules_json_schema() -> dict[str, Any]:
    schema = Rules.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "leadflow rules file"
    return schema
