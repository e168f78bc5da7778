"""IdentityIndex: one identity key pointing at its lead or interest."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.ids import (
    identity_index_id,
)
from leadflow.domain.topics import stable_topics


class IdentityIndex(Aggregate):
    """Maps one identity key to the lead (or anonymous interest) it belongs to."""

    class Event(events.Event):
        """Base of the IdentityIndex's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id(key: str) -> UUID:
        return identity_index_id(key)

    @event("Registered")
    def __init__(self, key: str, target_id: UUID, is_interest: bool,
                 occurred_at: datetime) -> None:
        self.key = key
        self.target_id = target_id
        self.is_interest = is_interest

    def repoint(self, target_id: UUID, is_interest: bool, occurred_at: datetime,
                reason: str) -> None:
        if target_id != self.target_id or is_interest != self.is_interest:
            self._repointed(target_id=target_id, is_interest=is_interest,
                            occurred_at=occurred_at, reason=reason)

    @event("Repointed")
    def _repointed(self, target_id: UUID, is_interest: bool, occurred_at: datetime,
                   reason: str) -> None:
        self.target_id = target_id
        self.is_interest = is_interest


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(IdentityIndex)
