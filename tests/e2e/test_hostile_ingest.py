"""`leadflow ingest` on a file of hostile lines: each refused with its reason, every good line
applied, and the read models still build and rebuild afterwards."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

from tests.e2e.test_cli import run
from tests.hostile_corpus import CASES, GOOD, good_filler


def test_every_hostile_line_is_rejected_with_its_reason_and_every_good_line_applies(
        tmp_path: Path) -> None:
    filler = good_filler(1200)
    lines: list[tuple[bytes, str]] = [(g, "applied") for g in GOOD]
    body: list[tuple[bytes, str]] = [(f, "applied") for f in filler]
    rng = random.Random(11)
    for case in CASES:  # hostile lines land in many batches, between good ones
        body.insert(rng.randrange(len(body) + 1), (case.raw, case.expect))
    lines += body
    source = tmp_path / "hostile.jsonl"
    # The first line starts with a BOM, the way Windows tools write UTF-8 files.
    source.write_bytes(b"\xef\xbb\xbf" + b"\n".join(raw for raw, _ in lines) + b"\r\n")

    result = run(["ingest", str(source), "--json", "--batch-size", "50"], tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    expected_rejects = {n: expect for n, (_, expect) in enumerate(lines, start=1)
                        if expect not in ("applied", "duplicate")}
    rejects = [json.loads(x) for x in
               (tmp_path / "hostile.jsonl.rejects.jsonl").read_text().splitlines()]
    assert {r["line"]: r["reason"] for r in rejects} == expected_rejects
    assert all(r["detail"] for r in rejects)
    undecodable = [r for r in rejects if r["reason"] == "malformed_encoding"]
    assert undecodable and all("raw_base64" in r or "raw" in r for r in undecodable)
    applied = sum(expect == "applied" for _, expect in lines)
    assert summary["applied"] == applied
    assert summary["duplicates"] == sum(expect == "duplicate" for _, expect in lines)
    assert summary["rejected"] == len(expected_rejects)

    # The read models take whatever got in, and a rebuild gives the same tables.
    assert run(["project", "--until-idle"], tmp_path).returncode == 0
    before = _tables(tmp_path / "lf.db")
    rebuilt = run(["rebuild"], tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert _tables(tmp_path / "lf.db") == before
    assert before["lead_state"] > 0


def test_a_bad_byte_costs_only_its_own_line(tmp_path: Path) -> None:
    filler = good_filler(1600)
    filler[1500] = filler[1500].replace(b"filler", b"f\xe9ller", 1)  # line 1501
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(filler) + b"\n")
    result = run(["ingest", str(source), "--json"], tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert (summary["applied"], summary["rejected"]) == (1599, 1)
    reject = json.loads((tmp_path / "in.jsonl.rejects.jsonl").read_text())
    assert (reject["line"], reject["reason"]) == (1501, "malformed_encoding")
    assert "0xe9" in reject["detail"]


def _tables(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("lead_state", "stage_transitions", "score_ledger", "funnel_daily")}
