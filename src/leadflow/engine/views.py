"""What the engine answers with for one record or one lead: per-record outcomes and lead views
(frozen DTOs, never live aggregates). What a whole command answers with (a batch, the clock,
forget, a migration) is in ``results``, which reading a lead (``lead show``) does not import:
each frozen dataclass costs about a millisecond to define (start-up, issue 15)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class RecordResult:
    index: int
    event_id: str
    outcome: Outcome
    lead_id: UUID | None = None
    reason: str | None = None
    detail: str | None = None
    error_class: str | None = None


@dataclass(frozen=True, slots=True)
class RuleContribution:
    rule: str
    kind: str  # "fit" | "engagement"
    points: float  # original points
    value: float  # contribution at the query time (decayed / expired)
    count: int


def _breakdown_json(breakdown: tuple[RuleContribution, ...]) -> list[dict[str, Any]]:
    return [{"rule": c.rule, "kind": c.kind, "points": c.points, "value": round(c.value, 4),
             "count": c.count} for c in breakdown]


@dataclass(frozen=True, slots=True)
class ModelScore:
    """A named model's score of a lead at the view's time (the primary model's is the
    view's own ``score``)."""

    fit: float
    engagement: float
    score: float
    threshold: float
    breakdown: tuple[RuleContribution, ...]

    def to_json(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "fit": round(self.fit, 4),
                "engagement": round(self.engagement, 4), "threshold": self.threshold,
                "breakdown": _breakdown_json(self.breakdown)}


@dataclass(frozen=True, slots=True)
class LeadView:
    lead_id: UUID
    primary_key: str | None  # None once the person is forgotten
    identities: tuple[str, ...]
    at: datetime
    stage: str | None
    stage_now: str
    owner: str | None
    team: str | None
    in_pool: bool
    fit: float
    engagement: float
    score: float
    breakdown: tuple[RuleContribution, ...]
    created_at: datetime
    source: str | None
    campaign: str | None
    account_id: UUID | None
    dormant: bool
    touchpoints: int
    last_touch_at: datetime | None
    merged_from: tuple[UUID, ...]
    transitions: tuple[dict[str, Any], ...]
    profile: dict[str, Any] = field(default_factory=dict)
    forgotten: bool = False
    #: The named models' scores (``[models.<id>]``), by id; empty when the rules have none.
    models: dict[str, ModelScore] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "lead_id": str(self.lead_id),
            "primary_key": self.primary_key,
            "forgotten": self.forgotten,
            "identities": list(self.identities),
            "at": self.at.isoformat(),
            "stage": self.stage,
            "stage_now": self.stage_now,
            "owner": self.owner,
            "team": self.team,
            "in_pool": self.in_pool,
            "fit": round(self.fit, 4),
            "engagement": round(self.engagement, 4),
            "score": round(self.score, 4),
            "breakdown": _breakdown_json(self.breakdown),
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "campaign": self.campaign,
            "account_id": str(self.account_id) if self.account_id else None,
            "dormant": self.dormant,
            "touchpoints": self.touchpoints,
            "last_touch_at": self.last_touch_at.isoformat() if self.last_touch_at else None,
            "merged_from": [str(i) for i in self.merged_from],
            "transitions": [
                {**t, "at": t["at"].isoformat()} for t in self.transitions
            ],
            "profile": self.profile,
            **({"models": {model_id: m.to_json() for model_id, m in self.models.items()}}
               if self.models else {}),
        }


def finite(value: Any, digits: int | None = 4) -> float | None:
    """A number for a JSON answer: rounded (``digits``), None when it is no finite number
    (a damaged store can hold ``Infinity``, which JSON cannot)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    return number if digits is None else round(number, digits)


def record_time(event: Any) -> datetime:
    """When leadflow stored the event (its ``timestamp``), in UTC."""
    stamp: datetime = event.timestamp
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
