"""The read-model rows as the handlers hold them: their columns, and how values are written
into them (free text masked, identity lists and fit_awards as JSON, counts as the INTEGER
columns hold them)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from leadflow.domain.privacy import public_url
from leadflow.projections.db import INT_RANGE, clean_text, to_int, to_real, to_text
from leadflow.projections.schema import FUNNEL
from leadflow.redaction import mask_text

INT_LO, INT_HI = INT_RANGE
RANK = {stage: i for i, stage in enumerate(FUNNEL)}
#: The "reached" columns a stage sets: reaching it means passing every funnel stage before it.
_REACHED = {stage: tuple(f"reached_{s}_at" for s in FUNNEL[1:RANK[stage] + 1])
            for stage in FUNNEL}
LEAD_COLUMNS = (
    "lead_id", "primary_key", "identities", "created_at", "source", "campaign", "landing_page",
    "country", "company", "industry", "employees", "title", "segment", "account_id", "stage",
    "stage_at", "stage_reason", "owner", "team", "in_pool", "deal_owner", "contacted_at", "fit",
    "fit_awards", "engagement_value", "engagement_as_of", "half_life_days", "last_touch_at",
    "touchpoints", "dormant", "reached_mql_at", "reached_sql_at", "reached_opportunity_at",
    "reached_customer_at", "disqualified_at", "disqualified_reason", "recycled_at",
    "recycled_reason", "lost_at", "lost_reason", "deal_id", "deal_amount", "deal_currency",
    "merged_into",
)
ACCOUNT_COLUMNS = ("account_id", "account_key", "name", "engagements", "surges",
                   "last_engaged_at", "last_surge_at", "surge_window_days")
#: A named model's state on a lead (``[models.<id>]``; the primary model's is in the lead's
#: own row).
MODEL_COLUMNS = ("lead_id", "model", "fit", "fit_awards", "engagement_value",
                 "engagement_as_of", "half_life_days", "threshold", "above", "crossed_at")
#: The events that change a lead's named-model rows (a page loads them for these leads only).
MODEL_EVENTS = frozenset({"ModelsScored", "ModelThresholdCrossed", "ModelBackfilled",
                          "StateRestored"})

#: Texts already masked (landing pages and reasons repeat across leads), and fit_awards
#: texts already read: bounded like events' parsed times.
_MASKED: dict[str, str] = {}
_FIT_READ: dict[str, dict[str, float]] = {}
_CACHE_MAX = 1 << 14
#: ``json.dumps(..., sort_keys=True)``, without making an encoder per call.
_SORTED_JSON = json.JSONEncoder(sort_keys=True).encode
#: Text that ``json.dumps`` writes as it is between its quotes: printable ASCII but the quote
#: and the backslash (it escapes those, control characters and, by default, all non-ASCII).
_PLAIN = re.compile(r'[ !#-\[\]-~]*').fullmatch


def _json_list(items: Any) -> str:
    """``json.dumps(items)``: a list of plain texts (identity keys) written directly, as the
    encoder writes it (its Python entry point costs several times the writing)."""
    if type(items) is not list:
        return json.dumps(items)
    for item in items:
        if type(item) is not str or _PLAIN(item) is None:
            return json.dumps(items)
    return '["' + '", "'.join(items) + '"]' if items else "[]"


def _fit_json(points: dict[str, float]) -> str:
    """A fit_awards text: ``json.dumps`` of the points by rule with sorted keys, a point
    that is no finite number as null. ``points`` are floats (``_number``): with plain rule
    ids the text is written directly, each float as the encoder writes it (its repr)."""
    parts = []
    for rule in sorted(points):
        if _PLAIN(rule) is None:
            return _SORTED_JSON({r: p if math.isfinite(p) else None
                                 for r, p in points.items()})
        point = points[rule]
        parts.append(f'"{rule}": {float.__repr__(point) if math.isfinite(point) else "null"}')
    return "{" + ", ".join(parts) + "}"


def free_text(value: Any) -> Any:
    """A reason or URL as the analysts' tables hold it: a person's email or phone typed into
    it (a rep's note, ``?email=`` in a landing page) masked, since those tables are read
    without access to personal data. The event store keeps the text as it came."""
    if not isinstance(value, str):
        return value
    masked = _MASKED.get(value)
    if masked is None:
        masked = mask_text(value)
        if len(_MASKED) >= _CACHE_MAX:
            _MASKED.clear()
        _MASKED[value] = masked
    return masked


def _forget_row(row: dict[str, Any]) -> None:
    # As a rebuild reads the person's events: identities, title, URL query and the typed
    # reasons were sealed with the deleted key (domain/privacy.py).
    row.update(primary_key=None, identities="[]", title=None,
               landing_page=public_url(row["landing_page"]) if row["landing_page"] else None,
               stage_reason=None, disqualified_reason=None, recycled_reason=None,
               lost_reason=None)


def size_band(employees: Any) -> str:
    employees = to_int(employees)  # as the column holds it (a 400-digit number is NULL)
    if employees is None:
        return "size?"
    if employees <= 10:
        return "1-10"
    if employees <= 50:
        return "11-50"
    if employees <= 250:
        return "51-250"
    return "251+"


def segment_of(row: dict[str, Any]) -> str:
    """Geography x company size: the segments seed 003 reports on by default."""
    return f"{to_text(row.get('country')) or '??'}/{size_band(row.get('employees'))}"


def _model_id(value: Any) -> str:
    """A model id as the column holds it (ids are keys of stored objects, which the reading
    of stored events leaves as they are)."""
    return clean_text(value if isinstance(value, str) else str(value))


def _fit_points(text: str) -> dict[str, float]:
    """A fit_awards text's points by rule (``_number`` each). Shared between the rows
    holding the same text: callers only read it."""
    points = _FIT_READ.get(text)
    if points is None:
        points = {r: _number(p) for r, p in json.loads(text).items()}
        if len(_FIT_READ) >= _CACHE_MAX:
            _FIT_READ.clear()
        _FIT_READ[text] = points
    return points


def _number(value: Any) -> float:
    """A finite float, or NaN for what is none (inf, NaN, null, 1e400, text)."""
    number = to_real(value)
    return math.nan if number is None else number


def _plus(count: Any, more: Any) -> int | None:
    """A count plus more, as the INTEGER column holds it: NULL once either is no integer
    in range (and from then on), the same whether the count was just read back or not."""
    a, b = to_int(count), to_int(more)
    return None if a is None or b is None else to_int(a + b)
