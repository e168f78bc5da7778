"""Warnings held for a command's result, and per-record warnings counted under a bar."""

from __future__ import annotations

import json

import pytest
import structlog

from leadflow.logs import configure_logging, held_warnings, per_record_summary


class Stderr:
    """What the JSON log wrote to stderr so far (pytest captures it)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.lines: list[dict[str, object]] = []

    def events(self) -> list[dict[str, object]]:
        self.lines += [json.loads(x) for x in self.capsys.readouterr().err.splitlines()]
        return self.lines


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Stderr:
    configure_logging("INFO", "json")
    return Stderr(capsys)


def events(stderr: Stderr) -> list[dict[str, object]]:
    return stderr.events()


def test_held_warnings_are_kept_for_the_caller_and_errors_still_print(
        stderr: Stderr) -> None:
    log = structlog.get_logger("t")
    with held_warnings() as notes:
        log.warning("audit key created", key_file="lf.db.audit-key")
        log.info("working")
        log.error("database gone")
    assert notes == [{"key_file": "lf.db.audit-key", "event": "audit key created"}]
    assert [e["event"] for e in events(stderr)] == ["working", "database gone"]
    log.warning("after")  # no longer held
    assert events(stderr)[-1]["event"] == "after"


def test_per_record_warnings_are_counted_and_summarised_unless_the_caller_reports_them(
        stderr: Stderr) -> None:
    log = structlog.get_logger("t")
    with per_record_summary() as held:
        for reason in ("malformed_json", "malformed_json", "unknown_type"):
            log.warning("record rejected", reason=reason)
    assert held == {("record rejected", "malformed_json"): 2,
                    ("record rejected", "unknown_type"): 1}
    (summary,) = events(stderr)
    assert summary["event"] == "record rejected (summary)" and summary["count"] == 3
    assert summary["by_reason"] == {"malformed_json": 2, "unknown_type": 1}

    with per_record_summary(log_summary=False) as held:
        log.warning("record rejected", reason="unknown_type")
    assert held == {("record rejected", "unknown_type"): 1}
    assert len(events(stderr)) == 1  # no second summary
