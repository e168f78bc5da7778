"""Every kind of row, every kind of tampering, with and without a checkpoint.

An attacker with write access to the database (direct SQL, no audit key) edits, deletes,
inserts, swaps or re-links rows of each kind the store holds: lead rows, identity rows,
account rows, interest rows and the other aggregates. ``leadflow verify`` (the real CLI, on
SQLite and on PostgreSQL) must name each change where the README's table says it does:
the chain alone finds edits, middle deletions, insertions, swaps and re-linking; identity
and account references find deleted leads, accounts and identity rows; a checkpoint also
finds deleted newest rows, deleted aggregates nothing refers to, and truncation.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from leadflow.store import chain as audit
from tests.conftest import T0, Records, clean_env, days
from tests.integration.test_verify import LEADFLOW, Store, verify


@dataclass
class Seeded:
    store: Store
    lead: str  # t@acme.io: several rows, an account, a merged-in cookie
    other: str  # other@acme.io
    account: str  # acme.io
    interest: str  # an anonymous visitor never linked to a person
    clock: str  # the Router or Clock: an aggregate no other row refers to


class Attack(Store):
    """The Store of test_verify plus what these attacks need. Identity rows are keyed by
    keyed hashes (store/personal.py): the attacks name identities, the rows get their
    hashes (an attacker without the lookup key could only copy or invent hashes, which
    verify finds the same way)."""

    def __init__(self, url: str, app: LeadflowApp) -> None:
        super().__init__(url, app)
        self.hashed = app.vault.lookup

    def ids(self, topic_suffix: str) -> list[str]:
        rows = self._run(f"SELECT DISTINCT originator_id FROM {self.table} WHERE topic LIKE %s",
                         [f"%{topic_suffix}"])
        return sorted(str(uuid.UUID(str(r[0]))) for r in rows)

    def identity(self, key: str) -> str:
        return str(uuid.UUID(str(self._run(
            "SELECT target_id FROM leadflow_identities WHERE key = %s",
            [self.hashed(key)])[0][0])))

    def point_identity(self, key: str, target: str) -> None:
        self._run("UPDATE leadflow_identities SET target_id = %s WHERE key = %s",
                  [self.oid(target), self.hashed(key)])

    def delete_identity(self, key: str) -> None:
        self._run("DELETE FROM leadflow_identities WHERE key = %s", [self.hashed(key)])

    def add_identity(self, key: str, target: str) -> None:
        self._run("INSERT INTO leadflow_identities (key, target_id, is_interest) "
                  "VALUES (%s, %s, %s)",
                  [self.hashed(key), self.oid(target), False if self.pg else 0])

    def delete_aggregate(self, oid: str) -> None:
        self._run(f"DELETE FROM {self.table} WHERE originator_id = %s", [self.oid(oid)])

    def truncate(self) -> None:
        self._run(f"DELETE FROM {self.table}", [])


def seed(url: str) -> Seeded:
    app = LeadflowApp(env=Settings(database_url=url, aggregate_cache_size=0)
                      .eventsourcing_env({}))
    rec = Records()
    app.apply_batch([rec("page_viewed", None, lead={"anonymous_id": "cookie-t"},
                         context={"url": "/pricing"}),
                     rec("page_viewed", None, lead={"anonymous_id": "cookie-x"},
                         context={"url": "/blog/a"}),
                     rec("page_viewed", None, lead={"anonymous_id": "cookie-x"},
                         context={"url": "/blog/b"})])
    app.apply_batch([rec("email_opened", "t@acme.io", at=T0 + days(i)) for i in range(4)])
    app.apply_batch([rec("form_submitted", "t@acme.io", at=T0 + days(4),
                         lead={"anonymous_id": "cookie-t"}),
                     rec("email_opened", "other@acme.io", at=T0)])
    app.apply_batch([rec("email_clicked", "t@acme.io", at=T0 + days(5))])
    lead, other = str(app.resolve("email:t@acme.io")), str(app.resolve("email:other@acme.io"))
    app.close()
    store = Attack(url, app)
    (account,) = store.ids("Account.Created")
    interest = store.identity("anonymous_id:cookie-x")
    clock = (store.ids("Clock.Created") or store.ids("Router.Created"))[0]
    return Seeded(store, lead, other, account, interest, clock)


def checkpoint(url: str, path: Path) -> None:
    env = {**clean_env(), "LEADFLOW_DATABASE_URL": url}
    done = subprocess.run([*LEADFLOW, "audit", "checkpoint", "-o", str(path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


# -- the attacks: each returns the aggregate id the report must name ---------------------

def edit_row(s: Seeded, oid: str) -> str:
    version = s.store.versions(oid)[-1]
    topic, state = s.store.row(oid, version)
    s.store.set_state(oid, version, topic, state.replace(b'"', b' "', 1))
    return oid


def lead_edit(s: Seeded) -> str:
    version = s.store.versions(s.lead)[1]
    topic, state = s.store.row(s.lead, version)
    data = json.loads(state)
    data["awards"][0]["points"] = 99.0
    s.store.set_state(s.lead, version, topic, json.dumps(data).encode())
    return s.lead


def lead_delete_middle(s: Seeded) -> str:
    s.store.delete(s.lead, s.store.versions(s.lead)[2])
    return s.lead


def lead_delete_newest(s: Seeded) -> str:
    s.store.delete(s.lead, s.store.versions(s.lead)[-1])
    return s.lead


def lead_delete_whole(s: Seeded) -> str:
    s.store.delete_aggregate(s.other)
    return s.other


def lead_insert(s: Seeded) -> str:
    topic, state = s.store.row(s.lead, s.store.versions(s.lead)[1])
    s.store.insert(s.lead, s.store.last_version(s.lead) + 1, topic, state)
    return s.lead


def lead_swap(s: Seeded) -> str:
    a, b = s.store.versions(s.lead)[1:3]
    row_a, row_b = s.store.row(s.lead, a), s.store.row(s.lead, b)
    s.store.set_state(s.lead, a, *row_b)
    s.store.set_state(s.lead, b, *row_a)
    return s.lead


def lead_rehash(s: Seeded) -> str:
    """Edit a row and re-link it and every row after it with plain SHA-256 (no key)."""
    versions = s.store.versions(s.lead)
    previous = audit.unseal(s.store.row(s.lead, versions[0])[1])[1]
    assert previous is not None
    for v in versions[1:]:
        topic, state = s.store.row(s.lead, v)
        payload, _ = audit.unseal(state)
        if v == versions[1]:
            payload = payload.replace(b'"points":', b'"points":9', 1)
        link = audit.unkeyed_link(previous, uuid.UUID(s.lead), v, topic, payload)
        s.store.set_state(s.lead, v, topic, payload[:-1] + b',"chain":"' + link.encode() + b'"}')
        previous = link
    return s.lead


def lead_copied_under_new_id(s: Seeded) -> str:
    fake = str(uuid.uuid4())
    topic, state = s.store.row(s.lead, 1)
    s.store.insert(fake, 1, topic, state)
    return fake


def identity_edit(s: Seeded) -> str:
    s.store.point_identity("email:t@acme.io", s.other)
    return s.other


def identity_delete(s: Seeded) -> str:
    s.store.delete_identity("email:other@acme.io")
    return s.other


def identity_insert(s: Seeded) -> str:
    s.store.add_identity("email:ceo@acme.io", s.other)
    return s.other


def account_edit(s: Seeded) -> str:
    return edit_row(s, s.account)


def account_delete(s: Seeded) -> str:
    s.store.delete_aggregate(s.account)
    return s.account


def account_insert(s: Seeded) -> str:
    topic, state = s.store.row(s.account, 1)
    s.store.insert(s.account, 2, topic, state)
    return s.account


def interest_edit(s: Seeded) -> str:
    return edit_row(s, s.interest)


def interest_delete_newest(s: Seeded) -> str:
    s.store.delete(s.interest, s.store.versions(s.interest)[-1])
    return s.interest


def interest_delete_whole(s: Seeded) -> str:
    s.store.delete_aggregate(s.interest)
    return s.interest


def other_aggregate_edit(s: Seeded) -> str:
    return edit_row(s, s.clock)


def other_aggregate_delete(s: Seeded) -> str:
    s.store.delete_aggregate(s.clock)
    return s.clock


def truncate(s: Seeded) -> str:
    s.store.truncate()
    return s.lead


# (attack, found by verify alone, found with a checkpoint taken before it)
CASES: list[tuple[Callable[[Seeded], str], bool, bool]] = [
    (lead_edit, True, True),
    (lead_delete_middle, True, True),
    (lead_delete_newest, False, True),
    (lead_delete_whole, True, True),  # its identity rows point at nothing
    (lead_insert, True, True),
    (lead_swap, True, True),
    (lead_rehash, True, True),
    (lead_copied_under_new_id, True, True),
    (identity_edit, True, True),
    (identity_delete, True, True),
    (identity_insert, True, True),
    (account_edit, True, True),
    (account_delete, True, True),  # its leads name it
    (account_insert, True, True),
    (interest_edit, True, True),
    (interest_delete_newest, False, True),
    (interest_delete_whole, True, True),  # its identity row points at nothing
    (other_aggregate_edit, True, True),
    (other_aggregate_delete, False, True),
    (truncate, True, True),
]


def _named(report: dict[str, Any], oid: str) -> bool:
    return any(oid in (p.get("aggregate_id"), p.get("lead_id")) or oid in p["problem"]
               for p in report["problems"])


@pytest.mark.parametrize(("attack", "alone", "anchored"), CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_verify_finds_each_kind_of_tampering_where_the_table_says(
        db_url: str, tmp_path: Path, attack: Callable[[Seeded], str], alone: bool,
        anchored: bool) -> None:
    seeded = seed(db_url)
    cp = tmp_path / "checkpoint.json"
    checkpoint(db_url, cp)
    assert verify(db_url).returncode == 0
    assert verify(db_url, "--checkpoint", str(cp)).returncode == 0
    named = attack(seeded)

    plain = verify(db_url)
    report = json.loads(plain.stdout)
    if alone:
        assert plain.returncode == 4, plain.stdout
        assert _named(report, named), report["problems"]
    else:  # the chain cannot see its own end: this is what checkpoints are for
        assert plain.returncode == 0, plain.stdout

    with_cp = verify(db_url, "--checkpoint", str(cp))
    report = json.loads(with_cp.stdout)
    assert with_cp.returncode == (4 if anchored else 0), with_cp.stdout
    if anchored:
        assert _named(report, named), report["problems"]
