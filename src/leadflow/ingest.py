"""File ingestion: JSONL lines -> validated records -> batches applied in one transaction each.

Every line ends up in exactly one place: applied, ignored as a duplicate ``event_id``, or
written to the rejects file with its line number and reason. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO

import structlog

from leadflow.application import LeadflowApp, Outcome
from leadflow.contract import InboundRecord, RecordRejected, parse_lines

log = structlog.get_logger(__name__)


@dataclass
class IngestReport:
    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    max_occurred_at: datetime | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "batches": self.batches,
            "max_occurred_at": self.max_occurred_at.isoformat() if self.max_occurred_at else None,
        }


class RejectsWriter:
    """Writes rejected lines as JSONL: line number, reason code, detail and the raw line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, line_no: int, reason: str, detail: str, raw: str) -> None:
        self.stream.write(json.dumps({"line": line_no, "reason": reason, "detail": detail,
                                      "raw": raw}, ensure_ascii=False) + "\n")


def ingest_lines(
    app: LeadflowApp,
    lines: Iterable[tuple[int, str]],
    *,
    batch_size: int,
    now: datetime | None,
    max_future_skew: timedelta,
    rejects: RejectsWriter,
    on_batch: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Apply numbered lines in batches; ``on_batch(lines_done, bytes_done)`` reports progress."""
    report = IngestReport()
    pending: list[tuple[int, str, InboundRecord]] = []
    consumed_bytes = 0

    def flush() -> None:
        if not pending:
            return
        result = app.apply_batch([record for _, _, record in pending])
        report.batches += 1
        for (line_no, raw, _), outcome in zip(pending, result.results, strict=True):
            if outcome.outcome is Outcome.APPLIED:
                report.applied += 1
            elif outcome.outcome is Outcome.DUPLICATE:
                report.duplicates += 1
            else:
                reason = outcome.reason or "rejected"
                _reject(report, rejects, line_no, reason, outcome.detail or "", raw)
        pending.clear()
        if on_batch:
            on_batch(report.lines, consumed_bytes)

    def counted() -> Iterator[tuple[int, str]]:
        nonlocal consumed_bytes
        for line_no, raw in lines:
            consumed_bytes += len(raw) + 1
            yield line_no, raw

    for line_no, text, record in parse_lines(counted(), now=now,
                                             max_future_skew=max_future_skew):
        report.lines += 1
        if isinstance(record, RecordRejected):
            _reject(report, rejects, line_no, record.reason, record.detail, text)
            continue
        if report.max_occurred_at is None or record.occurred_at > report.max_occurred_at:
            report.max_occurred_at = record.occurred_at
        pending.append((line_no, text, record))
        if len(pending) >= batch_size:
            flush()
    flush()
    return report


def _reject(report: IngestReport, rejects: RejectsWriter, line_no: int, reason: str,
            detail: str, raw: str) -> None:
    report.rejected += 1
    report.reasons[reason] += 1
    rejects.write(line_no, reason, detail, raw)
    log.warning("record rejected", line=line_no, reason=reason, detail=detail[:300])
