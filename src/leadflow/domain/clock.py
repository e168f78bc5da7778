"""Clock and TimerBucket: event time advanced by `clock advance`, and per-day wake-ups."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.ids import (
    singleton_id,
)
from leadflow.domain.topics import stable_topics


class Clock(Aggregate):
    """How far event time has been advanced, and which timer days exist."""

    class Event(events.Event):
        """Base of the Clock's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id() -> UUID:
        return singleton_id("clock")

    @event("Created")
    def __init__(self) -> None:
        self.position: datetime | None = None
        self.days: list[str] = []

    def open_day(self, day: str) -> None:
        if day not in self.days:
            self._day_opened(day=day)

    @event("DayOpened")
    def _day_opened(self, day: str) -> None:
        self.days.append(day)
        self.days.sort()

    def advance(self, to: datetime) -> None:
        if self.position is None or to > self.position:
            self._advanced(to=to)

    @event("Advanced")
    def _advanced(self, to: datetime) -> None:
        self.position = to


def day_of(at: datetime) -> str:
    return at.date().isoformat()


class TimerBucket(Aggregate):
    """Wake-up hints for one day: leads to re-evaluate when event time passes ``at``.

    Hints are never cancelled; a lead re-checks its state when woken, so a stale hint is
    harmless. This is what lets the clock find due leads without scanning every lead.
    """

    class Event(events.Event):
        """Base of the TimerBucket's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id(day: str) -> UUID:
        return singleton_id(f"timers:{day}")

    @event("Created")
    def __init__(self, day: str) -> None:
        self.day = day
        self.entries: list[tuple[datetime, UUID]] = []

    def set(self, lead_id: UUID, at: datetime) -> None:
        self.trigger_event(self.WakeSet, lead_id=lead_id, at=at)

    class WakeSet(Event):
        lead_id: UUID
        at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.entries.append((self.at, self.lead_id))

    def due(self, after: datetime | None, until: datetime) -> list[tuple[datetime, UUID]]:
        return sorted(e for e in self.entries if (after is None or e[0] > after) and e[0] <= until)


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(Clock)
stable_topics(TimerBucket)
