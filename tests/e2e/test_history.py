"""`leadflow history` as an auditor reads it: one entry per stored row, naming the record
as received (or the clock), points per rule with the rules version, stage and owner changes
with the pool named, and each row's chain status; as-of and explain name their records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.test_cli import run

RECORDS = [
    {"event_id": "r1", "type": "trial_started", "occurred_at": "2026-03-02T09:00:00Z",
     "lead": {"email": "p@acme.io", "title": "VP Sales", "employees": 200},
     "actor": "web-signup",
     "context": {"source": "google-ads", "campaign": "spring", "url": "https://acme.io/t"}},
    {"event_id": "r2", "type": "email_opened", "occurred_at": "2026-03-05T09:00:00Z",
     "lead": {"email": "p@acme.io"}, "context": {"source": "email", "campaign": "nurture"}},
]


def seeded(tmp_path: Path) -> list[dict[str, object]]:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert run(["ingest", str(source)], tmp_path).returncode == 0
    done = run(["history", "p@acme.io", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def test_history_names_the_record_as_received_and_the_pool(tmp_path: Path) -> None:
    first, second = seeded(tmp_path)
    cause = first["cause"]
    assert isinstance(cause, dict)
    assert cause["kind"] == "record" and cause["event_id"] == "r1"
    assert cause["type"] == "trial_started" and cause["actor"] == "web-signup"
    assert (cause["source"], cause["campaign"]) == ("google-ads", "spring")
    assert cause["context"]["url"] == "https://acme.io/t"
    assert first["stage"] == [None, "mql"] and first["owner"][0] is None  # type: ignore[index]
    rep = first["owner"][1]  # type: ignore[index]
    assert rep and rep != "pool"
    assert all(p["rules_version"] for p in first["points"])  # type: ignore[attr-defined]
    assert {"Created", "TouchpointScored", "StageChanged", "OwnerAssigned"} <= set(
        first["events"])  # type: ignore[arg-type]
    assert first["chain"] == second["chain"] == "ok"
    # No first contact within the SLA: the lead went back to the pool, on the next record.
    assert second["cause"]["event_id"] == "r2"  # type: ignore[index]
    assert second["owner"] == [rep, "pool"]
    assert "FirstContactSlaBreached" in second["events"]  # type: ignore[operator]
    table = run(["history", "p@acme.io"], tmp_path, env={"COLUMNS": "250"})
    assert table.returncode == 0
    assert "trial_started r1" in table.stdout and "-> pool" in table.stdout
    assert "by web-signup" in table.stdout


def test_history_shows_a_damaged_row_where_it_sits(tmp_path: Path) -> None:
    seeded(tmp_path)
    with sqlite3.connect(tmp_path / "lf.db") as db:
        (rowid,) = db.execute("SELECT max(rowid) FROM stored_events WHERE topic LIKE "
                              "'%Lead.%'").fetchone()
        db.execute("UPDATE stored_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
                   "'\"event_id\":', '\"event_id\": ') AS BLOB) WHERE rowid = ?", (rowid,))
    rows = json.loads(run(["history", "p@acme.io", "--json"], tmp_path).stdout)
    assert rows[0]["chain"] == "ok"
    assert "does not match the stored payload" in rows[-1]["chain"]


def test_as_of_and_explain_name_the_records_they_used(tmp_path: Path) -> None:
    seeded(tmp_path)
    before = json.loads(run(["as-of", "p@acme.io", "2026-03-03", "--json"], tmp_path).stdout)
    assert before["records"] == ["r1"]
    later = json.loads(run(["as-of", "p@acme.io", "2026-03-06", "--json"], tmp_path).stdout)
    assert later["records"] == ["r1", "r2"]
    explained = json.loads(run(["explain", "p@acme.io", "--at", "2026-03-06", "--json"],
                               tmp_path).stdout)
    assert explained["records"] == ["r1", "r2"]
    text = run(["as-of", "p@acme.io", "2026-03-06"], tmp_path)
    assert "records used: r1, r2" in text.stdout
