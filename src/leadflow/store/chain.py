"""Tamper evidence: a keyed chain over every aggregate's stored rows.

Every stored row, whatever its aggregate (lead, account, interest, clock, rules…), carries
``chain = <key id>:HMAC-SHA256(key, previous link | aggregate id | version | topic |
payload)``, where the payload is the exact stored JSON bytes of the row without its chain
member, the first link starts from a per-aggregate genesis value, and the key comes from
outside the database (keys.py). The link is appended as the payload's last member
(``…,"chain":"<kid>:<hex>"}``), so sealing costs one HMAC and no second encoding, and
``verify`` needs nothing but the stored bytes and the key: an edit of a payload (even one
that only re-spaces the JSON), a deleted, reordered or inserted row breaks the chain at a
position it can name, and nobody without the key can re-link the rows after an edit.

Links written before keyed chains (``"chain":"<hex>"``, plain SHA-256 of the same message)
still verify, and are counted as *unkeyed*: anyone with write access could have recomputed
them. A plain link after a keyed one in the same chain is reported (a downgrade).

Chains end at each aggregate's newest row; removing newest rows, or a whole aggregate, is
found against a checkpoint (audit.py), which anchors every chain head at a store position.

``verify_events`` never fails on a damaged store: a version gap, a payload that is no JSON
object, garbage bytes or a stored value that is not bytes at all are each a ``Problem``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent

from leadflow.store import fold
from leadflow.store.keys import Keyring

GENESIS = "leadflow-chain-v2"
# Whitespace-tolerant, so a re-formatted payload still yields its link and is reported once.
# Matched from the last "chain" member only: a search over the whole payload tried the
# pattern at every byte (~140 µs for a 1 KiB row, most of verify's time).
_SEALED = re.compile(rb'"chain"\s*:\s*"((?:[0-9a-f]{8}:)?[0-9a-f]{64})"\s*}\s*\Z')
_BEFORE = b" \t\r\n"


def genesis(aggregate_id: UUID) -> str:
    return hashlib.sha256(f"{GENESIS}|{aggregate_id}".encode()).hexdigest()


def message(previous: str, aggregate_id: UUID, version: int, topic: str,
            payload: bytes) -> bytes:
    return f"{previous}|{aggregate_id}|{version}|{topic}|".encode() + payload


def unkeyed_link(previous: str, aggregate_id: UUID, version: int, topic: str,
                 payload: bytes) -> str:
    """The link of a store written before keyed chains (plain SHA-256)."""
    return hashlib.sha256(message(previous, aggregate_id, version, topic, payload)).hexdigest()


def seal(keyring: Keyring, previous: str, aggregate_id: UUID, version: int, topic: str,
         payload: bytes) -> tuple[bytes, str]:
    """The payload (a JSON object's bytes) with its keyed link appended, and the link."""
    chain = keyring.sign(message(previous, aggregate_id, version, topic, payload))
    separator = b"" if payload == b"{}" else b","
    return payload[:-1] + separator + b'"chain":"' + chain.encode() + b'"}', chain


def unseal(state: bytes) -> tuple[bytes, str | None]:
    """The payload without its chain member, and the link it carried (None: no link)."""
    start = state.rfind(b'"chain"')
    found = _SEALED.match(state, start) if start >= 0 else None
    if found is None:
        return state, None
    # The member's separator: whitespace and one comma before it (none when it is alone).
    cut = len(state[:start].rstrip(_BEFORE))
    if cut and state[cut - 1:cut] == b",":
        cut -= 1
    return state[:cut] + b"}", found.group(1).decode()


def kind_of(topic: str) -> str:
    """The aggregate class a stored row's topic names (``…:Account.Created`` -> Account)."""
    if ":" not in topic:
        return "?"
    return topic.rpartition(":")[2].split(".", 1)[0] or "?"


@dataclass(frozen=True)
class Problem:
    lead_id: UUID | None
    version: int
    problem: str
    aggregate: str = "Lead"
    aggregate_id: UUID | None = None

    def as_dict(self) -> dict[str, Any]:
        oid = self.aggregate_id or self.lead_id
        return {"aggregate": self.aggregate, "aggregate_id": str(oid) if oid else None,
                "lead_id": str(self.lead_id) if self.lead_id else None,
                "version": self.version, "problem": self.problem}


@dataclass(frozen=True)
class LeadVerification:
    """One aggregate's chain (the name is from when only leads were chained)."""

    lead_id: UUID
    events: int
    head: str | None
    problems: tuple[Problem, ...]
    aggregate: str = "Lead"
    version: int = 0  # the last event version the rows hold
    unkeyed: int = 0
    unknown_keys: frozenset[str] = field(default_factory=frozenset)
    key_ids: frozenset[str] = field(default_factory=frozenset)  # every key id a link names
    unchained: int = 0  # rows from before the store chained this aggregate (migrated)

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


def parse(payload: bytes) -> tuple[Any, str | None]:
    """The payload's JSON and why it is no JSON object the engine can decode (None: it
    is one)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:  # what the engine's encoder can write and orjson refuses (Infinity, NaN, ...)
            data = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            return None, f"payload is not valid JSON ({' '.join(str(exc).split())[:120]})"
    if not isinstance(data, dict):
        return data, f"payload is a JSON {type(data).__name__}, not an object"
    return data, None


def verify_events(aggregate_id: UUID, stored: Sequence[StoredEvent],
                  plain: Callable[[bytes], bytes] | None = None,
                  keyring: Keyring | None = None,
                  seen: Callable[[StoredEvent, dict[str, Any]], None] | None = None,
                  unchained_ok: frozenset[int] = frozenset(),
                  ) -> LeadVerification:
    """Recompute the chain over one aggregate's stored rows (ordered by version).

    ``plain`` undoes the application's compressor/cipher, if one is configured; without a
    ``keyring`` only unkeyed links can be checked. ``seen`` is handed each row's decoded
    payload (the whole-store check reads identities from it). ``unchained_ok`` are versions
    of rows written before the store chained that aggregate (a migrated store): counted,
    not reported. Whatever the rows hold, the answer is a list of problems, never an
    exception.
    """
    kind = kind_of(stored[0].topic) if stored else "?"
    lead = aggregate_id if kind == "Lead" else None
    problems: list[Problem] = []

    def problem(version: int, text: str) -> None:
        problems.append(Problem(lead, version, text, kind, aggregate_id))

    previous = genesis(aggregate_id)
    expected_version = 1
    keyed = False
    unkeyed = unchained = 0
    unknown: set[str] = set()
    kids: set[str] = set()
    for event in stored:
        version = event.originator_version
        if version != expected_version:
            problem(expected_version, f"versions jump from {expected_version - 1} to "
                                      f"{version}: stored events were deleted")
        expected_version = version + 1
        try:
            state = _stored_bytes(event.state)
            if plain:
                state = _stored_bytes(plain(state))
        # A cipher's or compressor's refusal of altered bytes (zlib.error is no ValueError).
        except Exception as exc:
            problem(version, f"payload cannot be read: {type(exc).__name__}: {exc}")
            continue
        payload, chain = unseal(state)
        data, reason = parse(payload)
        if reason is not None:
            problem(version, f"{reason}: the event cannot be loaded")
        else:
            if fold.is_envelope(event.topic):
                # One row holding several events (fold.py): the next row starts after its last.
                events = data.get("events")
                if isinstance(events, list) and events:
                    expected_version = version + len(events)
                else:
                    problem(version, "envelope cannot be read: the envelope holds no events")
            if seen is not None:
                seen(event, data)
        if chain is None:
            if version in unchained_ok:
                unchained += 1
            else:
                problem(version, "event carries no chain link: inserted outside leadflow")
            continue
        kid, _, _ = chain.rpartition(":")
        text = message(previous, aggregate_id, version, event.topic, payload)
        if not kid:
            unkeyed += 1
            recomputed: str | None = hashlib.sha256(text).hexdigest()
            if keyed:
                problem(version, "unkeyed link after keyed ones: the chain was re-linked "
                                 "without the audit key")
        else:
            keyed = True
            kids.add(kid)
            recomputed = keyring.check(kid, text) if keyring is not None else None
            if recomputed is None:
                unknown.add(kid)
                problem(version, f"link made with audit key {kid}, which is not configured: "
                                 "a wrong or missing key, or a forged link")
                previous = chain
                continue
        if recomputed != chain:
            problem(version, "chain link does not match the stored payload: the event was "
                             "altered, reordered or inserted")
        # Continue from the stored link so one altered event is reported once, not onwards.
        previous = chain
    head = previous if stored else None
    return LeadVerification(aggregate_id, len(stored), head, tuple(problems), kind,
                            expected_version - 1, unkeyed, frozenset(unknown), frozenset(kids),
                            unchained)
