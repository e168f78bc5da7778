"""Tamper evidence: a hash chain over each lead's stored events.

Every stored Lead event carries ``chain = sha256(previous chain | lead id | version | topic |
canonical payload)``, where the payload is the stored JSON without the ``chain`` key and the
first link starts from a per-lead genesis value. ``verify`` recomputes the chain from the
stored rows alone, so a direct SQL edit of a payload, a deleted, reordered or inserted event
breaks it at a position it can name. The chain head of a lead is printed so an auditor can
keep it elsewhere and detect the removal of the newest events too (``--expect-head``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

GENESIS = "leadflow-chain-v1"


def genesis(lead_id: UUID) -> str:
    return hashlib.sha256(f"{GENESIS}|{lead_id}".encode()).hexdigest()


def canonical_payload(state: bytes) -> tuple[str, str | None]:
    """The stored payload without its chain (canonical JSON), and the chain it carries."""
    data: dict[str, Any] = json.loads(state)
    chain = data.pop("chain", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False), chain


def link(previous: str, lead_id: UUID, version: int, topic: str, payload: str) -> str:
    material = f"{previous}|{lead_id}|{version}|{topic}|{payload}"
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    lead_id: UUID
    version: int
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return {"lead_id": str(self.lead_id), "version": self.version, "problem": self.problem}


@dataclass(frozen=True)
class LeadVerification:
    lead_id: UUID
    events: int
    head: str | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_events(lead_id: UUID, stored: Sequence[StoredEvent]) -> LeadVerification:
    """Recompute the chain over one lead's stored events (ordered by version)."""
    problems: list[Problem] = []
    previous = genesis(lead_id)
    expected_version = 1
    for event in stored:
        version = event.originator_version
        if version != expected_version:
            problems.append(Problem(lead_id, expected_version,
                                    f"versions jump from {expected_version - 1} to {version}: "
                                    "stored events were deleted"))
        expected_version = version + 1
        try:
            payload, chain = canonical_payload(event.state)
        except (ValueError, UnicodeDecodeError):
            problems.append(Problem(lead_id, version, "payload is not valid JSON"))
            continue
        if chain is None:
            problems.append(Problem(lead_id, version, "event carries no chain link: inserted "
                                                      "outside leadflow"))
            continue
        recomputed = link(previous, lead_id, version, event.topic, payload)
        if recomputed != chain:
            problems.append(Problem(lead_id, version,
                                    "chain link does not match the stored payload: the event "
                                    "was altered, reordered or inserted"))
        # Continue from the stored link so one altered event is reported once, not onwards.
        previous = chain
    head = previous if stored else None
    return LeadVerification(lead_id, len(stored), head, tuple(problems))
