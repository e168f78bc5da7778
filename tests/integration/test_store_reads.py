"""A batch's single-statement reads run outside a transaction block (PostgreSQL).

The pool's connections are in autocommit mode: one statement is a transaction of its own, with
one snapshot, in one round trip. Wrapped in BEGIN … ROLLBACK it costs three, and a batch reads
about ten times (its writer mark, the timers epoch, identities, aggregates, data keys, record
ids, the absorption queue): store/postgres.py ``reading``. These tests pin that the reads
open no transaction and still answer what was committed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from psycopg.pq import TransactionStatus

from leadflow.config import Settings
from leadflow.contract import parse_record
from leadflow.domain.ids import identity_key
from leadflow.engine.app import LeadflowApp
from leadflow.store.postgres import LeadflowPostgresProcessRecorder


@pytest.fixture
def app(pg_url: str) -> Iterator[LeadflowApp]:
    application = LeadflowApp(env=dict(Settings(database_url=pg_url).eventsourcing_env({})))
    yield application
    application.close()


def _record(event_id: str, email: str) -> bytes:
    return json.dumps({
        "event_id": event_id, "type": "form_submitted", "occurred_at": "2026-03-02T10:00:00Z",
        "lead": {"email": email, "company": "Acme"},
        "context": {"source": "web", "campaign": "spring"},
    }).encode()


def test_a_read_opens_no_transaction_block(app: LeadflowApp) -> None:
    recorder = app.recorder
    assert isinstance(recorder, LeadflowPostgresProcessRecorder)
    with recorder.reading() as curs:
        curs.execute("SELECT 1 AS one")
        assert curs.fetchone() == {"one": 1}
        # In a transaction block this would be INTRANS until the ROLLBACK.
        assert curs.connection.info.transaction_status == TransactionStatus.IDLE


def test_the_batch_reads_answer_what_was_committed(app: LeadflowApp) -> None:
    recorder = app.recorder
    assert isinstance(recorder, LeadflowPostgresProcessRecorder)
    result = app.apply_batch([parse_record(_record("evt-reads-1", "ada@acme.example"))])
    [applied] = result.results
    lead_id = applied.lead_id
    assert lead_id is not None

    found = recorder.select_record_ids(["evt-reads-1", "evt-reads-missing"])
    assert set(found) == {"evt-reads-1"}
    assert found["evt-reads-1"].lead_id == lead_id
    hashed = app.vault.lookup(identity_key("email", "ada@acme.example"))
    assert recorder.select_identities([hashed, app.vault.lookup("email:nobody@x.example")]) \
        == {hashed: (lead_id, False)}
    keys = app.vault.table.select([lead_id])
    assert set(keys) == {lead_id}  # the lead's data key, stored with its first row
    stored = app.codec.select_many([lead_id])
    assert [e.originator_version for e in stored[lead_id]] == sorted(
        e.originator_version for e in stored[lead_id])
    assert recorder.writer_mark()[1] is not None  # the batch's rows are there to be seen
    assert recorder.has_events()
    assert recorder.select_moved_on([(lead_id, 0)]) == [lead_id]
    assert recorder.select_absorptions(10) == []
