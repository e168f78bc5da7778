"""What a whole command answers with: a batch of records, the clock, forget, a migration
(frozen DTOs). Per-record outcomes and lead views are in ``views``; this module is imported
when one of these commands runs, not by reading a lead (start-up, issue 15)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from leadflow.engine.views import Outcome, RecordResult


@dataclass(frozen=True, slots=True)
class BatchResult:
    results: tuple[RecordResult, ...]

    @property
    def applied(self) -> int:
        return sum(r.outcome is Outcome.APPLIED for r in self.results)

    @property
    def duplicates(self) -> int:
        return sum(r.outcome is Outcome.DUPLICATE for r in self.results)

    @property
    def rejected(self) -> tuple[RecordResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.REJECTED)


@dataclass(frozen=True, slots=True)
class ClockResult:
    position: datetime | None
    woken: int
    events: int
    unloadable: tuple[UUID, ...] = ()  # leads skipped: their stored events cannot be loaded


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What ``LeadflowApp.forget`` did: the lead, the leads merged into it (all forgotten
    with it), data keys deleted, identity rows deleted."""

    lead_id: UUID
    leads: tuple[UUID, ...]
    data_keys: int
    identities: int

    def to_json(self) -> dict[str, Any]:
        return {"lead_id": str(self.lead_id), "leads": [str(i) for i in self.leads],
                "data_keys": self.data_keys, "identities": self.identities}


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What ``LeadflowApp.migrate`` did: leads seen, timers written, leads it could not load."""

    leads: int
    timers: int
    unloadable: tuple[UUID, ...]
    version: int
