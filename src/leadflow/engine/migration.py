"""The store's format: a store written in an older one is refused until it is migrated.

Format 2 keeps each lead's next time-driven check in the timer index (bookkeeping written
with the events) instead of TimerBucket events. ``migrate`` builds that index from the
leads' state and records the format; run again, it rebuilds the index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

import structlog

from leadflow.domain import AggregateUnloadableError, Lead, LeadflowError
from leadflow.engine.unit import Unit
from leadflow.engine.views import MigrationResult
from leadflow.store.recorders import STORE_VERSION, RecordIdIndex

if TYPE_CHECKING:  # the application imports this module
    from leadflow.engine.app import LeadflowApp

log = structlog.get_logger(__name__)

#: Leads loaded (and their timers written) at a time by ``migrate``.
MIGRATE_CHUNK = 1000


class StoreVersionError(LeadflowError):
    """The event store is in a format this leadflow does not write: migrate (or upgrade)."""

    reason = "store_version"


def check_store_version(indexes: RecordIdIndex) -> None:
    """Refuse a store written in another format (``leadflow db migrate`` upgrades an older
    one); mark a new, empty one as written in this format."""
    version = indexes.store_version()
    if version == STORE_VERSION:
        return
    if version is None and not indexes.has_events():
        indexes.set_store_version(STORE_VERSION)
        return
    if version is not None and version > STORE_VERSION:
        raise StoreVersionError(f"this event store is in format {version}, newer than this "
                                f"leadflow understands ({STORE_VERSION}): upgrade leadflow")
    raise StoreVersionError(
        f"this event store was written in format {version or 1} by an earlier leadflow; "
        f"run `leadflow db migrate` once to bring it to format {STORE_VERSION} (it keeps "
        "every event and builds the timer index)")


def migrate(app: LeadflowApp,
            progress: Callable[[int, int], None] | None = None) -> MigrationResult:
    """Build the timer index from every lead's state (its next time-driven check), then
    record the format. Leads that cannot be loaded are reported, not fatal."""
    lead_ids = list(app.lead_ids())
    unloadable: list[UUID] = []
    timed = 0
    for start in range(0, len(lead_ids), MIGRATE_CHUNK):
        unit = Unit(app.repository)
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
        app.recorder.insert_events([], timers=unit.timers)
        if progress:
            progress(min(start + MIGRATE_CHUNK, len(lead_ids)), len(lead_ids))
    app.indexes.set_store_version(STORE_VERSION)
    return MigrationResult(len(lead_ids), timed, tuple(unloadable), STORE_VERSION)
