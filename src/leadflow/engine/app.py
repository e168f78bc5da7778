"""The command API: one method per use case, load -> decide -> save.

``LeadflowApp`` is an ``eventsourcing.Application``. Its batch method applies many inbound
records in order and saves every touched aggregate in ONE transaction, optionally together
with a tracking record (a Kafka topic-partition offset), which is what gives the Kafka path
its exactly-once effect. Queries return frozen DTOs, never live aggregates.

The class is layered, each layer a module of this package that may use those below it:
``AppCore`` (engine/core.py: configuration, stores, codec, caches), ``Queries``
(engine/queries.py), ``Batches`` (engine/batch.py: record intake, the unit of work's load
and commit) and ``Commands`` (engine/commands.py: clock, merges, forgetting, rules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from leadflow.engine.batch import record_digest
from leadflow.engine.commands import Commands
from leadflow.engine.migration import migrate
from leadflow.engine.store_format import StoreVersionError
from leadflow.engine.unit import INFRASTRUCTURE_ERRORS
from leadflow.engine.unmerge import NotMergedError
from leadflow.engine.views import LeadView, Outcome, RecordResult, RuleContribution

if TYPE_CHECKING:
    from leadflow.engine.results import MigrationResult


class LeadflowApp(Commands):
    """Lead lifecycle engine: scoring with decay, lifecycle, routing, identity."""

    name = "leadflow"

    def migrate(self, progress: Callable[[int, int], None] | None = None) -> MigrationResult:
        """Bring the store to this format (see ``engine.migration.migrate``)."""
        return migrate(self, progress)


# The commands' results (BatchResult, ClockResult, ...) are in leadflow.engine.results.
__all__ = ["INFRASTRUCTURE_ERRORS", "LeadView", "LeadflowApp", "NotMergedError", "Outcome",
           "RecordResult", "RuleContribution", "StoreVersionError", "record_digest"]
