"""The audit key as an operator meets it: created, wrong, rotated, required; checkpoints
that were altered or signed with another key; a damaged lead verified by its email."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import clean_env

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]


def line(n: int, email: str = "x@acme.io", day: int = 2) -> str:
    return json.dumps({"event_id": f"e{n}", "type": "email_opened",
                       "occurred_at": f"2026-03-{day:02d}T09:00:00Z", "lead": {"email": email}})


def run(args: list[str], tmp_path: Path, stdin: str | None = None,
        **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in clean_env().items() if k != "LEADFLOW_AUDIT_KEY"}
    full.update({"LEADFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'lf.db'}",
                 "LEADFLOW_LOG_FORMAT": "json"})
    full.update(env)
    return subprocess.run([*LEADFLOW, *args], capture_output=True, text=True, input=stdin,
                          cwd=tmp_path, env=full, timeout=300, check=False)


def ingest(tmp_path: Path, lines: list[str], **env: str) -> None:
    done = run(["ingest", "-"], tmp_path, "\n".join(lines) + "\n", **env)
    assert done.returncode == 0, done.stderr


def test_the_embedded_store_creates_its_key_beside_it_owner_only_and_says_so(
        tmp_path: Path) -> None:
    done = run(["ingest", "-"], tmp_path, line(1) + "\n")
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "lf.db.audit-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "audit key created" in done.stderr and str(key_file) in done.stderr
    verified = run(["verify", "--json"], tmp_path)
    assert verified.returncode == 0, verified.stdout
    report = json.loads(verified.stdout)
    assert report["ok"] and report["unkeyed_links"] == 0 and len(report["key_ids"]) == 1
    # A second command reuses the file: no new key, no message.
    again = run(["ingest", "-"], tmp_path, line(2) + "\n")
    assert "audit key created" not in again.stderr


def test_a_wrong_key_is_named_as_a_wrong_key_not_as_tampering(tmp_path: Path) -> None:
    ingest(tmp_path, [line(1), line(2, "y@acme.io")])
    wrong = run(["verify"], tmp_path, LEADFLOW_AUDIT_KEY="not-the-stores-key-0123456789")
    assert wrong.returncode == 1
    assert "the audit key is not this store's" in wrong.stderr
    assert "nothing was found altered" in wrong.stderr
    assert "Traceback" not in wrong.stderr and wrong.stdout == ""
    short = run(["verify"], tmp_path, LEADFLOW_AUDIT_KEY="short")
    assert short.returncode == 1 and "too short" in short.stderr


def test_a_rotated_key_file_keeps_old_links_verifying(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    env = {"LEADFLOW_AUDIT_KEY_FILE": str(key_file)}
    key_file.write_text("first-key-of-the-store-0123456789\n")
    ingest(tmp_path, [line(1), line(2, day=3)], **env)
    rotated = run(["audit", "rotate-key"], tmp_path, **env)
    assert rotated.returncode == 0, rotated.stderr
    assert "1 older key(s) kept" in rotated.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    ingest(tmp_path, [line(3, day=4), line(4, "y@acme.io")], **env)
    report = json.loads(run(["verify", "--json"], tmp_path, **env).stdout)
    assert report["ok"], report["problems"]
    assert len(report["key_ids"]) == 2  # old links under the old id, new under the new

    # Without the old key, its links cannot be checked: named per row, exit 4.
    keys = [k for k in key_file.read_text().splitlines() if k and not k.startswith("#")]
    lost = run(["verify", "--json"], tmp_path, LEADFLOW_AUDIT_KEY=keys[0])
    assert lost.returncode == 4
    problems = json.loads(lost.stdout)["problems"]
    assert problems and all("which is not configured" in p["problem"] for p in problems)

    # The same rotation through the environment: "NEW,OLD".
    both = run(["verify"], tmp_path, LEADFLOW_AUDIT_KEY=",".join(keys))
    assert both.returncode == 0, both.stdout


def test_postgres_without_a_key_is_refused_with_the_variables_named(tmp_path: Path) -> None:
    done = run(["verify"], tmp_path,
               LEADFLOW_DATABASE_URL="postgresql://u:secret@127.0.0.1:1/none")
    assert done.returncode == 1
    assert "LEADFLOW_AUDIT_KEY" in done.stderr and "LEADFLOW_AUDIT_KEY_FILE" in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_an_altered_checkpoint_or_one_of_another_key_is_refused(tmp_path: Path) -> None:
    ingest(tmp_path, [line(1), line(2, "y@acme.io")])
    cp = tmp_path / "cp.json"
    made = run(["audit", "checkpoint", "-o", str(cp), "--json"], tmp_path)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["aggregates"] >= 2
    assert run(["verify", "--checkpoint", str(cp)], tmp_path).returncode == 0

    data = json.loads(cp.read_text())
    data["position"] -= 1  # pretend the newest row came after the checkpoint
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(data))
    refused = run(["verify", "--checkpoint", str(altered)], tmp_path)
    assert refused.returncode == 1 and "was altered after it was written" in refused.stderr

    other = run(["verify", "--checkpoint", str(cp)], tmp_path,
                LEADFLOW_AUDIT_KEY_FILE=str(tmp_path / "other-keys"))
    assert other.returncode == 1 and "cannot be read" in other.stderr
    (tmp_path / "other-keys").write_text("someone-elses-key-0123456789abcdef\n")
    other = run(["verify", "--checkpoint", str(cp)], tmp_path,
                LEADFLOW_AUDIT_KEY_FILE=str(tmp_path / "other-keys"))
    assert other.returncode == 1 and "signed with audit key" in other.stderr
    assert run(["verify", "--checkpoint", str(tmp_path / "nope.json")],
               tmp_path).returncode == 1


def test_a_store_that_does_not_verify_gets_no_checkpoint(tmp_path: Path) -> None:
    import sqlite3

    ingest(tmp_path, [line(1), line(2, day=3), line(3, day=4)])
    with sqlite3.connect(tmp_path / "lf.db") as db:
        db.execute("UPDATE stored_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
                   "'email_opened', 'email_clicked') AS BLOB) WHERE rowid = (SELECT rowid "
                   "FROM stored_events WHERE topic LIKE '%Lead.%' ORDER BY rowid LIMIT 1 "
                   "OFFSET 1)")
    cp = tmp_path / "cp.json"
    done = run(["audit", "checkpoint", "-o", str(cp)], tmp_path)
    assert done.returncode == 4 and "no checkpoint written" in done.stderr
    assert not cp.exists()


def test_verify_by_email_names_a_deleted_middle_row_instead_of_crashing(
        tmp_path: Path) -> None:
    import sqlite3

    ingest(tmp_path, [line(1), line(2, day=3), line(3, day=4), line(4, day=5)])
    with sqlite3.connect(tmp_path / "lf.db") as db:
        db.execute("DELETE FROM stored_events WHERE rowid = (SELECT rowid FROM stored_events "
                   "WHERE topic LIKE '%Lead.%' ORDER BY rowid LIMIT 1 OFFSET 1)")
    done = run(["verify", "x@acme.io", "--json"], tmp_path)
    assert done.returncode == 4, done.stderr
    problems = json.loads(done.stdout)["problems"]
    assert any("versions jump from" in p["problem"] for p in problems)
    assert "Traceback" not in done.stderr


def test_the_key_file_is_never_inside_the_database(tmp_path: Path) -> None:
    ingest(tmp_path, [line(1)])
    key = (tmp_path / "lf.db.audit-key").read_text().splitlines()[-1].encode()
    assert key not in (tmp_path / "lf.db").read_bytes()
    assert os.path.getsize(tmp_path / "lf.db.audit-key") > 0
