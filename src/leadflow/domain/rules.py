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
readings give the same records. The model validators both readings run are in
``rules_checks``, the quick reading's machinery (the records' base class) in ``rules_quick``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from leadflow.domain.rules_checks import (
    SCORING_MODEL,
    ContextField,
    TraitField,
    _TextTest,
    check_band_order,
    check_fit_test,
    check_model,
    check_primary,
    check_references,
    check_segment_ids,
    check_thresholds,
    one_test,
)
from leadflow.domain.rules_quick import (
    _CONTEXT_FIELD,
    _MODEL_ID,
    _RULE_ID,
    _SEGMENT_PATH,
    _STRINGS,
    _TOUCHPOINT,
    _TRAIT_FIELD,
    _build,
    _choice,
    _condition_field,
    _data,
    _Field,
    _flag,
    _from_model,
    _integer,
    _list,
    _mapping,
    _number,
    _optional,
    _Record,
    _record,
    _text,
    _Unsure,
)

if TYPE_CHECKING:

    from leadflow.domain.vocabulary import TouchpointType

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
