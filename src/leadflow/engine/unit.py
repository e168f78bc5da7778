"""The batch unit of work: the aggregates one batch (or command) has loaded or created,
saved together in one transaction at its end."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Repository
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import PersistenceError

from leadflow.domain import AggregateUnloadableError
from leadflow.store.fold import Cause

A = TypeVar("A", bound=Aggregate)

#: Failures of the database or the machine, not of a record: they abort the batch and are
#: raised (the consumer retries, then stops loudly). Any other exception while applying a
#: record is that record's fault ("poison") and only costs that record.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    PersistenceError, psycopg.Error, sqlite3.Error, OSError, MemoryError)


_KINDS = {"Lead": "lead", "IdentityIndex": "identity index", "Interest": "interest",
          "Account": "account", "Router": "router", "Clock": "clock",
          "TimerBucket": "timer bucket", "RuleBook": "rule book"}


@contextmanager
def unloadable(aggregate_id: UUID, kind: str = "lead") -> Iterator[None]:
    """Stored events that cannot be decoded or replayed: AggregateUnloadableError.

    Infrastructure failures (the database is gone), an aggregate that does not exist and
    leadflow's own errors pass through.
    """
    try:
        yield
    except (AggregateNotFoundError, AggregateUnloadableError):
        raise
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        raise AggregateUnloadableError(aggregate_id, kind, exc) from exc


class Unit:
    """The aggregates one batch has loaded or created; saved together at the end."""

    def __init__(self, repository: Repository[UUID]) -> None:
        self.repository = repository
        self.touched: dict[UUID, Aggregate] = {}
        self.absent: set[UUID] = set()
        # Aggregates whose stored events cannot be loaded, with the reason (see _load_into).
        self.unloadable: dict[UUID, BaseException] = {}
        # Each settled lead's next time-driven check (None: none), for the timer index.
        self.timers: dict[UUID, datetime | None] = {}
        # Where each aggregate's pending events end for one cause (a record), and why: each
        # cause's events are stored as one row (store/fold.py).
        self.cuts: dict[UUID, list[tuple[int, Cause]]] = {}
        # The cause of events after the last cut (a clock step, a command).
        self.cause: Cause | None = None
        self.used: dict[UUID, Aggregate] = {}

    def seal(self, cause: Cause) -> None:
        """The events triggered since the last seal were caused by ``cause``."""
        cuts = self.cuts
        # Only what was handed out since the last seal can have new events (every change
        # goes through an aggregate got from this unit); scanning all of ``touched`` per
        # record would cost O(batch) each time.
        for aggregate in self.used.values():
            count = len(aggregate.pending_events)
            if count:
                mine = cuts.get(aggregate.id)
                if mine is None:
                    cuts[aggregate.id] = [(count, cause)]
                elif count > mine[-1][0]:
                    mine.append((count, cause))
        self.used.clear()

    def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        found = self.touched.get(aggregate_id)
        if found is None:
            if aggregate_id in self.absent:
                return None
            kind = _KINDS.get(cls.__name__, cls.__name__)
            if aggregate_id in self.unloadable:
                raise AggregateUnloadableError(aggregate_id, kind, self.unloadable[aggregate_id])
            try:
                with unloadable(aggregate_id, kind):  # a damaged store: named, not a crash
                    found = self.repository.get(aggregate_id)
            except AggregateNotFoundError:
                self.absent.add(aggregate_id)
                return None
            except AggregateUnloadableError as exc:
                self.unloadable[aggregate_id] = exc.cause
                raise
            self.touched[aggregate_id] = found
        self.used[aggregate_id] = found
        if not isinstance(found, cls):
            raise TypeError(f"aggregate {aggregate_id} is a {type(found).__name__}, "
                            f"not a {cls.__name__}")
        return found

    def add(self, aggregate: A) -> A:
        self.touched[aggregate.id] = aggregate
        self.used[aggregate.id] = aggregate
        self.absent.discard(aggregate.id)
        return aggregate

    def pending(self) -> int:
        return sum(len(a.pending_events) for a in self.touched.values())
