"""The events table keeps planner statistics although every commit locks it (store/statistics.py).

Autovacuum is switched off for the events table in these tests: what they see analysed, the
writer or the reader analysed.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from leadflow.config import Settings
from leadflow.contract import InboundRecord, RecordRejected, parse_record
from leadflow.engine.app import LeadflowApp
from leadflow.generator import generate
from leadflow.store.postgres import LeadflowPostgresProcessRecorder


def records() -> list[InboundRecord]:
    out = []
    for line in generate(leads=300, days=30, seed=11):
        try:
            out.append(parse_record(line))
        except RecordRejected:
            continue
    return out


@pytest.fixture
def app(pg_url: str) -> Iterator[LeadflowApp]:
    application = LeadflowApp(env=dict(Settings(database_url=pg_url).eventsourcing_env({})))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE leadflow_events SET (autovacuum_enabled = false)")
    yield application
    application.close()


def column_statistics(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'leadflow_events' "
                           "AND attname = 'originator_id'").fetchone()
        assert row is not None
        return int(row[0])


def test_a_writer_analyses_the_events_table_as_it_grows(app: LeadflowApp, pg_url: str) -> None:
    recorder = app.recorder
    assert isinstance(recorder, LeadflowPostgresProcessRecorder)
    keeper = recorder.statistics
    keeper.check_every, keeper.min_rows, keeper.growth = 200, 100, 0.2
    stream = records()
    assert len(stream) > 1_500
    for start in range(0, len(stream), 250):
        app.apply_batch(stream[start:start + 250])
    # First once past min_rows, then again each time it grew by a fifth (this process's
    # own writes count at once; the cumulative statistics would lag by a second or more).
    assert keeper.analyses >= 3
    assert column_statistics(pg_url) == 1


def test_a_bulk_reader_analyses_a_stale_store_once(app: LeadflowApp, pg_url: str) -> None:
    recorder = app.recorder
    assert isinstance(recorder, LeadflowPostgresProcessRecorder)
    recorder.statistics.check_every = 10**9  # the writer never looks
    recorder.statistics._next_check = 10**9
    stream = records()
    app.apply_batch(stream[:1_500])
    assert recorder.statistics.analyses == 0
    assert column_statistics(pg_url) == 0

    reader = LeadflowApp(env=dict(Settings(database_url=pg_url).eventsourcing_env({})))
    try:
        reading = reader.recorder
        assert isinstance(reading, LeadflowPostgresProcessRecorder)
        reading.statistics.min_rows = 100
        assert list(reader.lead_ids())  # pages of the events table
        assert reading.statistics.analyses == 1
        assert column_statistics(pg_url) == 1
        list(reader.lead_ids())
        assert reading.statistics.analyses == 1  # once per process
    finally:
        reader.close()


def test_large_payloads_are_compressed_with_lz4_where_the_server_has_it(
        app: LeadflowApp, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        has_lz4 = conn.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                               "WHERE name = 'default_toast_compression'").fetchone()
        method = conn.execute("SELECT attcompression FROM pg_attribute WHERE attrelid = "
                              "'leadflow_events'::regclass AND attname = 'state'").fetchone()
    assert method == (("l",) if has_lz4 == (True,) else ("",))
    app.apply_batch(records()[:400])  # a lead's first rows are over the 2 KB threshold
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT count(*) FILTER (WHERE pg_column_compression(state) = 'lz4'),"
                             " count(pg_column_compression(state)) FROM leadflow_events"
                             ).fetchone()
    assert found is not None and found[1] > 0 and found[0] == (found[1] if has_lz4 else 0)
