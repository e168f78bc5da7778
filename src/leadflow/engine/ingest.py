"""File ingestion: JSONL lines -> validated records -> batches applied in one transaction each.

Every line ends up in exactly one place: applied, ignored as a duplicate ``event_id``, or
written to the rejects file with its line number and reason. Nothing is dropped silently.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, BinaryIO

import structlog

from leadflow.contract import (
    DEFAULT_MAX_RECORD_BYTES,
    InboundRecord,
    RecordRejected,
    parse_lines,
)
from leadflow.contract.segment import SegmentRecord, SegmentUnmapped
from leadflow.contract.segment import parse_lines as parse_segment_lines
from leadflow.domain.rules import SegmentMapping
from leadflow.engine.app import LeadflowApp, Outcome
from leadflow.runtime import collector_paused

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
    #: Segment messages no ``[segment]`` rule maps, by event name (not errors: counted).
    unmapped: int = 0
    unmapped_events: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "unmapped": self.unmapped,
            "unmapped_events": dict(sorted(self.unmapped_events.items())),
            "batches": self.batches,
            "max_occurred_at": self.max_occurred_at.isoformat() if self.max_occurred_at else None,
        }


#: Of a line too large to be a record, this much is kept in the rejects file.
REJECT_RAW_LIMIT = 64 << 10


def numbered_lines(stream: BinaryIO,
                   max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of a byte stream, never holding more than ``max_bytes`` of one line.

    Lines are bytes, so one undecodable byte costs only its own line (it is rejected as
    ``malformed_encoding`` by the parser). A line longer than ``max_bytes`` is skipped to
    its end in chunks and yielded as its first ``max_bytes + 1`` bytes, which the parser
    rejects as ``record_too_large``.
    """
    number = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            rest = line
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(1 << 20)
        yield number, line


class RejectsWriter:
    """Writes rejected lines as JSONL: line number, reason code, field, detail, raw line.

    ``raw`` is the line as text when it is UTF-8; otherwise ``raw_base64`` holds its exact
    bytes. A line over ``REJECT_RAW_LIMIT`` is cut there (``raw_truncated``): the line
    number points at the whole of it in the input.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, line_no: int, reason: str, detail: str, raw: bytes | str,
              field: str | None = None) -> None:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        entry: dict[str, object] = {"line": line_no, "reason": reason, "field": field,
                                    "detail": detail}
        if len(data) > REJECT_RAW_LIMIT:
            data, entry["raw_truncated"] = data[:REJECT_RAW_LIMIT], True
        try:
            entry["raw"] = data.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(data).decode("ascii")
        # ensure_ascii: the file stays valid UTF-8 whatever the line held (lone surrogates).
        self.stream.write(json.dumps(entry) + "\n")


def ingest_lines(
    app: LeadflowApp,
    lines: Iterable[tuple[int, bytes]],
    *,
    batch_size: int,
    now: datetime | None,
    max_future_skew: timedelta,
    rejects: RejectsWriter,
    on_batch: Callable[[int, int], None] | None = None,
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    segment: SegmentMapping | None = None,
) -> IngestReport:
    """Apply numbered lines in batches; ``on_batch(lines_done, bytes_done)`` reports progress.

    Each line is applied, a duplicate, or rejected on its own: neither a bad line nor a
    record that fails to apply costs the other lines of its batch. With ``segment`` the
    lines are Segment-spec messages mapped by it; a message it does not map is counted in
    ``unmapped`` (by event name), not rejected.
    """
    report = IngestReport()
    pending: list[tuple[int, bytes, InboundRecord]] = []
    consumed_bytes = 0

    def flush() -> None:
        if not pending:
            return
        with collector_paused():
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

    def counted() -> Iterator[tuple[int, bytes]]:
        nonlocal consumed_bytes
        for line_no, raw in lines:
            consumed_bytes += len(raw)
            yield line_no, raw

    parsed: Iterator[tuple[int, bytes, InboundRecord | SegmentRecord | RecordRejected]] = (
        parse_lines(counted(), now=now, max_future_skew=max_future_skew, max_bytes=max_bytes)
        if segment is None else
        parse_segment_lines(counted(), segment, now=now, max_future_skew=max_future_skew,
                            max_bytes=max_bytes))
    for line_no, text, outcome in parsed:
        report.lines += 1
        if isinstance(outcome, SegmentUnmapped):
            report.unmapped += 1
            report.unmapped_events[outcome.event] += 1
            continue
        if isinstance(outcome, RecordRejected):
            _reject(report, rejects, line_no, outcome.reason, outcome.detail, text,
                    outcome.field)
            continue
        record = outcome.record if isinstance(outcome, SegmentRecord) else outcome
        if report.max_occurred_at is None or record.occurred_at > report.max_occurred_at:
            report.max_occurred_at = record.occurred_at
        pending.append((line_no, text, record))
        if len(pending) >= batch_size:
            flush()
    flush()
    return report


def _reject(report: IngestReport, rejects: RejectsWriter, line_no: int, reason: str,
            detail: str, raw: bytes, field: str | None = None) -> None:
    report.rejected += 1
    report.reasons[reason] += 1
    rejects.write(line_no, reason, detail, raw, field)
    log.warning("record rejected", line=line_no, reason=reason, field=field,
                detail=detail[:300])
