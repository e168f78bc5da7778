"""Interest: anonymous attention (a cookie), not yet a lead."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.ids import (
    interest_id_for,
)
from leadflow.domain.privacy import public_url
from leadflow.domain.topics import stable_topics


class Interest(Aggregate):
    """Anonymous attention (a cookie): kept until a record links it to a person."""

    class Event(events.Event):
        """Base of the Interest's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id(origin: str | None = None) -> UUID:
        # From the creating record's event id (see ids.py); one made by hand gets a random id.
        return interest_id_for(origin) if origin else uuid4()

    @event("Created")
    def __init__(self, anonymous_id: str | None, occurred_at: datetime,
                 origin: str | None = None) -> None:
        self.anonymous_id = anonymous_id
        self.touchpoints: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.linked_lead: UUID | None = None

    def note(self, event_id: str, record_type: str, occurred_at: datetime,
             context: dict[str, Any]) -> None:
        # An explicit event class, triggered directly: the @event method's per-call argument
        # handling cost as much as the event itself (as for the lead's frequent events).
        self.trigger_event(self.TouchpointNoted, event_id=event_id, record_type=record_type,
                           occurred_at=occurred_at, context=context)

    class TouchpointNoted(Event):
        event_id: str
        record_type: str
        occurred_at: datetime
        context: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.seen.add(self.event_id)
            aggregate.touchpoints.append({"event_id": self.event_id, "type": self.record_type,
                                          "occurred_at": self.occurred_at,
                                          "context": self.context})
            super().apply(aggregate)

    def link(self, lead_id: UUID, occurred_at: datetime) -> None:
        self._linked(lead_id=lead_id, occurred_at=occurred_at)

    @event("LinkedToLead")
    def _linked(self, lead_id: UUID, occurred_at: datetime) -> None:
        self.linked_lead = lead_id

    def forget(self, occurred_at: datetime, actor: str, reason: str) -> None:
        """The visitor asked to be erased: their data key is deleted with this event."""
        self._forgotten(occurred_at=occurred_at, actor=actor, reason=reason)

    @event("Forgotten")
    def _forgotten(self, occurred_at: datetime, actor: str, reason: str) -> None:
        self.anonymous_id = None
        self.touchpoints = [{**tp, "context": {**tp["context"], **{
            k: public_url(v) for k, v in tp["context"].items()
            if k in ("url", "landing_page") and isinstance(v, str)}}}
            for tp in self.touchpoints]


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(Interest)
