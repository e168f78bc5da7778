"""Erasing a person (issue 14): personal values encrypted per person in the event store,
`leadflow forget` shredding the data keys of a lead, of the leads merged into it and of the
anonymous interest it absorbed — through the real CLI, on SQLite and on a real PostgreSQL.

After it: the raw database holds neither the email nor the phone nor the name (nor the
deleted data keys, on SQLite), `lead show EMAIL` finds nothing, `verify` passes, funnel
counts and a rebuild are unchanged, the other lead is intact, and a new record with the
same email starts a new lead. The rules have named scoring models too: their scores (kept in
the analysts' tables, which hold nothing personal of them) stay as they were.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from subprocess import CompletedProcess

import psycopg
import pytest

from leadflow.domain.rules import default_rules_text
from leadflow.projections.db import ProjectionDB
from tests.e2e.test_cli import run
from tests.integration.test_projection_hostile import dump
from tests.unit.test_scoring_models import MODELS

ANNA = {"email": "anna.geheim@acme.example", "phone": "+14155552671",
        "first_name": "Annabelle", "last_name": "Geheimnis", "title": "VP Marketing",
        "company": "Acme"}
SECRETS = [b"anna.geheim", b"4155552671", b"Annabelle", b"Geheimnis", b"crm-anna-77",
           b"cookie-anna-1"]


def record(event_id: str, kind: str, day: int, lead: dict[str, str],
           **context: str) -> dict[str, object]:
    return {"event_id": event_id, "type": kind, "occurred_at": f"2026-03-{day:02d}T09:00:00Z",
            "lead": lead, "context": {"source": "google", **context}}


LINES = [
    record("a1", "form_submitted", 2, ANNA,
           url="https://acme.example/pricing?email=anna.geheim@acme.example"),
    # A second lead for the same person (known by the CRM id only), and a cookie.
    record("a2", "email_opened", 3, {"external_id": "crm-anna-77"}),
    record("a3", "page_viewed", 4, {"anonymous_id": "cookie-anna-1"},
           url="https://acme.example/pricing"),
    # One record names all three: the CRM lead merges into Anna's, the cookie is absorbed.
    record("a4", "demo_requested", 5, {"email": ANNA["email"], "external_id": "crm-anna-77",
                                       "anonymous_id": "cookie-anna-1"}),
    record("b1", "form_submitted", 3, {"email": "bob@other.example", "phone": "+14155559999",
                                       "first_name": "Bob"}),
    record("b2", "demo_requested", 6, {"email": "bob@other.example"}),
]

Run = Callable[..., CompletedProcess[str]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Run]:
    rules = tmp_path / "rules.toml"
    rules.write_text(default_rules_text() + MODELS)  # two named models beside the primary
    env = {"LEADFLOW_RULES": str(rules)}
    if request.param == "sqlite":
        return "sqlite", lambda args, **kw: run(args, tmp_path, env=env, **kw)
    url: str = request.getfixturevalue("pg_url")
    return url, lambda args, **kw: run(args, tmp_path, env={**env, "LEADFLOW_DATABASE_URL": url},
                                       **kw)


def raw_bytes(where: str, tmp_path: Path) -> bytes:
    """Every byte the store's database holds: the SQLite files, or every row of every
    table of the PostgreSQL database as text."""
    if where == "sqlite":
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("lf.db*"))
                        if not p.name.endswith("-key"))
    out = []
    with psycopg.connect(where) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
        for table in tables:
            for (text,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                out.append(text.encode())
    return b"\n".join(out)


def store_bytes(where: str, tmp_path: Path) -> bytes:
    """The event store's rows and identity table."""
    if where == "sqlite":
        with closing(sqlite3.connect(tmp_path / "lf.db")) as db:
            rows = [bytes(s) for (s,) in db.execute("SELECT state FROM stored_events")]
            keys = [k for (k,) in db.execute("SELECT key FROM leadflow_identities")]
    else:
        with psycopg.connect(where) as conn:
            rows = [bytes(r[0]) for r in conn.execute("SELECT state FROM leadflow_events")]
            keys = [r[0] for r in conn.execute("SELECT key FROM leadflow_identities")]
    assert rows and keys
    return b"".join(rows) + "".join(keys).encode()


def data_keys(where: str, tmp_path: Path) -> list[bytes]:
    if where == "sqlite":
        with closing(sqlite3.connect(tmp_path / "lf.db")) as db:
            return [bytes(w) for (w,) in db.execute("SELECT wrapped FROM leadflow_data_keys")]
    with psycopg.connect(where) as conn:
        return [bytes(r[0]) for r in conn.execute("SELECT wrapped FROM leadflow_data_keys")]


def read_models(url: str) -> dict[str, list[tuple[object, ...]]]:
    db = ProjectionDB(url)
    try:
        return dump(db)
    finally:
        db.close()


def model_scores(url: str) -> list[tuple[object, ...]]:
    db = ProjectionDB(url)
    try:
        return [(r["lead_id"], r["model"], r["engagement_value"], bool(r["above"]))
                for r in db.query("SELECT * FROM lead_model_state ORDER BY lead_id, model")]
    finally:
        db.close()


def ok(done: CompletedProcess[str]) -> CompletedProcess[str]:
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def shown(cli: Run, who: str, *at: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(ok(cli(["lead", "show", who, "--json", *at])).stdout)
    return result


def test_forget_shreds_a_person_and_keeps_counts_verify_and_other_leads(
        backend: tuple[str, Run], tmp_path: Path) -> None:
    where, cli = backend
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in LINES))
    ok(cli(["ingest", str(source)]))
    ok(cli(["project", "--until-idle"]))

    # Encrypted from the start: nothing personal readable in the event store's tables (the
    # analysts' tables, in the same database, hold them until forget).
    assert not [s for s in SECRETS if s in store_bytes(where, tmp_path)]

    anna = shown(cli, ANNA["email"])
    assert anna["primary_key"] == f"email:{ANNA['email']}"
    assert anna["profile"]["first_name"] == "Annabelle"  # type: ignore[index]
    assert len(anna["merged_from"]) == 1  # type: ignore[arg-type]
    bob_before = shown(cli, "bob@other.example", "--at", "2026-04-01T00:00:00Z")
    funnel_before = json.loads(ok(cli(["funnel", "--json"])).stdout)
    keys_before = data_keys(where, tmp_path)
    url = f"sqlite:///{tmp_path / 'lf.db'}" if where == "sqlite" else where
    models_before = model_scores(url)
    # emea: the cookie's page (day 4, scored once the cookie is absorbed) decayed to the demo
    # request (day 5, H = 30), whose 30 expiring points take it over 30.
    assert [(m, v, a) for i, m, v, a in models_before if i == anna["lead_id"]] == [
        ("emea", pytest.approx(4 * 2 ** (-1 / 30), abs=1e-9), True)]

    forgotten = ok(cli(["forget", ANNA["email"], "--reason", "GDPR art. 17 request 1",
                        "--json"]))
    result = json.loads(forgotten.stdout)
    assert result["lead_id"] == anna["lead_id"] and len(result["leads"]) == 2
    assert result["data_keys"] == 3  # Anna's lead, the merged CRM lead, the cookie
    assert result["identities"] == 4  # email, phone, external id, anonymous id
    ok(cli(["project", "--until-idle"]))

    # Nothing personal anywhere in the database, analysts' tables included; on SQLite not
    # even the deleted data keys' bytes (secure delete, log truncated).
    after = raw_bytes(where, tmp_path)
    assert not [s for s in SECRETS if s in after]
    gone = [k for k in keys_before if k not in data_keys(where, tmp_path)]
    assert len(gone) == 3
    if where == "sqlite":
        assert not [k for k in gone if k in after]

    # The person cannot be found by any identity; the lead lives on without them.
    for identity in (ANNA["email"], "phone:+14155552671", "external_id:crm-anna-77"):
        missing = cli(["lead", "show", identity])
        assert missing.returncode == 1 and "no lead known" in missing.stderr
    lead = shown(cli, str(anna["lead_id"]))
    assert lead["forgotten"] is True and lead["primary_key"] is None
    assert lead["identities"] == [] and "first_name" not in lead["profile"]  # type: ignore[operator]
    assert (lead["stage_now"], lead["score"], lead["touchpoints"]) == (
        anna["stage_now"], anna["score"], anna["touchpoints"])
    assert shown(cli, "bob@other.example", "--at", "2026-04-01T00:00:00Z") == bob_before

    # The chain covers the ciphertext: verify passes, on the whole store and on the lead.
    verified = json.loads(ok(cli(["verify", "--json"])).stdout)
    assert verified["ok"], verified["problems"]
    assert json.loads(ok(cli(["verify", str(anna["lead_id"]), "--json"])).stdout)["ok"]

    # Counts unchanged, after the projector caught up and after a rebuild from scratch; and
    # the live read models are exactly what a rebuild makes of the forgotten person's events
    # (their typed reasons, sealed with the deleted key, emptied in both).
    assert json.loads(ok(cli(["funnel", "--json"])).stdout) == funnel_before
    assert model_scores(url) == models_before
    live = read_models(url)
    ok(cli(["rebuild"]))
    assert json.loads(ok(cli(["funnel", "--json"])).stdout) == funnel_before
    assert read_models(url) == live
    assert not [s for s in SECRETS if s in raw_bytes(where, tmp_path)]

    # History and explain still answer, without the person.
    history = ok(cli(["history", str(anna["lead_id"]), "--json"])).stdout
    assert "GDPR art. 17 request 1" in history
    assert not [s for s in SECRETS if s.decode() in history]

    # A backtest still runs over the forgotten person's lead, named by its id (its key was
    # erased), and prints nothing of the person.
    lower = tmp_path / "lower.toml"
    lower.write_text(default_rules_text().replace("mql_threshold = 50", "mql_threshold = 25", 1)
                     + MODELS)
    rescored = ok(cli(["rescore", "--rules", str(lower), "--json"])).stdout
    report = json.loads(rescored)
    assert report["leads"] == 2
    assert f"lead:{anna['lead_id']}" in [row["lead"] for row in report["changed_leads"]]
    assert not [s for s in SECRETS if s.decode() in rescored]

    # Forgetting twice is refused; the same email later starts a new lead.
    again = cli(["forget", str(anna["lead_id"]), "--reason", "again"])
    assert again.returncode == 1 and "already forgotten" in again.stderr
    source.write_text(json.dumps(record("a9", "form_submitted", 20,
                                        {"email": ANNA["email"]})) + "\n")
    ok(cli(["ingest", str(source)]))
    reborn = shown(cli, ANNA["email"])
    assert reborn["lead_id"] != anna["lead_id"] and reborn["touchpoints"] == 1
    assert json.loads(ok(cli(["verify", "--json"])).stdout)["ok"]


def test_forget_names_what_it_cannot_do(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(LINES[4]) + "\n")
    ok(run(["ingest", str(source)], tmp_path))
    unknown = run(["forget", "nobody@nowhere.example", "--reason", "x"], tmp_path)
    assert unknown.returncode == 1 and "no lead known" in unknown.stderr
    no_reason = run(["forget", "bob@other.example"], tmp_path)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    blank = run(["forget", "bob@other.example", "--reason", "  "], tmp_path)
    assert blank.returncode == 1 and "--reason" in blank.stderr
    # A store written with personal values in the clear (the bench's baseline) refuses.
    plain = tmp_path / "plain"
    plain.mkdir()
    env = {"LEADFLOW_PERSONAL_DATA": "plain"}
    ok(run(["ingest", str(source)], plain, env=env))
    with closing(sqlite3.connect(plain / "lf.db")) as db:
        states = b"".join(bytes(s) for (s,) in db.execute("SELECT state FROM stored_events"))
    assert b"bob@other.example" in states
    refused = run(["forget", "bob@other.example", "--reason", "x"], plain, env=env)
    assert refused.returncode == 1 and "not encrypted" in refused.stderr
    refused = run(["forget", "bob@other.example", "--reason", "x"], plain)
    assert refused.returncode == 1 and "before per-person encryption" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_master_key_rotation_rewraps_every_key_and_a_wrong_key_is_named(
        tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(LINES[4]) + "\n")
    old, new = "old-master-key-for-rotation-0123", "new-master-key-for-rotation-4567"
    ok(run(["ingest", str(source)], tmp_path, env={"LEADFLOW_MASTER_KEY": old}))
    wrong = run(["lead", "show", "bob@other.example"], tmp_path,
                env={"LEADFLOW_MASTER_KEY": new})
    assert wrong.returncode == 1 and "not among the configured" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    before = data_keys("sqlite", tmp_path)
    rotated = ok(run(["privacy", "rotate-master-key"], tmp_path,
                     env={"LEADFLOW_MASTER_KEY": f"{new},{old}"}))
    assert "2 key(s) re-wrapped" in rotated.stdout  # Bob's lead and the lookup key
    assert sorted(data_keys("sqlite", tmp_path)) != sorted(before)
    shown_new = json.loads(ok(run(["lead", "show", "bob@other.example", "--json"], tmp_path,
                                  env={"LEADFLOW_MASTER_KEY": new})).stdout)
    assert shown_new["profile"]["first_name"] == "Bob"
    stale = run(["lead", "show", "bob@other.example"], tmp_path,
                env={"LEADFLOW_MASTER_KEY": old})
    assert stale.returncode == 1 and "not among the configured" in stale.stderr
    # With a key file (the embedded default): a new key goes on top, the old one stays.
    (tmp_path / "f").mkdir()
    ok(run(["ingest", str(source)], tmp_path / "f",
           env={"LEADFLOW_MASTER_KEY": ""}))
    key_file = tmp_path / "f" / "lf.db.master-key"
    first = [k for k in key_file.read_text().splitlines() if not k.startswith("#")]
    ok(run(["privacy", "rotate-master-key"], tmp_path / "f", env={"LEADFLOW_MASTER_KEY": ""}))
    keys = [k for k in key_file.read_text().splitlines() if not k.startswith("#")]
    assert keys[1:] == first and len(keys) == 2
    ok(run(["lead", "show", "bob@other.example"], tmp_path / "f",
           env={"LEADFLOW_MASTER_KEY": ""}))
