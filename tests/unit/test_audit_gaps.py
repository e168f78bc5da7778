"""A damaged store gives problems and named errors, never a crash.

``verify_events`` reports a deleted event, a payload that is no JSON, garbage bytes or a
stored value that is not bytes at all as problems; the auditor's replays (history, as-of,
explain) raise AggregateUnloadableError naming the lead, not the library's errors.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from leadflow.domain import AggregateUnloadableError, Lead
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor
from leadflow.store import chain as audit
from leadflow.store.keys import Keyring
from tests.conftest import T0, Records, days, make_app

KEY = Keyring.of(["unit-test-audit-key-0123456789"], "the test")


def verify_events(lead: Any, stored: list[StoredEvent], plain: Any = None) -> Any:
    return audit.verify_events(lead, stored, plain, KEY)

TOPIC = "leadflow.domain:Lead.TouchpointScored"


def chain(lead: UUID, payloads: list[bytes]) -> list[StoredEvent]:
    """Events sealed as the engine seals them (an attacker can recompute the links too)."""
    head = audit.genesis(lead)
    out = []
    for version, payload in enumerate(payloads, start=1):
        sealed, head = audit.seal(KEY, head, lead, version, TOPIC, payload)
        out.append(StoredEvent(lead, version, TOPIC, sealed))
    return out


def at(version: int, problems: tuple[audit.Problem, ...]) -> list[str]:
    return [p.problem for p in problems if p.version == version]


def test_a_deleted_middle_event_is_a_gap_and_a_broken_link() -> None:
    lead = uuid4()
    stored = chain(lead, [b'{"x":1}', b'{"x":2}', b'{"x":3}', b'{"x":4}'])
    del stored[1]
    result = verify_events(lead, stored)
    assert not result.ok and result.events == 3
    assert at(2, result.problems) == ["versions jump from 1 to 3: stored events were deleted"]
    assert ["does not match" in p for p in at(3, result.problems)] == [True]
    assert {p.version for p in result.problems} == {2, 3}


def test_a_deleted_first_event_is_a_gap() -> None:
    lead = uuid4()
    stored = chain(lead, [b'{"x":1}', b'{"x":2}'])[1:]
    problems = verify_events(lead, stored).problems
    assert "versions jump from 0 to 2" in at(1, problems)[0]


@pytest.mark.parametrize("payload", [b"not json at all}", b'{"x":}', b"\xff\xfe{}",
                                     b'{"x":"\xff"}'],
                         ids=["text", "truncated", "binary", "bad-utf8-inside"])
def test_a_sealed_payload_that_is_no_json_is_a_problem(payload: bytes) -> None:
    # The link matches (it was recomputed: the chain is no signature), yet the engine
    # cannot load the event.
    lead = uuid4()
    stored = chain(lead, [b'{"x":1}', payload, b'{"x":3}'])
    result = verify_events(lead, stored)
    assert [p.version for p in result.problems] == [2]
    assert "payload is not valid JSON" in result.problems[0].problem


def test_a_sealed_json_value_that_is_no_object_is_a_problem() -> None:
    lead = uuid4()
    # seal() appends the link inside an object; a list gets its link appended as bytes.
    stored = chain(lead, [b'{"x":1}'])
    stored.append(StoredEvent(lead, 2, TOPIC, b"[1,2,3]"))
    problems = verify_events(lead, stored).problems
    assert any("not an object" in p for p in at(2, problems))


def test_what_python_json_wrote_is_no_problem() -> None:
    # The engine's encoder wrote Infinity/NaN; the engine's decoder reads them back.
    lead = uuid4()
    stored = chain(lead, [b'{"annual_revenue":Infinity,"fit":NaN}'])
    assert verify_events(lead, stored).ok


def test_garbage_bytes_without_a_link_are_problems_not_an_exception() -> None:
    lead = uuid4()
    stored = chain(lead, [b'{"x":1}'])
    stored.append(StoredEvent(lead, 2, TOPIC, b"\x00\x01\x02 garbage \xff"))
    problems = at(2, verify_events(lead, stored).problems)
    assert len(problems) == 2
    assert any("not valid JSON" in p for p in problems)
    assert any("no chain link" in p for p in problems)


@pytest.mark.parametrize("state", [None, 42, 1.5], ids=["null", "integer", "real"])
def test_a_stored_value_that_is_not_bytes_is_a_problem(state: Any) -> None:
    # SQLite stores whatever is written into the BLOB column by hand.
    lead = uuid4()
    stored = chain(lead, [b'{"x":1}', b'{"x":2}'])
    stored[0] = StoredEvent(lead, 1, TOPIC, state)
    result = verify_events(lead, stored)
    assert "payload cannot be read" in at(1, result.problems)[0]


def test_text_and_memoryview_payloads_are_read_as_their_bytes() -> None:
    lead = uuid4()
    stored = chain(lead, [b'{"x":1}', b'{"x":2}'])
    text = StoredEvent(lead, 1, TOPIC, stored[0].state.decode())  # type: ignore[arg-type]
    view = StoredEvent(lead, 2, TOPIC, memoryview(stored[1].state))  # type: ignore[arg-type]
    result = verify_events(lead, [text, view])
    assert result.ok, result.problems


def test_a_compressor_refusing_altered_bytes_is_a_problem() -> None:
    lead = uuid4()
    stored = [StoredEvent(e.originator_id, e.originator_version, e.topic,
                          zlib.compress(e.state)) for e in chain(lead, [b'{"x":1}', b'{"x":2}'])]
    stored[0] = StoredEvent(lead, 1, TOPIC, b"not zlib")
    result = verify_events(lead, stored, zlib.decompress)
    assert "payload cannot be read: error" in at(1, result.problems)[0]
    assert verify_events(lead, stored[1:], zlib.decompress).problems  # the gap


# ----------------------------------------------------------------- the auditor's replays

class Damaged:
    """A lead in a SQLite store, damaged by direct SQL."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "leadflow.db"
        self.app: LeadflowApp = make_app("sqlite", tmp_path)
        rec = Records()
        self.app.apply_batch([rec("email_opened", "d@acme.io", at=T0 + days(i))
                              for i in range(4)])
        self.lead = self.app.resolve("email:d@acme.io")
        self.table = str(self.app.recorder.events_table_name)  # type: ignore[attr-defined]

    def _run(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute(statement, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def versions(self, topic_end: str) -> list[int]:
        rows = self._run(f"SELECT originator_version, topic FROM {self.table} "
                         "WHERE originator_id = ? ORDER BY originator_version", [self.lead.hex])
        return [v for v, topic in rows if topic.endswith(topic_end)]

    def delete(self, version: int) -> None:
        self._run(f"DELETE FROM {self.table} WHERE originator_id = ? AND originator_version = ?",
                  [self.lead.hex, version])

    def set_state(self, version: int, state: Any) -> None:
        self._run(f"UPDATE {self.table} SET state = ? WHERE originator_id = ? "
                  "AND originator_version = ?", [state, self.lead.hex, version])

    def auditor(self) -> Auditor:
        # A fresh application: nothing cached from before the damage.
        return Auditor(make_app("sqlite", self.path.parent))


def delete_middle(d: Damaged) -> None:
    d.delete(d.versions("Lead.TouchpointScored")[1])


def delete_first(d: Damaged) -> None:
    d.delete(1)


def not_json(d: Damaged) -> None:
    d.set_state(d.versions("Lead.TouchpointScored")[1], b"\x00 not json")


def field_missing(d: Damaged) -> None:
    d.set_state(d.versions("Lead.TouchpointScored")[1], json.dumps(
        {"timestamp": {"_type_": "datetime_iso", "_data_": T0.isoformat()}}).encode())


def text_payload(d: Damaged) -> None:
    d.set_state(d.versions("Lead.TouchpointScored")[1], "a text value")


DAMAGE = [delete_middle, delete_first, not_json, field_missing, text_payload]
IDS = ["deleted-middle", "deleted-first", "not-json", "field-missing", "text-payload"]


@pytest.mark.parametrize("damage", DAMAGE, ids=IDS)
def test_history_as_of_and_explain_name_a_lead_that_cannot_be_replayed(
        tmp_path: Path, damage: Any) -> None:
    d = Damaged(tmp_path)
    damage(d)
    auditor = d.auditor()
    now = datetime.now(UTC)
    asks: list[Callable[[], Any]] = [
        lambda: auditor.history(d.lead),
        lambda: auditor.as_of(d.lead, T0 + days(10), now),
        lambda: auditor.explain(d.lead, T0 + days(10))]
    if damage not in (delete_middle, delete_first):
        # The backtest's touchpoint list replays nothing (a gap only leaves one out), but it
        # decodes every event.
        asks.append(lambda: auditor.touchpoints(d.lead))
    for ask in asks:
        with pytest.raises(AggregateUnloadableError) as caught:
            ask()
        assert caught.value.aggregate_id == d.lead and caught.value.kind == "lead"
        assert str(d.lead) in str(caught.value)
        assert caught.value.__cause__ is caught.value.cause


@pytest.mark.parametrize("damage", DAMAGE, ids=IDS)
def test_verify_reports_the_damage_as_problems(tmp_path: Path, damage: Any) -> None:
    d = Damaged(tmp_path)
    assert d.app.verify(d.lead).ok
    damage(d)
    result = make_app("sqlite", tmp_path).verify(d.lead)
    assert not result.ok and all(p.lead_id == d.lead for p in result.problems)


def test_an_intact_lead_still_replays(tmp_path: Path) -> None:
    d = Damaged(tmp_path)
    auditor = d.auditor()
    assert len(auditor.history(d.lead)) >= 4
    assert auditor.explain(d.lead, T0 + days(10))["score"] is not None
    assert isinstance(auditor.as_known(d.lead, datetime.now(UTC)), Lead)
