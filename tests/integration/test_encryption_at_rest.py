"""Encryption at rest of the whole event store (eventsourcing's cipher, AES-GCM from
`cryptography`): switched on with CIPHER_KEY alone, nothing personal readable in the rows,
every command working, and a store opened with a missing, wrong or needless key named in one
line instead of reading as damage."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from eventsourcing.cryptography import AESCipher

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from leadflow.engine.store_format import StoreCipherError
from tests.conftest import T0, Records, days
from tests.e2e.test_cli import run

LINES = [{"event_id": f"e{i}", "type": "form_submitted" if i == 0 else "email_opened",
          "occurred_at": f"2026-03-0{i + 2}T09:00:00Z",
          "lead": {"email": "secret.person@acme.io", "phone": "+442079460958",
                   "first_name": "Secret"}} for i in range(3)]


def key() -> str:
    return AESCipher.create_key(32)


def test_cipher_key_alone_encrypts_every_row_and_every_command_still_works(
        tmp_path: Path) -> None:
    env = {"CIPHER_KEY": key()}
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in LINES))
    assert run(["ingest", str(source)], tmp_path, env=env).returncode == 0
    with sqlite3.connect(tmp_path / "lf.db") as db:
        states = [bytes(s) for (s,) in db.execute("SELECT state FROM stored_events")]
    assert states and not any(b"secret.person" in s or b"2079460958" in s or b"Secret" in s
                              for s in states)
    shown = run(["lead", "show", "secret.person@acme.io", "--json"], tmp_path, env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["touchpoints"] == 3
    verified = run(["verify", "--json"], tmp_path, env=env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"]
    assert run(["project", "--until-idle"], tmp_path, env=env).returncode == 0
    assert run(["history", "secret.person@acme.io"], tmp_path, env=env).returncode == 0


def test_a_missing_wrong_or_needless_key_is_named(tmp_path: Path) -> None:
    right = {"CIPHER_KEY": key()}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(LINES[0]) + "\n")
    assert run(["ingest", str(source)], tmp_path, env=right).returncode == 0
    for env, says in (({}, "encrypted at rest: set CIPHER_KEY"),
                      ({"CIPHER_KEY": key()}, "not the key this event store was encrypted")):
        for command in (["verify"], ["lead", "show", "secret.person@acme.io"]):
            done = run(command, tmp_path, env=env)
            assert done.returncode == 1 and says in done.stderr, (command, done.stderr)
            assert "Traceback" not in done.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run(["ingest", str(source)], plain).returncode == 0
    needless = run(["verify"], plain, env=right)
    assert needless.returncode == 1 and "not encrypted at rest" in needless.stderr


def test_postgres_rows_are_encrypted_too(pg_url: str, rec: Records,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIPHER_KEY", key())
    app = LeadflowApp(env=Settings(database_url=pg_url).eventsourcing_env())
    try:
        app.apply_batch([rec("email_opened", "secret.person@acme.io", at=T0 + days(i))
                         for i in range(3)])
        assert app.verify(app.resolve("email:secret.person@acme.io")).ok
    finally:
        app.close()
    with psycopg.connect(pg_url) as conn:
        states = [bytes(r[0]) for r in conn.execute("SELECT state FROM leadflow_events")]
    assert states and not any(b"secret.person" in s for s in states)
    monkeypatch.delenv("CIPHER_KEY")
    with pytest.raises(StoreCipherError, match="encrypted at rest"):
        LeadflowApp(env=Settings(database_url=pg_url).eventsourcing_env())
