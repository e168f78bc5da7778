"""DuplicatePair: what people decided about two leads that might be one person.

``leadflow dedupe suggest`` proposes pairs; a person either merges them (``leadflow merge``,
recorded here as ``Confirmed`` in the same transaction as the merge) or says they are two
people (``leadflow dedupe reject``: ``Rejected``), after which the pair is never suggested
again. One aggregate per unordered pair of lead ids, so two people deciding about different
pairs never contend; its log is the audit trail of the decisions about that pair.

Actors and reasons are stored readable (like ``forget``'s): they must name no person.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.errors import LeadflowError
from leadflow.domain.topics import stable_topics

# Fixed forever: changing it would re-key every stored pair.
NS_PAIR = UUID("5d0f3b7e-9c21-4e6a-8b4d-1f2a3c4e5d66")


def ordered(lead_a: UUID, lead_b: UUID) -> tuple[UUID, UUID]:
    """The pair in a canonical order (so A,B and B,A are one pair)."""
    return (lead_a, lead_b) if str(lead_a) <= str(lead_b) else (lead_b, lead_a)


class AlreadyRejectedError(LeadflowError):
    """The pair was already rejected: nothing new to record."""

    reason = "already_rejected"


class SameLeadError(LeadflowError):
    """Both leads named are one lead already (the same, or merged into each other)."""

    reason = "same_lead"


class DuplicatePair(Aggregate):
    """People's decisions about two leads: rejected (two people) or confirmed (merged)."""

    class Event(events.Event):
        """Base of the DuplicatePair's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id(lead_a: UUID, lead_b: UUID) -> UUID:
        low, high = ordered(lead_a, lead_b)
        return uuid5(NS_PAIR, f"pair:{low}|{high}")

    @event("Created")
    def __init__(self, lead_a: UUID, lead_b: UUID) -> None:
        self.lead_a, self.lead_b = ordered(lead_a, lead_b)
        self.rejected: dict[str, Any] | None = None
        self.confirmed: dict[str, Any] | None = None

    def reject(self, actor: str, reason: str, occurred_at: datetime) -> None:
        """A person says the two leads are two people: never suggest them again."""
        if self.rejected is not None:
            raise AlreadyRejectedError(
                f"leads {self.lead_a} and {self.lead_b} were already rejected as duplicates "
                f"by {self.rejected['actor']} at {self.rejected['at'].isoformat()}")
        self._rejected(actor=actor, reason=reason, occurred_at=occurred_at)

    @event("Rejected")
    def _rejected(self, actor: str, reason: str, occurred_at: datetime) -> None:
        self.rejected = {"actor": actor, "reason": reason, "at": occurred_at}

    def confirm(self, survivor_id: UUID, merged_id: UUID, actor: str, reason: str,
                occurred_at: datetime) -> None:
        """A person merged the two leads (``merged_id`` into ``survivor_id``)."""
        self._confirmed(survivor_id=survivor_id, merged_id=merged_id, actor=actor,
                        reason=reason, occurred_at=occurred_at)

    @event("Confirmed")
    def _confirmed(self, survivor_id: UUID, merged_id: UUID, actor: str, reason: str,
                   occurred_at: datetime) -> None:
        self.confirmed = {"survivor": survivor_id, "merged": merged_id, "actor": actor,
                          "reason": reason, "at": occurred_at}
        # A later rejection (after an unmerge) is a new decision: the earlier one is kept in
        # the log, and the pair may be rejected again.
        self.rejected = None


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(DuplicatePair)
