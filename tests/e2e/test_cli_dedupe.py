"""Duplicates through the real CLI on the embedded store: `dedupe suggest`, `dedupe reject`,
`merge` and its `unmerge`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.test_cli import run


def record(event_id: str, day: int, **lead: Any) -> str:
    return json.dumps({"event_id": event_id, "type": "form_submitted",
                       "occurred_at": f"2026-03-{day:02d}T09:00:00Z", "lead": lead})


PEOPLE = [
    # name and company: one person with an email, then with a phone
    record("jo-1", 1, email="jo.miller@initech.example", first_name="Jo", last_name="Miller",
           company="Initech"),
    record("jo-2", 3, phone="+4915112345678", first_name="Jo", last_name="Miller",
           company="Initech Inc"),
    # email local parts alike: anna@ and a.schmidt@ at one company
    record("anna-1", 2, email="anna@acme.example", first_name="Anna", last_name="Schmidt",
           company="Acme GmbH"),
    record("anna-2", 4, email="a.schmidt@acme.example", company="Acme"),
    # the same phone in another format (a CRM keyed her by her national number)
    record("lena-1", 2, phone="+4915199887766", first_name="Lena", last_name="Vogel",
           company="Globex"),
    record("lena-2", 5, external_id="crm:0151 99887766"),
    # namesakes at different companies: two people
    record("peter-1", 1, email="peter.meyer@umbrella.example", first_name="Peter",
           last_name="Meyer", company="Umbrella"),
    record("peter-2", 2, email="peter.meyer@hooli.example", first_name="Peter",
           last_name="Meyer", company="Hooli"),
]


def seeded(tmp_path: Path) -> Path:
    source = tmp_path / "people.jsonl"
    source.write_text("\n".join(PEOPLE) + "\n")
    result = run(["ingest", str(source)], tmp_path)
    assert result.returncode == 0, result.stderr
    return source


def suggested(tmp_path: Path, *args: str) -> dict[frozenset[str], dict[str, Any]]:
    result = run(["dedupe", "suggest", "--json", *args], tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    return {frozenset((s["a"]["primary_key"], s["b"]["primary_key"])): s
            for s in out["suggestions"]}


def lead_id(tmp_path: Path, identity: str) -> str:
    result = run(["lead", "show", identity, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["lead_id"])


JO = frozenset(("email:jo.miller@initech.example", "phone:+4915112345678"))
ANNA = frozenset(("email:anna@acme.example", "email:a.schmidt@acme.example"))
LENA = frozenset(("phone:+4915199887766", "external_id:crm:0151 99887766"))


def test_suggests_name_company_email_and_phone_pairs_but_not_namesakes(
        tmp_path: Path) -> None:
    seeded(tmp_path)
    found = suggested(tmp_path, "--min-score", "0.5")
    assert set(found) == {JO, ANNA, LENA}
    assert [r["code"] for r in found[JO]["reasons"]] == ["same_name_and_company"]
    assert [r["code"] for r in found[ANNA]["reasons"]] == ["email_fits_name"]
    assert [r["code"] for r in found[LENA]["reasons"]] == ["same_phone"]
    for pair in found.values():
        assert 0.5 <= pair["score"] <= 1
    # The older lead is A, the one a merge keeps.
    assert found[ANNA]["a"]["primary_key"] == "email:anna@acme.example"
    assert found[JO]["score"] > found[ANNA]["score"]
    # Namesakes at Umbrella and Hooli are not suggested at any score.
    everything = suggested(tmp_path, "--min-score", "0")
    assert all("email:peter.meyer@hooli.example" not in pair for pair in everything)
    limited = run(["dedupe", "suggest", "--json", "--limit", "1"], tmp_path)
    assert len(json.loads(limited.stdout)["suggestions"]) == 1
    text = run(["dedupe", "suggest"], tmp_path)
    assert text.returncode == 0 and "3 of 3 pair(s)" in text.stdout


def test_a_rejected_pair_is_not_suggested_again(tmp_path: Path) -> None:
    seeded(tmp_path)
    rejected = run(["dedupe", "reject", "jo.miller@initech.example", "+4915112345678",
                    "--reason", "two people, rep called both", "--actor", "maria"], tmp_path)
    assert rejected.returncode == 0, rejected.stderr
    assert set(suggested(tmp_path)) == {ANNA, LENA}
    again = run(["dedupe", "reject", "+4915112345678", "jo.miller@initech.example",
                 "--reason", "again", "--actor", "maria"], tmp_path)
    assert again.returncode == 1 and "already rejected" in again.stderr
    decisions = json.loads(run(["dedupe", "decisions", "--json"], tmp_path).stdout)
    jo = {lead_id(tmp_path, "jo.miller@initech.example"), lead_id(tmp_path, "+4915112345678")}
    assert [({d["lead_a"], d["lead_b"]}, d["rejected"]["actor"], d["rejected"]["reason"])
            for d in decisions] == [(jo, "maria", "two people, rep called both")]
    assert run(["verify"], tmp_path).returncode == 0


def test_a_confirmed_merge_is_recorded_as_a_persons_decision_and_unmerges(
        tmp_path: Path) -> None:
    seeded(tmp_path)
    anna, alias = lead_id(tmp_path, "anna@acme.example"), lead_id(tmp_path,
                                                                  "a.schmidt@acme.example")
    merged = run(["merge", "a.schmidt@acme.example", "anna@acme.example", "--reason",
                  "one person per CRM ticket 12", "--actor", "maria", "--json"], tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout) == {"survivor": anna, "merged": alias}
    assert lead_id(tmp_path, "a.schmidt@acme.example") == anna
    shown = json.loads(run(["lead", "show", anna, "--json"], tmp_path).stdout)
    assert set(shown["identities"]) >= {"email:anna@acme.example", "email:a.schmidt@acme.example"}
    history = json.loads(run(["history", anna, "--json"], tmp_path).stdout)
    causes = [row["cause"] for row in history]
    assert {"kind": "person", "command": "merge", "actor": "maria",
            "reason": "one person per CRM ticket 12"} in causes
    assert ANNA not in suggested(tmp_path)
    decisions = json.loads(run(["dedupe", "decisions", "--json"], tmp_path).stdout)
    assert [d["confirmed"] | {"at": None} for d in decisions] == [
        {"survivor": anna, "merged": alias, "actor": "maria",
         "reason": "one person per CRM ticket 12", "at": None}]

    unmerged = run(["unmerge", "a.schmidt@acme.example"], tmp_path)
    assert unmerged.returncode == 0, unmerged.stderr
    assert lead_id(tmp_path, "a.schmidt@acme.example") == alias
    assert lead_id(tmp_path, "anna@acme.example") == anna
    # Two leads again: a person may still decide otherwise, so they are suggested again.
    assert ANNA in suggested(tmp_path)
    assert run(["verify"], tmp_path).returncode == 0


def test_merge_refuses_one_lead_and_unknown_leads(tmp_path: Path) -> None:
    seeded(tmp_path)
    same = run(["merge", "anna@acme.example", lead_id(tmp_path, "anna@acme.example"),
                "--reason", "x", "--actor", "maria"], tmp_path)
    assert same.returncode == 1 and "one lead already" in same.stderr
    unknown = run(["merge", "anna@acme.example", "ghost@nowhere.example", "--reason", "x",
                   "--actor", "maria"], tmp_path)
    assert unknown.returncode == 1 and "no lead known" in unknown.stderr
    blank = run(["merge", "anna@acme.example", "a.schmidt@acme.example", "--reason", " ",
                 "--actor", "maria"], tmp_path)
    assert blank.returncode == 1 and "--reason" in blank.stderr


def test_a_forgotten_lead_is_never_suggested(tmp_path: Path) -> None:
    seeded(tmp_path)
    forgot = run(["forget", "jo.miller@initech.example", "--reason", "GDPR request 7"],
                 tmp_path)
    assert forgot.returncode == 0, forgot.stderr
    found = suggested(tmp_path, "--min-score", "0")
    assert all("phone:+4915112345678" not in pair for pair in found)
    assert {ANNA, LENA} <= set(found)
