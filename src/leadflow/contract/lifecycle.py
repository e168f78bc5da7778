"""Outbound contract: lifecycle events relayed to ``leadflow.lifecycle`` for CRMs (v1).

Each message has a stable ``event_id`` (the lead id and the stored event's version), so a
downstream system can de-duplicate whatever the delivery guarantees in between.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from leadflow.domain import Lead

LifecycleType = Literal[
    "lead.mql_reached", "lead.sql_reached", "lead.owner_assigned", "lead.sent_to_pool",
    "lead.recycled", "lead.disqualified", "lead.converted", "lead.won", "lead.lost",
    "lead.score_threshold_crossed",
]

_STAGE_TYPES: dict[str, LifecycleType] = {
    "mql": "lead.mql_reached",
    "sql": "lead.sql_reached",
    "recycled": "lead.recycled",
    "disqualified": "lead.disqualified",
    "opportunity": "lead.converted",
    "customer": "lead.won",
    "lost": "lead.lost",
}


class LifecycleEvent(BaseModel):
    """One lifecycle fact about a lead, as CRMs receive it."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", title="leadflow lifecycle event v1",
        json_schema_extra={"$id": "https://leadflow.dev/schemas/lifecycle-event.v1.json"},
    )

    schema_version: Literal[1] = 1
    event_id: str = Field(description="Stable id '<lead_id>:<version>'; de-duplicate on it.")
    type: LifecycleType
    lead_id: UUID
    occurred_at: AwareDatetime = Field(description="Event time of the transition.")
    recorded_at: AwareDatetime = Field(description="When leadflow recorded it.")
    from_stage: str | None = None
    to_stage: str | None = None
    owner: str | None = None
    team: str | None = None
    actor: str | None = None
    reason: str | None = None
    rule: str | None = None
    strategy: str | None = None
    links: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(default=None, description=(
        "lead.score_threshold_crossed: the named scoring model ([models.<id>] in the rules)."))
    direction: Literal["up", "down"] | None = Field(default=None, description=(
        "lead.score_threshold_crossed: up when the model's score reached its threshold, "
        "down when it fell below it."))
    score: float | None = Field(default=None, description=(
        "lead.score_threshold_crossed: the model's score at the crossing."))
    threshold: float | None = Field(default=None, description=(
        "lead.score_threshold_crossed: the model's threshold."))
    rules_version: str | None = Field(default=None, description=(
        "lead.score_threshold_crossed: the rules version that scored it."))


STAGE_CHANGED: type[Any] = Lead.StageChanged
OWNER_ASSIGNED: type[Any] = Lead.OwnerAssigned
MODEL_THRESHOLD_CROSSED: type[Any] = Lead.ModelThresholdCrossed
RELAYED_EVENT_CLASSES = (STAGE_CHANGED, OWNER_ASSIGNED, MODEL_THRESHOLD_CROSSED)


def to_lifecycle(event: Any) -> LifecycleEvent | None:
    """Map a stored Lead event to the outbound message, or None if CRMs don't need it."""
    if not isinstance(event, RELAYED_EVENT_CLASSES):
        return None  # an envelope (one row per record) also holds events CRMs don't need
    lead_id = event.originator_id
    common: dict[str, Any] = {
        "event_id": f"{lead_id}:{event.originator_version}",
        "lead_id": lead_id,
        "occurred_at": event.occurred_at,
        "recorded_at": _aware(event.timestamp),
    }
    if isinstance(event, STAGE_CHANGED):
        kind = _STAGE_TYPES.get(event.to_stage)
        if kind is None:
            return None
        return LifecycleEvent(type=kind, from_stage=event.from_stage, to_stage=event.to_stage,
                              actor=event.actor, reason=event.reason, links=event.links,
                              **common)
    if isinstance(event, OWNER_ASSIGNED):
        kind = "lead.owner_assigned" if event.owner else "lead.sent_to_pool"
        return LifecycleEvent(type=kind, owner=event.owner, team=event.team, actor=event.actor,
                              reason=event.reason, rule=event.rule, strategy=event.strategy,
                              **common)
    if isinstance(event, MODEL_THRESHOLD_CROSSED):
        return LifecycleEvent(type="lead.score_threshold_crossed", model=event.model,
                              direction=event.direction, score=round(event.score, 4),
                              threshold=event.threshold, rules_version=event.rules_version,
                              **common)
    return None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.astimezone()


def lifecycle_json_schema() -> dict[str, Any]:
    schema = LifecycleEvent.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
