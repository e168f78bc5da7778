"""The `leadflow` command as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_env

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]


def run(args: list[str], tmp_path: Path, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = clean_env()
    full_env.update({"LEADFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'lf.db'}",
                     "LEADFLOW_LOG_FORMAT": "json"})
    full_env.update(env or {})
    return subprocess.run([*LEADFLOW, *args], capture_output=True, text=True, input=stdin,
                          cwd=tmp_path, env=full_env, timeout=300, check=False)


def line(**fields: object) -> str:
    data: dict[str, object] = {"event_id": "e", "type": "email_opened",
                               "occurred_at": "2026-03-02T09:00:00Z",
                               "lead": {"email": "x@acme.io"}}
    data.update(fields)
    return json.dumps(data)


BAD_LINES = {
    "malformed_json": '{"event_id": "b1", "type": "email_opened"',
    "unknown_type": line(event_id="b2", type="tweet_liked"),
    "invalid_identity": line(event_id="b3", lead={"email": "bob@@acme"}),
    "schema_violation": line(event_id="b4", occurred_at="yesterday"),
    "timestamp_out_of_range": line(event_id="b5", occurred_at="2099-01-01T00:00:00Z"),
    "unknown_lead": line(event_id="b6", type="deal_won", lead={"email": "ghost@nowhere.io"}),
}


def test_ingest_applies_good_lines_and_reports_every_kind_of_bad_line(tmp_path: Path) -> None:
    good = [line(event_id=f"g{i}", type="content_downloaded") for i in range(5)]
    lines = [good[0], *BAD_LINES.values(), *good[1:], good[1], ""]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run(["ingest", str(source), "--json"], tmp_path)
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["applied"] == 5 and summary["duplicates"] == 1
    assert summary["rejected"] == len(BAD_LINES)
    assert summary["reasons"] == {reason: 1 for reason in BAD_LINES}
    rejects = [json.loads(x) for x in (tmp_path / "in.jsonl.rejects.jsonl").read_text()
               .splitlines()]
    by_reason = {r["reason"]: r for r in rejects}
    assert set(by_reason) == set(BAD_LINES)
    for number, reason in enumerate(BAD_LINES, start=2):
        assert by_reason[reason]["line"] == number
        assert by_reason[reason]["raw"] == BAD_LINES[reason]
        assert by_reason[reason]["detail"]
    # Each rejection is also logged as a structured event naming line and reason.
    logged = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert {(e["line"], e["reason"]) for e in logged if e["event"] == "record rejected"} == {
        (n, r) for n, r in enumerate(BAD_LINES, start=2)}

    shown = run(["lead", "show", "x@acme.io", "--at", "2026-03-02T09:00:00Z", "--json"],
                tmp_path)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert {"lead_id", "stage", "owner", "fit", "engagement", "score"} <= set(view)
    assert view["score"] == 50 and view["stage"] == "mql"


def test_ingest_from_stdin_with_only_good_lines_exits_zero(tmp_path: Path) -> None:
    result = run(["ingest", "-"], tmp_path, stdin=line(event_id="s1") + "\n")
    assert result.returncode == 0, result.stderr
    assert "1 applied" in result.stdout
    assert not (tmp_path / "rejects.jsonl").exists()


def test_lead_show_names_an_unknown_lead_and_an_invalid_identity(tmp_path: Path) -> None:
    run(["ingest", "-"], tmp_path, stdin=line(event_id="s1") + "\n")
    unknown = run(["lead", "show", "nobody@acme.io"], tmp_path)
    assert unknown.returncode == 1 and "no lead known by 'email:n***@acme.io'" in unknown.stderr
    invalid = run(["lead", "show", "email:bob@@x"], tmp_path)
    assert invalid.returncode == 1 and "invalid email" in invalid.stderr
    bad_time = run(["lead", "show", "x@acme.io", "--at", "tomorrow"], tmp_path)
    assert bad_time.returncode == 1 and "--at" in bad_time.stderr


def test_a_missing_input_file_and_a_bad_database_url_are_named(tmp_path: Path) -> None:
    missing = run(["ingest", "nope.jsonl"], tmp_path)
    assert missing.returncode == 1 and "nope.jsonl" in missing.stderr
    bad_url = run(["ingest", "-"], tmp_path, stdin="",
                  env={"LEADFLOW_DATABASE_URL": "mysql://x/y"})
    assert bad_url.returncode == 1 and "LEADFLOW_DATABASE_URL" in bad_url.stderr


def test_an_unreachable_database_is_named_without_a_traceback_or_its_password(
        tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    url = "postgresql://leadflow:s3cret@127.0.0.1:1/leadflow"
    result = run(["verify"], tmp_path,
                 env={"LEADFLOW_DATABASE_URL": url, "POSTGRES_CONNECT_TIMEOUT": "1"})
    assert result.returncode == 1, result.stderr
    assert "cannot open the database postgresql://leadflow:***@127.0.0.1:1/leadflow" \
        in result.stderr
    assert "OperationalError" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_rules_check_names_the_invalid_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[scoring]\nhalf_life_days = "a month"\n')
    result = run(["rules", "check", str(bad)], tmp_path)
    assert result.returncode == 1
    assert "scoring.half_life_days" in result.stderr
    default = run(["rules", "show-default"], tmp_path)
    good = tmp_path / "default.toml"
    good.write_text(default.stdout)
    ok = run(["rules", "check", str(good)], tmp_path)
    assert ok.returncode == 0 and "version r-" in ok.stdout
    used = run(["--rules", str(bad), "ingest", "-"], tmp_path, stdin="")
    assert used.returncode == 1 and "scoring.half_life_days" in used.stderr


def test_clock_advance_records_due_transitions(tmp_path: Path) -> None:
    run(["ingest", "-"], tmp_path, stdin=line(event_id="s1") + "\n")
    result = run(["clock", "advance", "--to", "2026-06-01"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 leads woken" in result.stdout
    shown = json.loads(run(["lead", "show", "x@acme.io", "--json"], tmp_path).stdout)
    assert shown["dormant"] is True


def test_generate_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = run(["generate", "--leads", "50", "--days", "10", "--seed", "4", "-o", "a.jsonl"],
            tmp_path)
    b = run(["generate", "--leads", "50", "--days", "10", "--seed", "4", "-o", "b.jsonl"],
            tmp_path)
    assert a.returncode == b.returncode == 0, a.stderr
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_demo_prints_stages_top_leads_and_owners(tmp_path: Path) -> None:
    result = run(["demo", "--leads", "300", "--days", "60"], tmp_path)
    assert result.returncode == 0, result.stderr
    for heading in ("Funnel:", "from previous", "Top leads by score", "why (points now)",
                    "Owners", "advanced to"):
        assert heading in result.stdout


@pytest.mark.parametrize("command", [[], ["ingest"], ["generate"], ["demo"], ["lead", "show"],
                                     ["clock", "advance"], ["rules", "check"],
                                     ["schemas", "export"]])
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    result = run([*command, "--help"], tmp_path)
    assert result.returncode == 0 and "Usage:" in result.stdout
