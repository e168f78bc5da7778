"""The in-memory process recorder (tests and demos): eventsourcing's, plus the record-id
index, the timer index and the bookkeeping tables the other recorders keep
(``leadflow.store.recorders``), under the same checks."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.popo import POPOProcessRecorder

from leadflow.store import bookkeeping, books_embedded
from leadflow.store.bookkeeping import Target
from leadflow.store.recorders import Due, RecordId, RecordIdIndex, ScannedRow, record_ids_of
from leadflow.store.timers import (
    CLOCK_POSITION,
    TIMERS_EPOCH,
    check_reads,
    timer_writes,
    timers_exact,
)


class LeadflowPOPOProcessRecorder(POPOProcessRecorder, RecordIdIndex):
    """The in-memory process recorder plus the record-id index (for tests and demos)."""

    def __init__(self) -> None:
        super().__init__()
        self._record_ids: dict[str, RecordId] = {}
        self._record_ids_lock = threading.Lock()
        self._timers: dict[UUID, datetime] = {}
        # Where the commit being stored moves the clock (check_reads, then _update_table).
        self._moved_to: datetime | None = None
        self._meta: dict[str, str] = {}
        self._books = books_embedded.MemoryBooks()

    def select_identities(self, keys: Sequence[str]) -> dict[str, Target]:
        with self._record_ids_lock:
            known = self._books.identities
            return {k: known[k] for k in keys if k in known}

    def select_engagements(self, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
        with self._record_ids_lock:
            known = self._books.engagements
            return {a: dict(known[a]) for a in account_ids if a in known}

    def select_counters(self) -> dict[str, int]:
        with self._record_ids_lock:
            return dict(self._books.counters)

    def select_due(self, after: datetime | None, until: datetime, cursor: Due | None,
                   limit: int) -> list[Due]:
        with self._record_ids_lock:
            due = sorted((at, lead) for lead, at in self._timers.items()
                         if (after is None or at > after) and at <= until
                         and (cursor is None or (at, lead) > cursor))
        return due[:limit]

    def meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def has_events(self) -> bool:
        return bool(self._stored_events)

    def scan_events(self, after: tuple[Any, int] | None, limit: int) -> list[ScannedRow]:
        with self._database_lock:
            rows = [(n, str(e.originator_id), e.originator_version, e.topic, e.state)
                    for n, e in enumerate(self._stored_events, 1)]
        rows.sort(key=lambda r: (r[1], r[2]))
        if after is not None:
            rows = [r for r in rows if (r[1], r[2]) > (str(after[0]), after[1])]
        return rows[:limit]

    def scan_identities(self, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
        with self._record_ids_lock:
            rows = sorted((k, t, i) for k, (t, i) in self._books.identities.items() if k > after)
        return rows[:limit]

    def select_record_ids(self, event_ids: Sequence[str]) -> dict[str, RecordId]:
        with self._record_ids_lock:
            return {e: self._record_ids[e] for e in event_ids if e in self._record_ids}

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        ids = record_ids_of(kwargs)
        taken = [r.event_id for r in ids if r.event_id in self._record_ids]
        if taken or len({r.event_id for r in ids}) < len(ids):
            raise IntegrityError(f"record ids already recorded: {taken[:5]}")
        books = bookkeeping.books_of(kwargs)
        registered = self._books.conflicts(books) if books is not None else []
        if registered:
            raise IntegrityError(f"identity keys already registered: {registered[:5]}")
        # (Under the library's database lock, before anything of the commit is stored.)
        with self._record_ids_lock:
            position = self._meta.get(CLOCK_POSITION)
            self._moved_to = check_reads(
                kwargs, lambda: datetime.fromisoformat(position) if position else None,
                lambda low, high: any(low < at <= high
                                      for at in self._timers_after(kwargs).values()))

    def _moved_on(self, versions: Sequence[tuple[UUID, int]]) -> list[UUID]:
        index = self._stored_events_index  # (a defaultdict: .get adds no entry)
        return [aggregate_id for aggregate_id, version in versions
                if any(v > version for v in index.get(str(aggregate_id), ()))]

    def _timers_after(self, kwargs: dict[str, Any]) -> dict[UUID, datetime]:
        """The timer rows as the commit leaves them (a copy only when it writes any)."""
        exact = timers_exact(kwargs)
        gone, due = timer_writes(kwargs, lambda: self._meta.get(TIMERS_EPOCH), self._moved_on)
        if not gone and not due:
            return self._timers
        timers = dict(self._timers)
        for lead in gone:
            timers.pop(lead, None)
        for lead, at in due:
            if exact or lead not in timers or at < timers[lead]:
                timers[lead] = at
        return timers

    def _update_table(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        out = super()._update_table(stored_events, **kwargs)
        with self._record_ids_lock:
            self._record_ids.update((r.event_id, r) for r in record_ids_of(kwargs))
            books = bookkeeping.books_of(kwargs)
            if books is not None:
                self._books.write(books)
            exact = timers_exact(kwargs)
            timers = self._timers_after(kwargs)
            if exact and timers is not self._timers:
                self._meta[TIMERS_EPOCH] = str(int(self._meta.get(TIMERS_EPOCH) or 0) + 1)
            self._timers = timers
            if self._moved_to is not None:
                self._meta[CLOCK_POSITION] = self._moved_to.isoformat()
                self._moved_to = None
        return out
