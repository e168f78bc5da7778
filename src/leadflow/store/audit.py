"""The whole store checked in one pass, and checkpoints that anchor it.

``verify_store`` reads every row of the events table once, in (aggregate, version) order,
in pages, and checks each aggregate's keyed chain (chain.py) — leads, accounts, interests,
the clock, rule publications, and any row someone inserted under a made-up aggregate id.
It then checks the identity table against the events: every identity row must point at an
aggregate that has stored rows, and a lead's identity must be one that lead's own events
name (created with it, added, or taken over in a merge). An identity row edited to point an
email at another lead is found, where a plain lookup would quietly answer with the wrong
lead.

What a chain cannot show is its own end: deleting a lead's newest rows, or every row of a
lead, leaves chains that verify. A *checkpoint* (``write_checkpoint``) records the store
position (the highest notification id) and every aggregate's head at that position, with
a keyed digest over the heads and a keyed MAC over the whole file. ``compare_checkpoint``
then proves the store still holds exactly what it held at the checkpoint — the heads as of
that position are recomputed from the rows and must be the same set — plus whatever came
after. The events table assigns notification ids in commit order (both recorders lock the
table to insert), so "the rows at or below the position" is a fixed prefix of every chain.

Keep checkpoints outside the database (README, "Tamper evidence"): a daily file shipped to
other storage is enough; a checkpoint kept where the attacker can write proves nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from leadflow.domain.vocabulary import CHAINED_SINCE
from leadflow.store import chain, fold
from leadflow.store.chain import LeadVerification, Problem
from leadflow.store.keys import Keyring
from leadflow.store.personal import PII, Vault
from leadflow.store.recorders import RecordIdIndex

CHECKPOINT_FORMAT = "leadflow-checkpoint/1"
PAGE = 5000

Plain = Callable[[bytes], bytes] | None


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, altered, or another key's)."""


ANONYMOUS = "anonymous_id:"


def _pairs(topic: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, fields) of each event a stored row holds."""
    if not fold.is_envelope(topic):
        return [(topic.rpartition(".")[2], data)]
    items = data.get("events")
    if not isinstance(items, list):
        return []
    return [(i[0], i[1]) for i in items
            if isinstance(i, list) and len(i) == 2 and isinstance(i[1], dict)]


def _uuid(value: Any) -> UUID | None:
    """A UUID field as the transcoder stores it (tagged) or as text."""
    if isinstance(value, dict):
        value = value.get("_data_")
    try:
        return UUID(str(value)) if value is not None else None
    except ValueError:
        return None


@dataclass
class Refs:
    """What an aggregate's events say about other rows: the identity keys it holds (a
    lead's Created, IdentityAdded and Absorbed; an interest's anonymous id), the accounts
    it names, and whether it ended merged into another lead."""

    keys: set[str] = field(default_factory=set)
    accounts: set[UUID] = field(default_factory=set)
    merged: bool = False
    # Rows whose personal values do not decrypt with the aggregate's data key.
    undecryptable: list[str] = field(default_factory=list)

    def read(self, kind: str, topic: str, data: dict[str, Any], vault: Vault | None = None,
             oid: UUID | None = None) -> None:
        for name, stored in _pairs(topic, data):
            fields = stored
            if vault is not None and oid is not None and PII in stored:
                # Identity keys are sealed with the person's data key (store/personal.py);
                # once forgotten, the event names none (its placeholders are read).
                fields = dict(stored)
                try:
                    vault.open(f"{kind}.{name}", oid, fields)
                except ValueError as exc:
                    self.undecryptable.append(str(exc))
            if kind == "Lead":
                if name == "Created" and isinstance(fields.get("primary_key"), str):
                    self.keys.add(fields["primary_key"])
                elif name == "IdentityAdded" and isinstance(fields.get("key"), str):
                    self.keys.add(fields["key"])
                elif name == "Absorbed" and isinstance(fields.get("identity_keys"), list):
                    self.keys.update(k for k in fields["identity_keys"] if isinstance(k, str))
                elif name == "MergedInto":
                    self.merged = True
                elif name == "Unmerged":
                    self.merged = False
                if name in ("Created", "AccountSet"):
                    account = _uuid(fields.get("account_id"))
                    if account is not None:
                        self.accounts.add(account)
            elif kind == "Interest" and name == "Created" \
                    and isinstance(fields.get("anonymous_id"), str):
                self.keys.add(ANONYMOUS + fields["anonymous_id"])


def identity_names(kind: str, topic: str, data: dict[str, Any], vault: Vault | None = None,
                   oid: UUID | None = None) -> set[str]:
    """The identity keys one stored row gives its aggregate."""
    refs = Refs()
    refs.read(kind, topic, data, vault, oid)
    return refs.keys


@dataclass
class StoreReport:
    """What ``verify_store`` found. ``heads`` are every aggregate's newest link (as of
    ``anchor`` when one was given: a checkpoint's position)."""

    position: int
    anchor: int
    aggregates: int = 0
    rows: int = 0
    events: int = 0
    unkeyed: int = 0
    unchained: int = 0
    identities: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    heads: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    unknown_keys: set[str] = field(default_factory=set)
    key_ids: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def wrong_key(self) -> bool:
        """Every keyed link names a key that is not configured: the key is wrong, not the
        store (one edited row cannot account for all of them)."""
        return bool(self.unknown_keys) and not (self.key_ids - self.unknown_keys)


def store_digest(keyring: Keyring, anchor: int, heads: dict[str, tuple[str, int, str]],
                 kid: str | None = None) -> str | None:
    """A keyed digest over every aggregate's head at ``anchor`` (None: ``kid`` unknown)."""
    digest = hashlib.sha256(f"leadflow-store|{anchor}\n".encode())
    for oid in sorted(heads):
        kind, version, head = heads[oid]
        digest.update(f"{oid}|{kind}|{version}|{head}\n".encode())
    text = digest.digest()
    return keyring.sign(text) if kid is None else keyring.check(kid, text)


def _rows(recorder: RecordIdIndex, page: int) -> Iterator[tuple[int, Any, int, str, bytes]]:
    after: tuple[Any, int] | None = None
    while True:
        found = recorder.scan_events(after, page)
        yield from found
        if len(found) < page:
            return
        after = (found[-1][1], found[-1][2])


def _groups(recorder: RecordIdIndex, page: int
            ) -> Iterator[tuple[Any, list[tuple[int, StoredEvent]]]]:
    """Rows grouped by their (raw) originator id, in version order."""
    current: Any = None
    group: list[tuple[int, StoredEvent]] = []
    for nid, raw, version, topic, state in _rows(recorder, page):
        if group and raw != current:
            yield current, group
            group = []
        current = raw
        group.append((nid, StoredEvent(raw, version, topic, state)))
    if group:
        yield current, group


def verify_store(recorder: RecordIdIndex, keyring: Keyring, plain: Plain = None,
                 anchor: int | None = None, page: int = PAGE,
                 progress: Callable[[int], None] | None = None,
                 vault: Vault | None = None) -> StoreReport:
    """Check every stored row and the identity table (see the module doc). Never raises on
    a damaged store: what is wrong is a problem in the report.

    With a ``vault``, identity keys sealed in the events are read with each person's data
    key and compared with the identity table's keyed hashes."""
    if vault is not None:
        vault.preload_all()
    position = recorder.max_notification_id() or 0
    report = StoreReport(position, position if anchor is None else anchor)
    # Rows up to here were written before every aggregate was chained (a store migrated to
    # format 4): a lead's rows were always chained, the other aggregates' were not.
    chained_since = int(recorder.meta(CHAINED_SINCE) or 0)
    refs: dict[UUID, Refs] = {}
    kinds: dict[UUID, str] = {}

    for raw, group in _groups(recorder, page):
        report.rows += len(group)
        try:
            oid = raw if isinstance(raw, UUID) else UUID(str(raw))
        except ValueError:
            report.problems.append(Problem(
                None, group[0][1].originator_version,
                f"{len(group)} stored rows with originator id {str(raw)[:60]!r}, which is no "
                "UUID: inserted outside leadflow", chain.kind_of(group[0][1].topic)).as_dict())
            continue
        kind = chain.kind_of(group[0][1].topic)
        kinds[oid] = kind
        mine = Refs()

        def seen(event: StoredEvent, data: dict[str, Any], kind: str = kind,
                 mine: Refs = mine, oid: UUID = oid) -> None:
            mine.read(kind, event.topic, data, vault, oid)

        legacy = frozenset(e.originator_version for nid, e in group
                           if nid <= chained_since) if kind != "Lead" else frozenset()
        result = chain.verify_events(
            oid, [StoredEvent(oid, e.originator_version, e.topic, e.state) for _, e in group],
            plain, keyring, seen if kind in ("Lead", "Interest") else None, legacy)
        if mine.keys or mine.accounts:
            refs[oid] = mine
        for reason in mine.undecryptable:
            report.problems.append(Problem(oid if kind == "Lead" else None, 0, reason, kind,
                                           oid).as_dict())
        _account(report, result)
        anchored = [e for nid, e in group if nid <= report.anchor]
        if anchored:
            head = _head(anchored[-1], plain)
            report.heads[str(oid)] = (kind, _last_version(anchored[-1], plain), head)
        if progress:
            progress(len(group))
    _check_references(recorder, report, kinds, refs, page,
                      vault.lookup if vault is not None else None)
    return report


def _account(report: StoreReport, result: LeadVerification) -> None:
    report.aggregates += 1
    report.events += result.version
    report.unkeyed += result.unkeyed
    report.unchained += result.unchained
    report.unknown_keys |= result.unknown_keys
    report.problems += [p.as_dict() for p in result.problems]
    report.key_ids |= result.key_ids


def _plain_state(event: StoredEvent, plain: Plain) -> bytes:
    try:
        state = chain._stored_bytes(event.state)
        return chain._stored_bytes(plain(state)) if plain else state
    except Exception:  # unreadable: already a problem of the chain check
        return b""


def _head(event: StoredEvent, plain: Plain) -> str:
    return chain.unseal(_plain_state(event, plain))[1] or "-"


def _last_version(event: StoredEvent, plain: Plain) -> int:
    """The version of the last event a row holds (an envelope holds several)."""
    if not fold.is_envelope(event.topic):
        return event.originator_version
    data, reason = chain.parse(chain.unseal(_plain_state(event, plain))[0])
    items = data.get("events") if reason is None else None
    return event.originator_version + (len(items) - 1 if isinstance(items, list) and items
                                       else 0)


def _check_references(recorder: RecordIdIndex, report: StoreReport, kinds: dict[UUID, str],
                      refs: dict[UUID, Refs], page: int,
                      hasher: Callable[[str], str] | None) -> None:
    """Identity rows against the events, both ways, and the accounts leads name.

    The identity table is keyed by ``hasher(key)`` (store/personal.py); problems name the
    hash, never the email or phone."""
    def name(key: str) -> str:
        return hasher(key) if hasher is not None else key

    for mine in refs.values():
        mine.keys = {name(k) for k in mine.keys}
    present: set[str] = set()
    after = ""
    while True:
        rows = recorder.scan_identities(after, page)
        for key, target, is_interest in rows:
            present.add(key)
            report.identities += 1
            kind = kinds.get(target)
            named = refs[target].keys if target in refs else set()
            if kind is None:
                what = "interest" if is_interest else "lead"
                problem = (f"identity {key} points at {what} {target}, which has no stored "
                           "events: the lead was deleted, or the identity row edited")
            elif key in named and kind == ("Interest" if is_interest else "Lead"):
                continue
            else:
                problem = (f"identity {key} points at {kind} {target}, whose events never "
                           "name it: the identity row was edited")
            lead = None if is_interest else target
            report.problems.append(Problem(lead, 0, problem, "Identity", target).as_dict())
        if len(rows) < page:
            break
        after = rows[-1][0]
    for oid, mine in sorted(refs.items()):
        kind = kinds[oid]
        lead = oid if kind == "Lead" else None
        if not mine.merged:  # a merged lead's keys moved to the lead it joined
            for key in sorted(mine.keys - present):
                report.problems.append(Problem(
                    lead, 0, f"{kind} {oid} holds identity {key}, which has no identity row: "
                             "the row was deleted", "Identity", oid).as_dict())
        for account in sorted(mine.accounts):
            if kinds.get(account) != "Account":
                report.problems.append(Problem(
                    lead, 0, f"lead {oid} belongs to account {account}, which has no stored "
                             "events: the account was deleted", "Account", account).as_dict())


# -- checkpoints -------------------------------------------------------------------------

def _mac_body(data: dict[str, Any]) -> bytes:
    body = {k: v for k, v in data.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def checkpoint(report: StoreReport, keyring: Keyring) -> dict[str, Any]:
    """The checkpoint document for a store ``report`` (taken at its position)."""
    data: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "position": report.anchor,
        # Wall-clock time of the checkpoint itself: metadata for the operator, never used
        # in a comparison.
        "taken_at": datetime.now(UTC).isoformat(),
        "aggregates": len(report.heads),
        "events": sum(v for _, v, _ in report.heads.values()),
        "digest": store_digest(keyring, report.anchor, report.heads),
        "heads": {oid: list(v) for oid, v in sorted(report.heads.items())},
    }
    data["mac"] = keyring.sign(_mac_body(data))
    return data


def write_checkpoint(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_checkpoint(path: Path, keyring: Keyring) -> dict[str, Any]:
    """A checkpoint file, its MAC checked; CheckpointError names what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a leadflow checkpoint ({CHECKPOINT_FORMAT})")
    mac = data.get("mac")
    if not isinstance(mac, str) or ":" not in mac:
        raise CheckpointError(f"checkpoint {path} carries no MAC")
    kid = mac.split(":", 1)[0]
    expected = keyring.check(kid, _mac_body(data))
    if expected is None:
        raise CheckpointError(f"checkpoint {path} was signed with audit key {kid}, which is "
                              "not configured: a wrong or missing key")
    if not hmac.compare_digest(expected, mac):
        raise CheckpointError(f"checkpoint {path} was altered after it was written (its MAC "
                              "does not match)")
    heads = data.get("heads")
    if not isinstance(data.get("position"), int) or not isinstance(heads, dict):
        raise CheckpointError(f"checkpoint {path} has no position or heads")
    return data


def compare_checkpoint(report: StoreReport, data: dict[str, Any]) -> list[dict[str, Any]]:
    """What the store lost or gained at or below the checkpoint's position (the report
    must have been made with ``anchor`` = that position)."""
    problems: list[dict[str, Any]] = []
    position = int(data["position"])

    def problem(oid: str, kind: str, version: int, text: str) -> None:
        lead = UUID(oid) if kind == "Lead" else None
        problems.append(Problem(lead, version, text, kind, UUID(oid)).as_dict())

    if report.position < position:
        problems.append(Problem(None, 0, f"the store ends at position {report.position}, "
                                f"before the checkpoint's {position}: its newest rows were "
                                "deleted or the table truncated", "Store").as_dict())
    then: dict[str, list[Any]] = data["heads"]
    for oid, (kind, version, head) in sorted(then.items()):
        now = report.heads.get(oid)
        if now is None:
            problem(oid, kind, version, f"{kind} {oid} had {version} events at the "
                                        "checkpoint and has none of them now: deleted")
        elif now[1] < version:
            problem(oid, kind, now[1] + 1, f"events {now[1] + 1}..{version} were in the store "
                                           "at the checkpoint and are gone: deleted")
        elif now[2] != head:
            problem(oid, kind, version, f"the row ending at version {version} is not the one "
                                        "checkpointed: replaced or re-linked")
    for oid in sorted(set(report.heads) - set(then)):
        kind, version, _ = report.heads[oid]
        problem(oid, kind, 1, f"{kind} {oid} has rows at or below the checkpoint's position "
                              f"{position} that the checkpoint does not hold: inserted")
    return problems
