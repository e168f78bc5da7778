"""Tamper evidence: `leadflow verify` detects direct SQL edits of stored events."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, clean_env, days

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]


def seeded(url: str) -> tuple[LeadflowApp, str, str]:
    app = LeadflowApp(env=Settings(database_url=url, aggregate_cache_size=0)
                      .eventsourcing_env({}))
    rec = Records()
    app.apply_batch([rec("email_opened", "t@acme.io", at=T0 + days(i)) for i in range(4)])
    app.apply_batch([rec("email_opened", "other@acme.io", at=T0)])
    app.apply_batch([rec("email_clicked", "t@acme.io", at=T0 + days(5))])
    return app, str(app.resolve("email:t@acme.io")), str(app.resolve("email:other@acme.io"))


class Store:
    """Direct SQL on the stored events, as an attacker with database access would do."""

    def __init__(self, url: str, app: LeadflowApp) -> None:
        self.url = url
        self.pg = url.startswith("postgres")
        self.table = str(app.recorder.events_table_name)  # type: ignore[attr-defined]

    def _run(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        if self.pg:
            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(statement, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []
        import sqlite3

        conn = sqlite3.connect(self.url[len("sqlite:///"):])
        try:
            cur = conn.execute(statement.replace("%s", "?"), params)
            rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def oid(self, lead_id: str) -> Any:
        import uuid

        return uuid.UUID(lead_id) if self.pg else uuid.UUID(lead_id).hex

    def row(self, lead_id: str, version: int) -> tuple[str, bytes]:
        topic, state = self._run(f"SELECT topic, state FROM {self.table} WHERE originator_id = %s "
                                 "AND originator_version = %s", [self.oid(lead_id), version])[0]
        return topic, bytes(state)

    def set_state(self, lead_id: str, version: int, topic: str, state: bytes) -> None:
        self._run(f"UPDATE {self.table} SET topic = %s, state = %s WHERE originator_id = %s "
                  "AND originator_version = %s", [topic, state, self.oid(lead_id), version])

    def delete(self, lead_id: str, version: int) -> None:
        self._run(f"DELETE FROM {self.table} WHERE originator_id = %s "
                  "AND originator_version = %s", [self.oid(lead_id), version])

    def insert(self, lead_id: str, version: int, topic: str, state: bytes) -> None:
        self._run(f"INSERT INTO {self.table} (originator_id, originator_version, topic, state) "
                  "VALUES (%s, %s, %s, %s)", [self.oid(lead_id), version, topic, state])

    def versions(self, lead_id: str) -> list[int]:
        """The versions of the aggregate's stored rows (a row holding several events is
        keyed by the first one's version)."""
        return [int(r[0]) for r in self._run(
            f"SELECT originator_version FROM {self.table} WHERE originator_id = %s "
            "ORDER BY originator_version", [self.oid(lead_id)])]

    def last_version(self, lead_id: str) -> int:
        return int(self._run(f"SELECT MAX(originator_version) FROM {self.table} "
                             "WHERE originator_id = %s", [self.oid(lead_id)])[0][0])


def verify(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(),
           "LEADFLOW_DATABASE_URL": url}
    return subprocess.run([*LEADFLOW, "verify", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def scored_version(store: Store, lead_id: str) -> int:
    """The version of the lead's second stored row: a record's touchpoint (the first row holds
    the record that created the lead; every record is one row)."""
    version = store.versions(lead_id)[1]
    assert store.row(lead_id, version)[0].endswith("TouchpointScored")
    return version


def next_row(store: Store, lead_id: str, version: int) -> int:
    versions = store.versions(lead_id)
    return versions[versions.index(version) + 1]


def alter_payload(store: Store, lead: str) -> int:
    version = scored_version(store, lead)
    topic, state = store.row(lead, version)
    data = json.loads(state)
    data["awards"][0]["points"] = 99.0
    store.set_state(lead, version, topic, json.dumps(data).encode())
    return version


def delete_event(store: Store, lead: str) -> int:
    version = next_row(store, lead, scored_version(store, lead))
    store.delete(lead, version)
    return version


def swap_two(store: Store, lead: str) -> int:
    version = scored_version(store, lead)
    later = next_row(store, lead, version)
    a, b = store.row(lead, version), store.row(lead, later)
    store.set_state(lead, version, *b)
    store.set_state(lead, later, *a)
    return version


def insert_one(store: Store, lead: str) -> int:
    version = store.last_version(lead) + 1
    topic, state = store.row(lead, scored_version(store, lead))
    store.insert(lead, version, topic, state)
    return version


def garbage_payload(store: Store, lead: str) -> int:
    version = next_row(store, lead, scored_version(store, lead))
    topic, _ = store.row(lead, version)
    store.set_state(lead, version, topic, b"\x00\x9f not json")
    return version


def resealed_non_json(store: Store, lead: str) -> int:
    # Re-linked with a key of the attacker's own: the link names a key nobody configured.
    # A payload the engine cannot decode is named too.
    from leadflow.store import chain as audit
    from leadflow.store.keys import Keyring

    *_, before, version = store.versions(lead)
    topic, _ = store.row(lead, version)
    previous = audit.unseal(store.row(lead, before)[1])[1]
    assert previous is not None
    forged = Keyring.of(["an-attackers-own-key-0123456789"], "the attacker")
    sealed, _ = audit.seal(forged, previous, UUID(lead), version, topic, b'{"awards":[1,}')
    store.set_state(lead, version, topic, sealed)
    return version


def rehashed_without_the_key(store: Store, lead: str) -> int:
    # What worked against the unkeyed chain: edit a row and recompute every link after it
    # as plain SHA-256. Without the key the links cannot be keyed, and an unkeyed link after
    # keyed ones is a downgrade.
    from leadflow.store import chain as audit

    versions = store.versions(lead)
    version = scored_version(store, lead)
    previous = audit.unseal(store.row(lead, versions[versions.index(version) - 1])[1])[1]
    assert previous is not None
    for v in versions[versions.index(version):]:
        topic, state = store.row(lead, v)
        payload, _ = audit.unseal(state)
        if v == version:
            payload = payload.replace(b'"points":', b'"points":9', 1)
        link = audit.unkeyed_link(previous, UUID(lead), v, topic, payload)
        store.set_state(lead, v, topic, payload[:-1] + b',"chain":"' + link.encode() + b'"}')
        previous = link
    return version


@pytest.mark.parametrize("tamper", [alter_payload, delete_event, swap_two, insert_one,
                                    garbage_payload, resealed_non_json,
                                    rehashed_without_the_key],
                         ids=["update-payload", "delete", "swap", "insert", "garbage",
                              "resealed-non-json", "rehashed-without-key"])
def test_verify_names_the_lead_and_position_of_each_kind_of_tampering(
        db_url: str, tamper: Callable[[Store, str], int]) -> None:
    app, lead, other = seeded(db_url)
    clean = verify(db_url)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    position = tamper(Store(db_url, app), lead)
    result = verify(db_url)
    assert result.returncode == 4, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert {p["lead_id"] for p in report["problems"]} == {lead}  # the other lead verifies
    assert position in {p["version"] for p in report["problems"]}
    one = verify(db_url, "other@acme.io")
    assert one.returncode == 0 and json.loads(one.stdout)["heads"][other]


def test_a_recorded_chain_head_detects_removal_of_the_newest_event(db_url: str) -> None:
    app, lead, _ = seeded(db_url)
    head = json.loads(verify(db_url, "t@acme.io").stdout)["heads"][lead]
    store = Store(db_url, app)
    store.delete(lead, store.last_version(lead))
    assert verify(db_url, "t@acme.io").returncode == 0  # the chain alone cannot see it ...
    caught = verify(db_url, "t@acme.io", "--expect-head", head)
    assert caught.returncode == 4  # ... the head an auditor kept elsewhere does
    assert "newest events were removed" in caught.stdout
