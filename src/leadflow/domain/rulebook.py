"""RuleBook: the rules versions published for live scoring."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from leadflow.domain import events
from leadflow.domain.ids import rule_book_id
from leadflow.domain.topics import stable_topics


class RuleBook(Aggregate):
    """The rules versions published for live scoring (``leadflow rescore --apply``)."""

    class Event(events.Event):
        """Base of the RuleBook's events (built cheaper: ``domain.events``)."""

    @staticmethod
    def create_id() -> UUID:
        return rule_book_id()

    @event("Created")
    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None

    def publish(self, version: str, label: str, text: str, occurred_at: datetime,
                actor: str) -> None:
        if self.current is None or self.current["version"] != version:
            self._published(version=version, label=label, text=text, occurred_at=occurred_at,
                            actor=actor)

    @event("Published")
    def _published(self, version: str, label: str, text: str, occurred_at: datetime,
                   actor: str) -> None:
        self.current = {"version": version, "label": label, "text": text,
                        "published_at": occurred_at, "actor": actor}


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(RuleBook)
