"""A batch's key lookups probe their tables' primary keys, whatever their size (PostgreSQL).

Every batch looks up its records' ids (``leadflow_record_ids``) and identity keys
(``leadflow_identities``) by arrays of a thousand or so keys. Written as ``= ANY(array)``
or as a LATERAL subquery the planner may flatten, both were planned as a scan of the whole
table while it was small enough to look cheap to the planner (up to ~200,000 rows), which
cost 6–11 ms a batch at 45,000–160,000 rows instead of ~1 ms: a fifth of the server's time
per record in the default bench. These tests fill both tables past that size, analyse them
and read the plans of the very statements the store runs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.sql import Composable

from leadflow.config import Settings
from leadflow.contract import parse_record
from leadflow.engine.app import LeadflowApp
from leadflow.store.bookkeeping import IDENTITIES_TABLE, identities_statement
from leadflow.store.postgres import LeadflowPostgresProcessRecorder
from leadflow.store.recorders import RECORD_IDS_TABLE

ROWS = 60_000  # past the ~45,000 at which the flattened identity lookup scanned the table
KEYS = 1_000  # a batch's worth


@pytest.fixture
def app(pg_url: str) -> Iterator[LeadflowApp]:
    application = LeadflowApp(env=dict(Settings(database_url=pg_url).eventsourcing_env({})))
    yield application
    application.close()


def _fill(pg_url: str) -> None:
    """ROWS rows in each table, analysed (as autovacuum would have them)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {RECORD_IDS_TABLE} (event_id, digest, lead_id) "
                     "SELECT 'evt-' || g, sha224(g::text::bytea), gen_random_uuid() "
                     "FROM generate_series(1, %s) AS g", (ROWS,))
        conn.execute(f"INSERT INTO {IDENTITIES_TABLE} (key, target_id, is_interest) "
                     "SELECT md5(g::text) || md5((g * 7)::text), gen_random_uuid(), g %% 5 = 0 "
                     "FROM generate_series(1, %s) AS g", (ROWS,))
        conn.execute(f"ANALYZE {RECORD_IDS_TABLE}")
        conn.execute(f"ANALYZE {IDENTITIES_TABLE}")


def _plan(pg_url: str, statement: str | Composable, keys: list[str]) -> str:
    with psycopg.connect(pg_url) as conn:
        text = statement if isinstance(statement, str) else statement.as_string(conn)
        rows = conn.execute("EXPLAIN " + text, (keys,)).fetchall()  # type: ignore[arg-type]
    return "\n".join(str(row[0]) for row in rows)


def _assert_probes(plan: str, table: str) -> None:
    assert f"Seq Scan on {table}" not in plan, plan
    assert "Hash Join" not in plan, plan
    assert f"Index Scan using {table}_pkey" in plan, plan


def test_record_ids_are_looked_up_by_primary_key(app: LeadflowApp, pg_url: str) -> None:
    recorder = app.recorder
    assert isinstance(recorder, LeadflowPostgresProcessRecorder)
    _fill(pg_url)
    keys = [f"evt-{n}" for n in range(ROWS - KEYS // 2 + 1, ROWS + KEYS // 2 + 1)]  # half known
    _assert_probes(_plan(pg_url, recorder.sql.select_record_ids, keys), RECORD_IDS_TABLE)
    # And the rows it finds are the known half, with their digests.
    found = recorder.select_record_ids(keys)
    assert sorted(found) == sorted(keys[: KEYS // 2])
    assert all(len(r.digest) == 28 for r in found.values())


def test_identities_are_looked_up_by_primary_key(app: LeadflowApp, pg_url: str) -> None:
    recorder = app.recorder
    assert isinstance(recorder, LeadflowPostgresProcessRecorder)
    _fill(pg_url)
    with psycopg.connect(pg_url) as conn:
        known = [str(r[0]) for r in conn.execute(
            f"SELECT key FROM {IDENTITIES_TABLE} ORDER BY key LIMIT %s", (KEYS // 2,))]
    keys = known + [secrets.token_hex(32) for _ in range(KEYS // 2)]
    plan = _plan(pg_url, identities_statement(recorder.datastore.schema), keys)
    _assert_probes(plan, IDENTITIES_TABLE)
    assert sorted(recorder.select_identities(keys)) == sorted(known)


def test_a_batch_still_sees_its_applied_records_and_identities(app: LeadflowApp,
                                                                pg_url: str) -> None:
    """Through the engine: a record re-sent after the tables grew is a duplicate, and a new
    record naming the same person lands on the same lead."""
    _fill(pg_url)
    now = datetime(2026, 3, 1, tzinfo=UTC)

    def line(event_id: str, minute: int) -> str:
        return json.dumps({"schema_version": 1, "event_id": event_id, "type": "page_viewed",
                           "occurred_at": f"2026-02-01T10:{minute:02d}:00Z",
                           "lead": {"email": "ada@example.org"},
                           "context": {"url": "https://example.org/pricing"}})

    first = app.apply_batch([parse_record(line("plan-1", 0), now=now)]).results[0]
    again = app.apply_batch([parse_record(line("plan-1", 0), now=now),
                             parse_record(line("plan-2", 1), now=now)]).results
    assert first.outcome.value == "applied"
    assert again[0].outcome.value == "duplicate" and again[0].lead_id == first.lead_id
    assert again[1].outcome.value == "applied" and again[1].lead_id == first.lead_id
