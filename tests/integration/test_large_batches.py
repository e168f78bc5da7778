"""Batches of large records, and batches through a small socket buffer, reach PostgreSQL whole.

A record may carry 50 custom properties of 500 characters (~27 kB stored), so a batch of a
few hundred of them is a transaction of several MB. psycopg's pipeline mode hung for ever
on such a transaction (it stopped writing with part of the batch's INSERT still unsent and
waited for results; store/postgres.py ``_write``), and with it `leadflow ingest` and a
consumer whose fetches are large enough to hold such a batch; through a socket that takes
less at once (a 64 KiB send buffer), an ordinary batch. Each run here is a subprocess with
a deadline: a hang fails the test instead of blocking the suite. On the previous code the
ingest and small-buffer tests hang every time, the consumer test about 2 runs in 3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import clean_env
from tests.integration.kafka_helpers import Pipeline

pytestmark = pytest.mark.integration

RECORDS = 600  # ~16 MB stored in one batch: well past where the pipeline hung (~6 MB)
LEADS = 20


def large_records(path: Path) -> list[str]:
    """RECORDS page views of LEADS leads, each with 50 properties of 500 characters."""
    ids: list[str] = []
    with path.open("w", encoding="utf-8") as out:
        for n in range(RECORDS):
            event_id = f"large-{n}"
            ids.append(event_id)
            properties = {f"p{k:02d}": (f"{n}-{k}-" + "abcdefghij" * 50)[:500]
                          for k in range(50)}
            out.write(json.dumps({
                "event_id": event_id, "type": "page_viewed",
                "occurred_at": f"2026-03-02T{9 + n // 120:02d}:{n % 60:02d}:00Z",
                "lead": {"email": f"reader{n % LEADS}@acme.io"},
                "context": {"url": "https://example.com/docs", "properties": properties},
            }) + "\n")
    return ids


def applied_ids(pg_url: str) -> set[str]:
    with psycopg.connect(pg_url) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM leadflow_record_ids")}


def test_ingest_applies_a_multi_megabyte_batch_of_large_records(
        pipe: Pipeline, tmp_path: Path) -> None:
    ids = large_records(tmp_path / "large.jsonl")
    assert (tmp_path / "large.jsonl").stat().st_size > 15_000_000
    # One batch of all of them (the default batch size is 1,000).
    done = pipe.run("ingest", str(tmp_path / "large.jsonl"), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert applied_ids(pipe.pg_url) == set(ids)
    lead = pipe.run("lead", "show", "reader0@acme.io", "--json", timeout=120)
    assert lead.returncode == 0, lead.stderr[-3000:]
    assert json.loads(lead.stdout)["touchpoints"] == RECORDS // LEADS


def test_a_consumer_with_large_fetches_applies_a_multi_megabyte_batch(
        pipe: Pipeline, tmp_path: Path) -> None:
    ids = large_records(tmp_path / "large.jsonl")
    pipe.create_topics(partitions=1)
    published = pipe.run("publish", str(tmp_path / "large.jsonl"), timeout=180)
    assert published.returncode == 0, published.stderr[-3000:]
    # Fetches large enough that one poll holds every record: one batch, one transaction.
    consumed = pipe.run("consume", "--until-idle", timeout=180,
                        LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES=str(64 << 20))
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    assert applied_ids(pipe.pg_url) == set(ids)


# One batch of ordinary records (~1,500 rows, ~1.3 MB) written by an engine whose one pooled
# connection has a 64 KiB socket send buffer, as a link that takes less at once than this
# machine's loopback would. psycopg's own pipeline hung on that every time.
SMALL_BUFFER = """
import os, socket, sys
from datetime import UTC, datetime
from itertools import islice
from leadflow.config import Settings
from leadflow.contract import RecordRejected, parse_record
from leadflow.engine.app import LeadflowApp
from leadflow.generator import generate

app = LeadflowApp(env=Settings(database_url=sys.argv[1]).eventsourcing_env())
with app.recorder.datastore.get_connection() as conn:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    sock.close()  # the duplicate descriptor only: the option stays on the socket
records = []
for line in islice(generate(leads=400, days=30, seed=5), 1600):
    try:
        records.append(parse_record(line.encode(), now=datetime(2030, 1, 1, tzinfo=UTC)))
    except RecordRejected:
        pass
result = app.apply_batch(records)
print(result.applied, len(records))
app.close()
"""


def test_a_batch_is_sent_whole_through_a_small_socket_buffer(pg_url: str) -> None:
    env = clean_env()
    env.update({"POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "0"})
    done = subprocess.run([sys.executable, "-c", SMALL_BUFFER, pg_url], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    applied, records = map(int, done.stdout.strip().splitlines()[-1].split())
    assert records > 1500 and applied > 1400
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT count(*), sum(length(state)) FROM leadflow_events"
                              ).fetchone()
    assert stored is not None and stored[1] > 1_000_000  # one transaction of over 1 MB
