"""bench/floor.py, the bench's measuring stick, measures what it says: every published record
of a real topic consumed once, one keyed row per applied record, tracked per partition, on
a real PostgreSQL store (a floor that silently skipped work would flatter every ratio)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from leadflow.generator import generate
from tests.integration.kafka_helpers import Pipeline, valid_records

pytestmark = pytest.mark.integration

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "floor.py"


def test_the_floor_consumes_every_record_once_into_one_row_each(pipe: Pipeline,
                                                                 tmp_path: Path) -> None:
    pipe.create_topics(partitions=3)
    lines = list(generate(leads=150, days=20, seed=5))
    stream = tmp_path / "s.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    assert pipe.run("publish", str(stream)).returncode in (0, 3)
    assert pipe.run("db", "init").returncode == 0
    published = len(valid_records(lines))

    done = subprocess.run([sys.executable, str(FLOOR)], env=pipe.env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["records"] == published
    assert report["rejected"] == 0 and report["conflicts"] == 0
    with psycopg.connect(pipe.pg_url) as conn:
        rows = conn.execute("SELECT count(*) FROM leadflow_events").fetchone()
        ids = conn.execute("SELECT count(*) FROM leadflow_record_ids").fetchone()
        tracked = conn.execute("SELECT count(*) FROM leadflow_tracking").fetchone()
    assert rows is not None and ids is not None and tracked is not None
    assert rows[0] == report["rows"] == ids[0] == published - report["duplicates"]
    assert tracked[0] >= 3  # a tracking row per applied batch, each partition's included
    assert report["records_per_s"] > 0 and report["cpu_us_per_record"] > 0


def test_the_aggregate_floor_stores_the_engines_lead_events(pipe: Pipeline,
                                                            tmp_path: Path) -> None:
    """``--aggregates`` (what an engine on the library's aggregates pays before it decides
    more than a score) consumes every record once and stores events the engine replays: each
    applied touchpoint is on its lead, every row's keyed link verifies."""
    pipe.create_topics(partitions=3)
    lines = list(generate(leads=150, days=20, seed=5))
    stream = tmp_path / "s.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    assert pipe.run("publish", str(stream)).returncode in (0, 3)
    records = valid_records(lines)
    unique = {record.event_id: record for record in records}
    touchpoints = {event_id for event_id, record in unique.items() if record.is_touchpoint}
    assert len(unique) < len(records)  # the stream repeats some records: they count once

    done = subprocess.run([sys.executable, str(FLOOR), "--aggregates"], env=pipe.env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["records"] == len(records)
    assert report["rejected"] == 0 and report["conflicts"] == 0
    assert report["duplicates"] == len(records) - len(unique)
    with psycopg.connect(pipe.pg_url) as conn:
        ids = conn.execute("SELECT count(*) FROM leadflow_record_ids").fetchone()
        topics = {row[0] for row in conn.execute("SELECT DISTINCT topic FROM leadflow_events")}
        lead_ids = [row[0] for row in conn.execute(
            "SELECT DISTINCT originator_id FROM leadflow_events")]
    assert ids is not None and ids[0] == len(unique)
    assert topics and all(topic.startswith("leadflow.domain:Lead.") for topic in topics)

    app = pipe.app()
    stored = app.codec.select_many(lead_ids)
    replayed = list(app._replayed(stored, lead_ids))
    assert [exc for _, _, exc in replayed if exc is not None] == []
    assert len(replayed) == len(lead_ids)
    seen: set[str] = set()
    for _, lead, _ in replayed:
        seen.update(lead.seen)
    assert seen == touchpoints

    verified = pipe.run("verify", "--json")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
