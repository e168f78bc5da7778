"""Router: round-robin cursors, rep load and availability."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.ids import (
    singleton_id,
)
from leadflow.domain.topics import stable_topics


class Router(Aggregate):
    """Routing state shared by all leads: round-robin cursors, rep load, availability.

    Only availability is recorded as events. Load and cursors are bookkeeping in the store's
    counters table (store/bookkeeping.py), changed atomically by every writer and read
    afresh by each unit of work (``Unit.router``): a shared aggregate written by every record
    would make concurrent writers conflict on every batch. ``LeadTaken``, ``LeadReleased``
    and ``CursorAdvanced`` are still read, from stores written before format 3.
    """

    class Event(events.Event):
        """Base of the Router's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id() -> UUID:
        return singleton_id("router")

    @event("Created")
    def __init__(self) -> None:
        self.cursors: dict[str, int] = {}
        self.load: dict[str, int] = {}
        self.availability: dict[str, bool] = {}

    def take(self, rep: str, lead_id: UUID, occurred_at: datetime) -> None:
        self._taken(rep=rep, lead_id=lead_id, occurred_at=occurred_at)

    @event("LeadTaken")
    def _taken(self, rep: str, lead_id: UUID, occurred_at: datetime) -> None:
        self.load[rep] = self.load.get(rep, 0) + 1

    def advance_cursor(self, team: str, cursor: int, occurred_at: datetime) -> None:
        if self.cursors.get(team) != cursor:
            self._cursor_advanced(team=team, cursor=cursor, occurred_at=occurred_at)

    @event("CursorAdvanced")
    def _cursor_advanced(self, team: str, cursor: int, occurred_at: datetime) -> None:
        self.cursors[team] = cursor

    def release(self, rep: str, lead_id: UUID, occurred_at: datetime) -> None:
        self._released(rep=rep, lead_id=lead_id, occurred_at=occurred_at)

    @event("LeadReleased")
    def _released(self, rep: str, lead_id: UUID, occurred_at: datetime) -> None:
        self.load[rep] = max(0, self.load.get(rep, 0) - 1)

    def set_availability(self, rep: str, available: bool, occurred_at: datetime) -> None:
        if self.availability.get(rep) != available:
            self._availability_set(rep=rep, available=available, occurred_at=occurred_at)

    @event("AvailabilitySet")
    def _availability_set(self, rep: str, available: bool, occurred_at: datetime) -> None:
        self.availability[rep] = available


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(Router)
