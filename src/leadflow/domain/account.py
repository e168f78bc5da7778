"""Account: the company a lead belongs to, and its surge signal."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.ids import (
    account_id_for,
)
from leadflow.domain.topics import stable_topics

#: The engagement-table row (in place of a lead id) that holds the account's latest surge.
SURGE_ROW = UUID(int=0)


class Account(Aggregate):
    """A company; several of its people engaging in a short window is a buying signal."""

    class Event(events.Event):
        """Base of the Account's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id(account_key: str) -> UUID:
        return account_id_for(account_key)

    @event("Created")
    def __init__(self, account_key: str, name: str | None, occurred_at: datetime) -> None:
        self.account_key = account_key
        self.name = name
        self.recent: dict[str, datetime] = {}
        self.last_surge_at: datetime | None = None
        self.surges = 0
        # Whether ``recent`` holds the store's engagement rows yet (see Unit.fill_accounts).
        self.engagements_loaded = False

    def engage(self, lead_id: UUID, occurred_at: datetime) -> bool:
        """Note a person's engagement; True if it is news (their latest). Bookkeeping, not an
        event: the engine keeps it in the store's engagement table (store/bookkeeping.py),
        derived from the leads' touchpoints."""
        key = str(lead_id)
        last = self.recent.get(key)
        if last is None or occurred_at > last:
            self.recent[key] = occurred_at
            return True
        return False

    def load_engagements(self, found: dict[UUID, datetime]) -> None:
        """Merge the engagements the store holds (the later time wins); the row of
        ``SURGE_ROW`` is the account's latest surge."""
        for lead_id, at in found.items():
            if lead_id == SURGE_ROW:
                if self.last_surge_at is None or at > self.last_surge_at:
                    self.last_surge_at = at
                continue
            key = str(lead_id)
            if key not in self.recent or at > self.recent[key]:
                self.recent[key] = at
        self.engagements_loaded = True

    class Engaged(Event):
        """Written by stores before format 3; read so that they replay (and migrate)."""

        lead_id: UUID
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.recent[str(self.lead_id)] = self.occurred_at

    def engaged_within(self, at: datetime, window: timedelta) -> list[UUID]:
        return sorted(UUID(k) for k, t in self.recent.items() if at - window <= t <= at)

    def detect_surge(self, at: datetime, min_people: int, window: timedelta) -> list[UUID]:
        """Leads to boost if ``at`` starts a surge (one surge per window), else []."""
        if self.last_surge_at is not None and at - self.last_surge_at < window:
            return []
        # Count before building the sorted list: most touchpoints start no surge.
        since = at - window
        if sum(1 for t in self.recent.values() if since <= t <= at) < min_people:
            return []
        people = self.engaged_within(at, window)
        # Recorded on the lead whose record set it off (Lead.AccountSurged, in that record's
        # row); the account keeps it as bookkeeping, for the one-surge-per-window rule.
        self.last_surge_at = at
        self.surges += 1
        return people

    @event("Surged")
    def _surged(self, occurred_at: datetime, lead_ids: list[UUID], window_days: float) -> None:
        """Written by stores before format 3; read so that they replay (and migrate)."""
        self.last_surge_at = occurred_at
        self.surges += 1


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(Account)
