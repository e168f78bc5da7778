"""The rules file as pydantic models: what validates a rules file that
:mod:`leadflow.domain.rules` cannot vouch for by itself, and what names each problem (the
field, what is wrong); also the published JSON Schema (``schemas/rules.schema.json``).

These are the models ``leadflow.domain.rules`` was written with. Scoring and routing run on
the plain, frozen records of that module instead: a command that only reads the built-in or
the published rules (``lead show``) never imports pydantic, which costs more at start-up than
the command itself. ``tests/unit/test_rules_quick.py`` keeps the two readings equal.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from leadflow.domain.rules import builtin_segment
from leadflow.domain.rules_checks import (
    CONDITION_FIELD,
    MODEL_ID,
    check_band_order,
    check_condition_field,
    check_fit_test,
    check_model,
    check_primary,
    check_references,
    check_segment_ids,
    check_thresholds,
    one_test,
)
from leadflow.domain.vocabulary import TouchpointType

RuleId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
ModelId = Annotated[str, Field(pattern=rf"^{MODEL_ID}$")]
ContextField = Literal["url", "form_id", "content_id", "landing_page", "source", "campaign"]
#: A condition's field: a context field or ``properties.<key>`` (an unknown one is named).
ConditionField = Annotated[str, AfterValidator(check_condition_field), WithJsonSchema({
    "type": "string", "pattern": f"^{CONDITION_FIELD}$",
    "description": "a context field (url, form_id, content_id, landing_page, source, "
                   "campaign) or properties.<key>, a custom property of the record"})]
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


class Condition(_Strict):
    """A test on one context field of a touchpoint, or on one of its custom properties
    (``properties.<key>``; a boolean reads as ``true``/``false``, a number as written)."""

    field: ConditionField
    equals: str | None = None
    contains: str | None = None
    prefix: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        return one_test(self)


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
        return check_band_order(self)


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
        return check_fit_test(self)


class Scoring(_Strict):
    mql_threshold: float = 50
    recycle_threshold: float = 20
    half_life_days: Annotated[float, Field(gt=0)] = 30
    engagement: list[EngagementRule] = Field(default_factory=list)
    fit: list[FitRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _thresholds(self) -> Scoring:
        return check_thresholds(self)


class Model(_Strict):
    """A named scoring model beside the primary one (``[scoring]``, or the model
    ``[lifecycle] primary_model`` names): its own engagement and fit rules, half-life and
    threshold. It records its own points and threshold crossings; the lifecycle is driven
    by the primary model only (``recycle_threshold`` is read when this model is it)."""

    threshold: float
    half_life_days: Annotated[float, Field(gt=0)] = 30
    engagement: list[EngagementRule] = Field(default_factory=list)
    fit: list[FitRule] = Field(default_factory=list)
    description: str = ""
    recycle_threshold: float | None = Field(
        default=None, description="when this model is the primary one: an MQL whose score "
        "decays below it is recycled")

    @model_validator(mode="after")
    def _unique(self) -> Model:
        return check_model(self)


class AutoSql(_Strict):
    id: RuleId
    type: TouchpointType
    min_fit: float = 0
    min_score: float = 0


class Lifecycle(_Strict):
    dormant_after_days: Annotated[float, Field(gt=0)] = 60
    auto_sql: list[AutoSql] = Field(default_factory=list)
    primary_model: ModelId | None = Field(
        default=None, description="the named model that drives the lifecycle (default: "
        "[scoring], which then scores as the named model 'scoring')")


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
        return check_references(self)


class SegmentCondition(_Strict):
    """A test on a value of the message (``path``), compared as lower-case text."""

    path: SegmentPath
    equals: str | None = None
    contains: str | None = None
    prefix: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")

    @model_validator(mode="after")
    def _one_test(self) -> SegmentCondition:
        return one_test(self)


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


class SegmentTrack(SegmentRule):
    event: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                     Field(min_length=1)]


class SegmentIdentify(_Strict):
    """``identify`` calls: a person's identities and profile, recorded as ``identified``."""

    enabled: bool = True
    traits_from: list[SegmentPath] = Field(default_factory=lambda: ["traits", "context.traits"])


class SegmentMapping(_Strict):
    """How Segment-spec messages (``identify``, ``track``, ``page``) become records.

    ``userId`` becomes the lead's ``external_id`` (after ``user_id_prefix``),
    ``anonymousId`` its ``anonymous_id``; traits found at ``traits`` paths (relative to each
    rule's ``traits_from`` objects) give its email, phone and profile.
    """

    user_id_prefix: Annotated[str, Field(max_length=100)] = ""
    context: dict[ContextField, list[SegmentPath]] = Field(default_factory=dict)
    traits: dict[TraitField, list[SegmentPath]] = Field(
        default_factory=lambda: dict(builtin_segment().get("traits", {})))
    identify: SegmentIdentify = Field(default_factory=SegmentIdentify)
    track: list[SegmentTrack] = Field(default_factory=list)
    page: list[SegmentRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> SegmentMapping:
        return check_segment_ids(self)


def _default_segment() -> SegmentMapping:
    return SegmentMapping.model_validate(builtin_segment())


class Rules(_Strict):
    """A complete, validated rule set."""

    label: str = "custom"
    scoring: Scoring = Field(default_factory=Scoring)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    accounts: Accounts = Field(default_factory=Accounts)
    routing: Routing = Field(default_factory=Routing)
    #: Tracker intake (a file without ``[segment]`` gets the built-in mapping).
    segment: SegmentMapping = Field(default_factory=_default_segment)
    #: Named models beside the primary one (``[scoring]``), by id, in file order.
    models: dict[ModelId, Model] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _primary(self) -> Rules:
        return check_primary(self)
