"""The rules file's model validators, written once: the pydantic models (``rules_schema``) and
the quick reading (``rules_quick``) both call them. They read attributes only, so either kind
of object will do. Also the field patterns both readings test against.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol, TypeVar

ContextField = Literal["url", "form_id", "content_id", "landing_page", "source", "campaign"]
CONTEXT_FIELDS = ("url", "form_id", "content_id", "landing_page", "source", "campaign")
#: What a rule's condition may test: a context field, or a custom property of the record
#: (``properties.<key>``, ``context.properties`` in the inbound contract).
CONDITION_FIELD = (r"(url|form_id|content_id|landing_page|source|campaign"
                   r"|properties\.[A-Za-z0-9_][A-Za-z0-9_-]{0,63})")
CONDITION_FIELD_RE = re.compile(CONDITION_FIELD)
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


# The model validators, written once: the pydantic models (rules_schema) and the quick reading
# below both call them. They read attributes only, so either kind of object will do.


def _unique_ids(table: Any, first: str, second: str, message: str) -> None:
    """The ids of the rules in ``table``'s two lists must not repeat: ``message`` names the
    ones that do."""
    ids = [r.id for r in getattr(table, first)] + [r.id for r in getattr(table, second)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{message}: {', '.join(duplicates)}")


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
    _unique_ids(scoring, "engagement", "fit", "rule ids must be unique")
    return scoring


def check_condition_field(field: str) -> str:
    """A condition's field: a context field or ``properties.<key>``; anything else is named."""
    if CONDITION_FIELD_RE.fullmatch(field) is None:
        raise ValueError(f"unknown field {field!r}: a condition tests one of "
                         f"{', '.join(CONTEXT_FIELDS)} or properties.<key> (a custom property "
                         "of the record: letters, digits, _ and -)")
    return field


def check_model(model: _M) -> _M:
    _unique_ids(model, "engagement", "fit", "rule ids must be unique within a model")
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
    _unique_ids(segment, "track", "page", "segment rule ids must be unique")
    return segment
