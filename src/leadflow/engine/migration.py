"""The store's format: a store written in an older one is refused until it is migrated.

Format 2 keeps each lead's next time-driven check in the timer index (bookkeeping written
with the events) instead of TimerBucket events. Format 3 stores one row per record
(store/fold.py) and keeps the identity index, account engagements and routing counters as
bookkeeping tables (store/bookkeeping.py) instead of IdentityIndex, Account.Engaged and
Router load events. Format 4 chains every aggregate's rows with keyed links; ``migrate``
records where that began, so the older unlinked rows of accounts, interests and the clock
are counted by ``verify``, not reported. Format 5 keys the identity table by keyed hashes
and encrypts personal values per person (store/personal.py): ``migrate`` re-keys the
identity table; rows written before stay as they are (their personal values readable, and
``forget`` refuses those leads, naming why). Format 6 keeps timers as hints that only the
clock's commits move later (store/recorders.py ``RecordIdIndex``), so that no writer of an
earlier format, which rewrote them exactly, writes the store. ``migrate`` builds all of it
from the stored events — which stay as they are, so every record keeps its record time —
and records the format; run again, it rebuilds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from leadflow.domain import AggregateUnloadableError, Lead
from leadflow.domain.vocabulary import CHAINED_SINCE
from leadflow.engine.unit import Unit
from leadflow.logs import get_logger
from leadflow.store.bookkeeping import Books
from leadflow.store.recorders import STORE_VERSION

if TYPE_CHECKING:  # annotations only: the application (engine/app.py) imports this module
    from leadflow.engine.commands import Commands
    from leadflow.engine.results import MigrationResult

log = get_logger(__name__)  # structlog imported on the first log call

#: Leads loaded (and their timers written) at a time by ``migrate``.
MIGRATE_CHUNK = 1000


def migrate(app: Commands,
            progress: Callable[[int, int], None] | None = None) -> MigrationResult:
    """Build the timer index from every lead's state (its next time-driven check), then
    record the format. Leads that cannot be loaded are reported, not fatal."""
    from leadflow.engine.results import MigrationResult

    lead_ids = list(app.lead_ids())
    unloadable: list[UUID] = []
    timed = 0
    for start in range(0, len(lead_ids), MIGRATE_CHUNK):
        unit = Unit(app.repository, app.directory)
        for lead_id in lead_ids[start:start + MIGRATE_CHUNK]:
            try:
                lead = unit.get(Lead, lead_id)
            except AggregateUnloadableError as exc:
                log.error("lead cannot be loaded; no timer for it", lead_id=str(lead_id),
                          error=str(exc))
                unloadable.append(lead_id)
                continue
            due = lead.next_due(app.rules) if lead is not None else None
            unit.timers[lead_id] = due[0] if due is not None else None
            timed += due is not None
        app.recorder.insert_events([], timers=unit.timers, timers_exact=True)
        if progress:
            progress(min(start + MIGRATE_CHUNK, len(lead_ids)), len(lead_ids))
    app.recorder.insert_events([], books=books_from_events(app))
    app.recorder.insert_events([], books=hashed_identities(app))
    if app.indexes.meta(CHAINED_SINCE) is None:
        # Rows so far were written when only leads were chained: verify counts the other
        # aggregates' unlinked rows up to here instead of reporting them.
        app.indexes.set_meta(CHAINED_SINCE, str(app.indexes.max_notification_id() or 0))
    app.indexes.set_store_version(STORE_VERSION)
    return MigrationResult(len(lead_ids), timed, tuple(unloadable), STORE_VERSION)


def hashed_identities(app: Commands, page: int = 5000) -> Books:
    """The identity table of a format-3/4 store (keyed by ``email:…`` itself) re-keyed by
    keyed hashes: each plain row is deleted and its hash inserted. Hashed rows (hex, no
    ``:``) are left alone, so a second run changes nothing."""
    books = Books()
    after = ""
    while True:
        rows = app.indexes.scan_identities(after, page)
        for key, target, is_interest in rows:
            if ":" in key:
                books.dropped_identities.add(key)
                books.moved_identities[app.vault.lookup(key)] = (target, is_interest)
        if len(rows) < page:
            return books
        after = rows[-1][0]


def books_from_events(app: Commands, page: int = 5000) -> Books:
    """The bookkeeping tables as the events of a format-1/2 store define them: identity keys
    from IdentityIndex events, engagements from Account.Engaged, load and rotation from the
    Router. Written as upserts and exact values, so a second run changes nothing."""
    # Imported here: the application imports this module on every start (the format check),
    # and these aggregates only for a migration (leadflow.domain).
    from leadflow.domain.account import SURGE_ROW, Account
    from leadflow.domain.identity_index import IdentityIndex
    from leadflow.domain.router import Router

    # The @event decorator creates these classes at import time; mypy cannot see them.
    registered: type[Any] = IdentityIndex.Registered  # type: ignore[attr-defined]
    repointed: type[Any] = IdentityIndex.Repointed  # type: ignore[attr-defined]
    surged: type[Any] = Account.Surged  # type: ignore[attr-defined]
    books = Books()
    keys: dict[UUID, str] = {}
    topics = [get_topic(registered), get_topic(repointed), get_topic(Account.Engaged),
              get_topic(surged)]
    start = 1
    while True:
        found = app.recorder.select_notifications(start, page, topics=topics)
        for notification in found:
            event: Any = app.mapper.to_domain_event(notification)
            if isinstance(event, Account.Engaged | surged):
                lead_id = SURGE_ROW if isinstance(event, surged) else event.lead_id
                pair = (event.originator_id, lead_id)
                if pair not in books.engagements or event.occurred_at > books.engagements[pair]:
                    books.engagements[pair] = event.occurred_at
                continue
            if isinstance(event, registered):
                keys[event.originator_id] = event.key
            key = keys.get(event.originator_id)
            if key is not None:
                books.moved_identities[app.vault.lookup(key)] = (event.target_id,
                                                                 event.is_interest)
        if len(found) < page:
            break
        start = found[-1].id + 1
    try:
        router: Any = app.repository.get(Router.create_id())
    except AggregateNotFoundError:
        return books
    books.exact.update({f"load:{rep}": n for rep, n in router.load.items()})
    books.exact.update({f"cursor:{team}": n for team, n in router.cursors.items()})
    return books
