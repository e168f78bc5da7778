"""The `leadflow` command facing bad arguments, unwritable paths, odd database URLs and a
damaged store: a one-line named error (exit 1), a usage error (exit 2) or a finding (exit 4),
never a traceback. Real processes, real files, as in test_cli.py."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import termios
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import clean_env
from tests.e2e.test_cli import LEADFLOW, line, run


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The error line of a failed command: exit 1, a single ``error:`` line, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def ingest_lines(tmp_path: Path, *lines: str) -> None:
    result = run(["ingest", "-"], tmp_path, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr


def lead_id(tmp_path: Path, identity: str) -> str:
    shown = run(["lead", "show", identity, "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["lead_id"])


# ------------------------------------------------------------------ 1. lead ids as IDENTITY


def test_every_identity_command_accepts_the_lead_id_it_prints(tmp_path: Path) -> None:
    crm_id = "5f0c2f6e-3f7a-4c2b-9d1e-0a1b2c3d4e5f"  # an external id that looks like a UUID
    ingest_lines(
        tmp_path,
        line(event_id="m1", lead={"email": "anna@acme.io"}),
        line(event_id="m2", occurred_at="2026-03-03T09:00:00Z",
             lead={"phone": "+442079460958"}),
        # Names both: the phone's lead is merged into anna's.
        line(event_id="m3", type="form_submitted", occurred_at="2026-03-04T09:00:00Z",
             lead={"email": "anna@acme.io", "phone": "+442079460958"}),
        line(event_id="m4", lead={"external_id": crm_id}),
    )
    anna = lead_id(tmp_path, "anna@acme.io")
    merged = json.loads(run(["lead", "show", anna, "--json"], tmp_path).stdout)["merged_from"]
    assert len(merged) == 1
    phone_lead = merged[0]

    for form in (anna, f"lead:{anna}", anna.upper(), f"  {anna} "):
        assert lead_id(tmp_path, form) == anna, form
    # A merged lead's id leads to the lead it was merged into, like its identities do.
    assert lead_id(tmp_path, phone_lead) == anna

    history = run(["history", anna, "--json"], tmp_path)
    assert history.returncode == 0, history.stderr
    assert {e["lead_id"] for e in json.loads(history.stdout)} == {anna, phone_lead}
    as_of = run(["as-of", anna, "2026-03-05", "--json"], tmp_path)
    assert as_of.returncode == 0, as_of.stderr
    assert json.loads(as_of.stdout)["lead_id"] == anna
    explain = run(["explain", f"lead:{anna}", "--at", "2026-03-05", "--json"], tmp_path)
    assert explain.returncode == 0, explain.stderr
    # verify IDENTITY names exactly that lead's chain, a merged lead's included.
    for target in (anna, phone_lead):
        verified = run(["verify", target, "--json"], tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert list(json.loads(verified.stdout)["heads"]) == [target]

    # unmerge takes the merged lead's id (it stands for that lead's identities).
    unmerged = run(["unmerge", phone_lead], tmp_path)
    assert unmerged.returncode == 0, unmerged.stderr
    assert f"lead {phone_lead} separated from lead {anna}" in unmerged.stdout
    assert lead_id(tmp_path, "+442079460958") == phone_lead

    # A UUID that is no lead id is tried as an external id ...
    crm_lead = lead_id(tmp_path, crm_id)
    assert crm_lead != crm_id and lead_id(tmp_path, f"external_id:{crm_id}") == crm_lead
    # ... and when it is neither, both readings are named.
    unknown = str(uuid.UUID(int=1))
    one_line_error(run(["lead", "show", unknown], tmp_path),
                   f"no lead with id {unknown}", f"'external_id:{unknown}'")
    # lead:<uuid> means only the lead id; lead:<anything else> is not an identity.
    one_line_error(run(["lead", "show", f"lead:{crm_id}"], tmp_path),
                   f"no lead with id {crm_id}")
    one_line_error(run(["history", "lead:CRM-1"], tmp_path), "invalid lead id 'CRM-1'")


# ------------------------------------------------------------------ 2. named errors, exit 1


def test_unwritable_output_paths_are_named_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "dir"
    one_line_error(run(["generate", "--leads", "5", "-o", str(missing / "x.jsonl")], tmp_path),
                   f"cannot write {missing / 'x.jsonl'}", f"the directory {missing} does not")
    one_line_error(run(["generate", "--leads", "5", "-o", str(tmp_path)], tmp_path),
                   "is a directory")
    one_line_error(run(["report", "--html", str(missing / "r.html")], tmp_path),
                   f"cannot write the report {missing / 'r.html'}")
    source = tmp_path / "in.jsonl"
    source.write_text(line(event_id="w1") + "\n")
    one_line_error(run(["ingest", "--rejects", str(missing / "x.jsonl"), str(source)],
                       tmp_path), f"cannot write the rejects file {missing / 'x.jsonl'}")
    # Nothing was applied on the way to that error.
    one_line_error(run(["lead", "show", "x@acme.io"], tmp_path), "no lead known")


@pytest.mark.parametrize("command", [
    ["funnel"], ["report", "--html", "r.html"], ["project", "--until-idle"], ["rebuild"],
    ["lead", "show", "x@acme.io"], ["verify"], ["ingest", "-"], ["clock", "advance"],
    ["db", "init"],
], ids=lambda c: "-".join(c[:2]))
def test_a_sqlite_database_in_a_missing_directory_is_named(command: list[str],
                                                          tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    url = f"sqlite:///{directory / 'x.db'}"
    by_env = run(command, tmp_path, stdin="", env={"LEADFLOW_DATABASE_URL": url})
    one_line_error(by_env, f"the directory {directory} does not exist")
    by_option = run(["--database", url, *command], tmp_path, stdin="")
    one_line_error(by_option, f"the directory {directory} does not exist")
    assert not directory.exists()


# Every option and argument that takes a time: (name in the message, command).
TIME_OPTIONS = [
    ("--at", ["lead", "show", "x@acme.io", "--at", "{}"]),
    ("--at", ["explain", "x@acme.io", "--at", "{}"]),
    ("TIME", ["as-of", "x@acme.io", "{}"]),
    ("--known-at", ["as-of", "x@acme.io", "2026-03-02", "--known-at", "{}"]),
    ("--to", ["clock", "advance", "--to", "{}"]),
    ("--from", ["funnel", "--from", "{}"]),
    ("--to", ["funnel", "--to", "{}"]),
    ("--from", ["rescore", "--rules", "candidate.toml", "--from", "{}"]),
    ("--start", ["generate", "--start", "{}", "-o", "g.jsonl"]),
]


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_time_outside_the_representable_range_is_named(text: str, tmp_path: Path) -> None:
    ingest_lines(tmp_path, line(event_id="t1"))
    (tmp_path / "candidate.toml").write_text(run(["rules", "show-default"], tmp_path).stdout)
    for name, template in TIME_OPTIONS:
        command = [text if part == "{}" else part for part in template]
        one_line_error(run(command, tmp_path), f"{name}: {text!r} is outside")
    # The last day that can be written down still works as an open end.
    up_to_the_end = run(["funnel", "--to", "9999-12-31", "--json"], tmp_path)
    assert up_to_the_end.returncode == 0, up_to_the_end.stderr
    assert json.loads(up_to_the_end.stdout)["stages"][0]["count"] == 1
    far = run(["generate", "--start", "9999-12-01", "--days", "90", "-o", "g.jsonl"], tmp_path)
    one_line_error(far, "goes past the year 9999")


# A password with every character a URL parser splits on; each piece is long enough to be
# looked for in the output.
PIECES = ("hunter", "lemon", "grape", "melon", "kiwi77")
PASSWORD = "hunter/lemon@grape#melon?kiwi77"


@pytest.mark.parametrize("command", [["funnel"], ["verify"], ["db", "init"],
                                     ["lead", "show", "x@acme.io"]], ids=lambda c: c[0])
def test_a_postgres_password_with_reserved_characters_is_read_and_never_printed(
        command: list[str], tmp_path: Path) -> None:
    # Nothing listens on port 1: the connection is refused, and the message says where to.
    url = f"postgresql://leadflow:{PASSWORD}@127.0.0.1:1/leadflow"
    result = run(command, tmp_path, env={"LEADFLOW_DATABASE_URL": url,
                                         "POSTGRES_CONNECT_TIMEOUT": "1"})
    error = one_line_error(result, "postgresql://leadflow:***@127.0.0.1:1/leadflow")
    if command == ["funnel"]:  # psycopg names the host and port it was given
        assert '"127.0.0.1", port 1' in error
    for piece in PIECES:
        assert piece not in result.stderr + result.stdout, piece


def test_a_postgres_url_that_reads_two_ways_or_names_no_database_is_refused(
        tmp_path: Path) -> None:
    # Is "?x=a@b/c" a query of db, or is the password "lemon4@h/db?x=a" on host b?
    two_ways = run(["verify"], tmp_path,
                   env={"LEADFLOW_DATABASE_URL": "postgresql://u:lemon4@h/db?x=a@b/c"})
    one_line_error(two_ways, "cannot tell where the password ends", "percent-encode")
    assert "lemon4" not in two_ways.stderr
    no_db = run(["verify"], tmp_path,
                env={"LEADFLOW_DATABASE_URL": f"postgresql://u:{PASSWORD}@127.0.0.1:1"})
    one_line_error(no_db, "names no database")
    for piece in PIECES:
        assert piece not in no_db.stderr, piece
    encoded = run(["funnel"], tmp_path, env={
        "LEADFLOW_DATABASE_URL": "postgresql://u:lemon%2Fgrape%40x@127.0.0.1:1/db",
        "POSTGRES_CONNECT_TIMEOUT": "1"})
    one_line_error(encoded, "postgresql://u:***@127.0.0.1:1/db", '"127.0.0.1", port 1')
    assert "lemon" not in encoded.stderr


# ------------------------------------------------------------------ usage errors, exit 2


def test_conflicting_flags_are_usage_errors(tmp_path: Path) -> None:
    ingest_lines(tmp_path, line(event_id="u1"))
    usage_error(run(["funnel", "--from", "2026-03-01", "--to", "2026-01-31"], tmp_path),
                "--from 2026-03-01 is later than --to 2026-01-31")
    usage_error(run(["funnel", "--json", "--csv"], tmp_path), "choose one")
    usage_error(run(["verify", "--expect-head", "abc"], tmp_path), "--expect-head needs IDENTITY")
    usage_error(run(["rebuild", "--projection", "leads"], tmp_path), "'leads' is unknown")
    source = tmp_path / "in.jsonl"
    source.write_text(line(event_id="u2") + "\n")
    usage_error(run(["ingest", str(source), "--rejects", str(source)], tmp_path),
                "is the input file")
    assert source.read_text() == line(event_id="u2") + "\n"


# ------------------------------------------------------------------ 3. a damaged store


class Store:
    """Direct SQL on the SQLite event store, as damage from outside leadflow would be."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "lf.db"

    def execute(self, statement: str, params: list[object]) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.path) as conn:
            return conn.execute(statement, params).fetchall()

    def delete(self, lead: str, version: int) -> None:
        self.execute("DELETE FROM stored_events WHERE originator_id = ? AND "
                     "originator_version = ?", [uuid.UUID(lead).hex, version])

    def garble(self, lead: str, version: int) -> None:
        self.execute("UPDATE stored_events SET state = ? WHERE originator_id = ? AND "
                     "originator_version = ?", [b"not json", uuid.UUID(lead).hex, version])


def damaged(tmp_path: Path, damage: str) -> tuple[str, int]:
    ingest_lines(tmp_path, *(line(event_id=f"d{i}", occurred_at=f"2026-03-0{i}T09:00:00Z")
                             for i in range(1, 5)),
                 line(event_id="d9", lead={"email": "fine@acme.io"}))
    lead = lead_id(tmp_path, "x@acme.io")
    store = Store(tmp_path)
    # The lead's third stored row (one row per record: its versions are those of the first
    # event each row holds).
    version = int(store.execute(
        "SELECT originator_version FROM stored_events WHERE originator_id = ? "
        "ORDER BY originator_version LIMIT 1 OFFSET 2", [uuid.UUID(lead).hex])[0][0])
    getattr(store, damage)(lead, version)
    return lead, version


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_a_damaged_lead_is_named_by_every_command_and_reported_by_verify(
        damage: str, tmp_path: Path) -> None:
    lead, version = damaged(tmp_path, damage)
    for command in (["lead", "show", "x@acme.io"], ["lead", "show", lead],
                    ["history", "x@acme.io"], ["explain", "x@acme.io"],
                    ["as-of", "x@acme.io", "2026-03-05"], ["unmerge", "x@acme.io"]):
        one_line_error(run(command, tmp_path), "leadflow verify")
    one_line_error(run(["lead", "show", "x@acme.io"], tmp_path), lead)
    # The other lead is unaffected.
    assert lead_id(tmp_path, "fine@acme.io") != lead

    # verify IDENTITY verifies the lead that cannot be loaded: a finding, exit 4.
    for identity in ("x@acme.io", lead):
        result = run(["verify", identity, "--json"], tmp_path)
        assert result.returncode == 4, result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] is False and list(report["heads"]) == [lead]
        assert {p["lead_id"] for p in report["problems"]} == {lead}
        assert version in {p["version"] for p in report["problems"]}
    everything = run(["verify", "--json"], tmp_path)
    assert everything.returncode == 4, everything.stderr
    report = json.loads(everything.stdout)
    assert report["leads"] == 2 and {p["lead_id"] for p in report["problems"]} == {lead}
    text = run(["verify", "x@acme.io"], tmp_path)
    assert text.returncode == 4 and f"lead {lead} version {version}" in text.stdout


def test_verify_and_rescore_get_past_rows_that_cannot_be_read(tmp_path: Path) -> None:
    lead, _ = damaged(tmp_path, "delete")
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(run(["rules", "show-default"], tmp_path).stdout)
    # A backtest leaves the lead that cannot be loaded out, and says so.
    backtest = run(["rescore", "--rules", str(candidate), "--json"], tmp_path)
    assert backtest.returncode == 0, backtest.stderr
    result = json.loads(backtest.stdout)
    assert result["unloadable_leads"] == [lead] and result["leads"] == 1
    text = run(["rescore", "--rules", str(candidate)], tmp_path)
    assert text.returncode == 0 and "1 leads left out" in text.stdout

    # A Created row whose originator id is no UUID any more (SQLite keeps any text there).
    Store(tmp_path).execute("UPDATE stored_events SET originator_id = 'not-a-uuid' WHERE "
                            "originator_id = ? AND originator_version = 1",
                            [uuid.UUID(lead).hex])
    result = run(["verify", "--json"], tmp_path)
    assert result.returncode == 4, result.stderr
    report = json.loads(result.stdout)
    # fine@acme.io still verifies; the damaged lead's other rows are checked on their own.
    assert report["leads"] == 2
    moved = [p for p in report["problems"] if p["aggregate_id"] is None]
    assert len(moved) == 1 and "originator id 'not-a-uuid', which is no UUID" in \
        moved[0]["problem"]
    rest = [p for p in report["problems"] if p["aggregate_id"] is not None]
    assert {p["lead_id"] for p in rest} == {lead}
    assert any("versions jump from 0" in p["problem"] for p in rest)
    backtest = run(["rescore", "--rules", str(candidate), "--json"], tmp_path)
    assert backtest.returncode == 0, backtest.stderr
    assert len(json.loads(backtest.stdout)["unloadable_leads"]) == 1
    # The projector names the unreadable row's position instead of a ValueError traceback.
    projected = run(["project", "--until-idle"], tmp_path)
    assert projected.returncode == 1 and "Traceback" not in projected.stderr
    assert "cannot project event" in projected.stderr
    assert "cannot read the events after" in projected.stderr


# ------------------------------------------------------------------ 4. projector failures


def test_project_and_rebuild_name_an_event_the_read_models_cannot_take(
        tmp_path: Path) -> None:
    lead, _ = damaged(tmp_path, "garble")
    for command, kept in ((["project", "--until-idle"], "they stay up to date"),
                          (["rebuild"], "the live tables are unchanged"),
                          (["funnel"], "they stay up to date")):
        one_line_error(run(command, tmp_path), "cannot project event", lead,
                       "the read models cannot take", kept, "leadflow verify", "report")


# ------------------------------------------------------------------ 5. progress and warnings


def on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (120 columns): what a person at a shell sees."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([*LEADFLOW, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # the other side is closed: the process is gone
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    return process.wait(timeout=60), stdout, screen.decode(errors="replace")


def test_a_progress_bar_counts_records_and_rejections_are_summarised_under_it(
        tmp_path: Path) -> None:
    lines = [line(event_id=f"p{i}", lead={"email": f"p{i}@acme.io"}) if i % 3
             else '{"event_id": "broken"' for i in range(1500)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    env = clean_env()
    env.update(LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'lf.db'}", COLUMNS="120",
               TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    code, stdout, screen = on_a_terminal(["ingest", str(source)], tmp_path, env)
    assert code == 3, screen
    assert "1000 applied" in stdout and "500 rejected" in stdout
    # The bar counts records, not only bytes.
    assert "1,500 records" in screen, screen
    # One summary line after the bar instead of 500 warnings scrolling it away.
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert text.count("record rejected") == 1, text
    summary = next(x for x in text.splitlines() if "record rejected (summary)" in x)
    assert "count=500" in summary and "malformed_json" in summary, summary
    # The rejects file still has every line.
    assert len((tmp_path / "in.jsonl.rejects.jsonl").read_text().splitlines()) == 500

    # Not on a terminal (no bar), the JSON log carries every rejection for operators.
    (tmp_path / "lf.db").unlink()
    piped = run(["ingest", str(source)], tmp_path)
    assert piped.returncode == 3
    logged = [json.loads(x) for x in piped.stderr.splitlines() if x.startswith("{")]
    assert sum(e["event"] == "record rejected" for e in logged) == 500
    assert not any("summary" in e["event"] for e in logged)


def test_clock_advance_moves_past_a_damaged_lead_and_names_it(tmp_path: Path) -> None:
    lead, _ = damaged(tmp_path, "delete")
    result = run(["clock", "advance", "--to", "2026-12-31"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"1 leads skipped: their stored events cannot be loaded ({lead})" in result.stdout
    # Every other lead went on: fine@acme.io fell dormant after 60 silent days.
    shown = run(["lead", "show", "fine@acme.io", "--json"], tmp_path)
    assert json.loads(shown.stdout)["dormant"] is True
