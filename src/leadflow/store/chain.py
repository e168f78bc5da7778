"""Tamper evidence: a hash chain over each lead's stored events.

Every stored Lead event carries ``chain = sha256(previous link | lead id | version | topic |
payload)``, where the payload is the exact stored JSON bytes of the event without its chain
member, and the first link starts from a per-lead genesis value. The link is appended as the
payload's last member (``…,"chain":"<hex>"}``), so sealing costs one hash and no second
encoding, and ``verify`` needs nothing but the stored bytes: a direct SQL edit of a payload
(even one that only re-spaces the JSON), a deleted, reordered or inserted event breaks the
chain at a position it can name. The chain head of a lead is printed so an auditor can keep
it elsewhere and detect the removal of the newest events too (``--expect-head``).

``verify_events`` never fails on a damaged store: a version gap, a payload that is no JSON
object, garbage bytes or a stored value that is not bytes at all are each a ``Problem``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent

from leadflow.store import fold

GENESIS = "leadflow-chain-v2"
# Whitespace-tolerant, so a re-formatted payload still yields its link and is reported once.
_SEALED = re.compile(rb',?\s*"chain"\s*:\s*"([0-9a-f]{64})"\s*}\s*\Z')


def genesis(lead_id: UUID) -> str:
    return hashlib.sha256(f"{GENESIS}|{lead_id}".encode()).hexdigest()


def link(previous: str, lead_id: UUID, version: int, topic: str, payload: bytes) -> str:
    digest = hashlib.sha256(f"{previous}|{lead_id}|{version}|{topic}|".encode())
    digest.update(payload)
    return digest.hexdigest()


def seal(previous: str, lead_id: UUID, version: int, topic: str,
         payload: bytes) -> tuple[bytes, str]:
    """The payload (a JSON object's bytes) with its chain link appended, and the link."""
    chain = link(previous, lead_id, version, topic, payload)
    separator = b"" if payload == b"{}" else b","
    return payload[:-1] + separator + b'"chain":"' + chain.encode() + b'"}', chain


def unseal(state: bytes) -> tuple[bytes, str | None]:
    """The payload without its chain member, and the link it carried (None: no link)."""
    found = _SEALED.search(state)
    if found is None:
        return state, None
    return state[:found.start()] + b"}", found.group(1).decode()


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


def _stored_bytes(state: Any) -> bytes:
    """The stored payload as bytes (a driver may hand back a memoryview; a hand-made SQLite
    row may hold text); anything else is no payload."""
    if isinstance(state, bytes):
        return state
    if isinstance(state, bytearray | memoryview):
        return bytes(state)
    if isinstance(state, str):
        return state.encode("utf-8", "surrogateescape")
    raise ValueError(f"the stored payload is {type(state).__name__}, not bytes")


def _not_json(payload: bytes) -> str | None:
    """Why the payload is no JSON object the engine can decode (None: it is one)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:  # what the engine's encoder can write and orjson refuses (Infinity, NaN, ...)
            data = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            return f"payload is not valid JSON ({' '.join(str(exc).split())[:120]})"
    if not isinstance(data, dict):
        return f"payload is a JSON {type(data).__name__}, not an object"
    return None


def verify_events(lead_id: UUID, stored: Sequence[StoredEvent],
                  plain: Callable[[bytes], bytes] | None = None) -> LeadVerification:
    """Recompute the chain over one lead's stored events (ordered by version).

    ``plain`` undoes the application's compressor/cipher, if one is configured. Whatever
    the rows hold, the answer is a list of problems, never an exception.
    """
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
            state = _stored_bytes(event.state)
            if plain:
                state = _stored_bytes(plain(state))
        # A cipher's or compressor's refusal of altered bytes (zlib.error is no ValueError).
        except Exception as exc:
            problems.append(Problem(lead_id, version, "payload cannot be read: "
                                    f"{type(exc).__name__}: {exc}"))
            continue
        payload, chain = unseal(state)
        reason = _not_json(payload)
        if reason is not None:
            problems.append(Problem(lead_id, version, f"{reason}: the event cannot be loaded"))
        elif fold.is_envelope(event.topic):
            # One row holding several events (fold.py): the next row starts after its last.
            try:
                expected_version = version + fold.event_count(payload)
            except ValueError as exc:
                problems.append(Problem(lead_id, version, f"envelope cannot be read: {exc}"))
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
