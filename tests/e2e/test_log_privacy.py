"""Logs never carry the emails or phones of the input: `leadflow ingest` with good and bad
lines, JSON logs at DEBUG, stderr searched for every address and number it was given."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.test_cli import line, run

EMAILS = ("anna.smith@acme.io", "bob.jones@acme.io", "carol@globex.com", "ghost.person@nowhere.io",
          "dup.email@acme.io", "long.text@acme.io", "broken@acme.io", "lookalike@аcme.io",
          "ｆｕｌｌ@acme.io", "bob@@acme.io", "two@acme.io", "mixed@acme.io")
PHONES = ("+442079460958", "+44 20 7946 0959", "020 7946 0958", "4155550100", "+1 415 555 01",
          "+49 30 901820")


def lines() -> list[str]:
    return [
        # good: applied, with identities and a disposition that names the lead
        line(event_id="g1", type="form_submitted",
             lead={"email": EMAILS[0], "phone": PHONES[0], "first_name": "Anna"}),
        line(event_id="g2", lead={"email": EMAILS[1], "phone": PHONES[1]}),
        line(event_id="g3", type="demo_requested", lead={"email": EMAILS[2]}),
        line(event_id="g4", type="sales_accepted", actor="rep-a", lead={"email": EMAILS[0]}),
        # bad, by the parser: every one echoes the offending value in its detail
        line(event_id="b1", lead={"email": EMAILS[7]}),                # look-alike
        line(event_id="b2", lead={"email": EMAILS[8]}),                # full-width
        line(event_id="b3", lead={"email": EMAILS[9]}),                # not an address
        line(event_id="b4", lead={"email": EMAILS[10], "phone": PHONES[2]}),  # no +country
        line(event_id="b5", lead={"phone": PHONES[3]}),                # bare digits
        line(event_id="b6", lead={"phone": PHONES[4]}),                # too short
        line(event_id="b7", lead={"email": EMAILS[5], "title": "x" * 600}),   # too long
        '{"event_id": "b8", "lead": {"email": "' + EMAILS[6] + '"',    # malformed JSON
        line(event_id="b9", lead={"email": EMAILS[11]}, extra={"phone": PHONES[5]}),
        # bad, by the engine: a disposition for a lead never seen, an event id reused
        line(event_id="b10", type="deal_won", actor="rep-a", lead={"email": EMAILS[3]}),
        line(event_id="g2", lead={"email": EMAILS[4]}),
    ]


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def test_ingest_logs_no_email_or_phone_of_its_input_while_the_rejects_file_keeps_them(
        tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines()) + "\n", encoding="utf-8")
    env = {"LEADFLOW_LOG_LEVEL": "DEBUG"}
    result = run(["ingest", str(source)], tmp_path, env=env)
    assert result.returncode == 3, result.stderr
    logs = [json.loads(x) for x in result.stderr.splitlines()]
    rejected = [x for x in logs if x["event"] == "record rejected"]
    assert len(rejected) == 11
    # The details still say what was wrong, with the person masked out of them.
    details = " ".join(str(x.get("detail")) for x in rejected)
    assert "l***@аcme.io" in details and "********00" in details

    shown = result.stderr + result.stdout
    for email in EMAILS:
        assert email not in shown and email.lower() not in shown.lower(), email
        assert email.split("@")[0] + "@" not in shown
    for phone in PHONES:
        assert phone not in shown, phone
        # Nor its digits with other separators, in any one line.
        assert not any(digits(phone) in digits(x) for x in shown.splitlines()), phone

    # What forget cannot reach: the rejects file holds the raw lines, addresses and all.
    rejects = " ".join(json.loads(x)["raw"] for x in
                       (tmp_path / "in.jsonl.rejects.jsonl").read_text().splitlines())
    assert EMAILS[9] in rejects and PHONES[3] in rejects


def test_one_line_errors_mask_the_identity_while_asked_for_output_shows_it(
        tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(lines()[0] + "\n", encoding="utf-8")
    assert run(["ingest", str(source)], tmp_path).returncode == 0
    unknown = run(["lead", "show", "phone:+442079460999"], tmp_path)
    assert unknown.returncode == 1
    assert "+442079460999" not in unknown.stderr and "+44********99" in unknown.stderr
    shown = run(["lead", "show", EMAILS[0], "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert EMAILS[0] not in shown.stderr
    assert EMAILS[0] in shown.stdout  # the operator asked for this lead
