"""JSONL -> Kafka: validate each line, key it by identity, produce it unchanged.

The message value is the line exactly as given, so a record produced by any other client
(kcat, a tracking system) with the same JSON is indistinguishable from ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kafka import KafkaProducer

from leadflow.contract import (
    DEFAULT_MAX_RECORD_BYTES,
    InboundRecord,
    RecordRejected,
    parse_lines,
)
from leadflow.domain.rules import default_rules


def identity_of(record: InboundRecord) -> str:
    """The record's main identity key: normalised email, else phone, else external id, else
    anonymous id."""
    ref = record.lead
    if ref.email:
        return f"email:{ref.email}"
    if ref.phone:
        return f"phone:{ref.phone}"
    if ref.external_id:
        return f"external_id:{ref.external_id}"
    return f"anonymous_id:{ref.anonymous_id}"


def partition_key(record: InboundRecord, free_mail: frozenset[str] | None = None) -> str:
    """The Kafka key: the account (``domain:<company email domain>``) when the email is a
    company's, so one partition -- one writer -- owns a company's people and its surge
    state; otherwise the record's main identity (free-mail addresses, phone-only and
    anonymous records). ``free_mail`` defaults to the built-in rules' list.
    """
    email = record.lead.email
    if email:
        domain = email.rsplit("@", 1)[-1]
        if domain not in (default_rules().free_mail if free_mail is None else free_mail):
            return f"domain:{domain}"
    return identity_of(record)


@dataclass
class PublishReport:
    lines: int = 0
    sent: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def publish_lines(
    producer: KafkaProducer,
    topic: str,
    lines: Iterable[tuple[int, bytes]],
    on_reject: Callable[[int, RecordRejected, bytes], None],
    on_progress: Callable[[int], None] | None = None,
    *,
    now: datetime | None = None,
    max_future_skew: timedelta = timedelta(minutes=5),
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    free_mail: frozenset[str] | None = None,
) -> PublishReport:
    """Validate exactly as the consumer will (``now`` bounds future timestamps), then send.

    A line the consumer would refuse is never sent: it goes to ``on_reject`` with its reason.
    """
    report = PublishReport()
    futures = []
    for line_no, raw, record in parse_lines(lines, now=now, max_future_skew=max_future_skew,
                                            max_bytes=max_bytes):
        report.lines += 1
        if isinstance(record, RecordRejected):
            report.rejected += 1
            report.reasons[record.reason] = report.reasons.get(record.reason, 0) + 1
            on_reject(line_no, record, raw)
            continue
        # The line's bytes as given (the consumer strips a BOM as the parser did here).
        futures.append(producer.send(topic, key=partition_key(record, free_mail).encode(),
                                     value=raw))
        if len(futures) >= 10_000:
            _settle(producer, futures)
            report.sent += len(futures)
            futures.clear()
            if on_progress:
                on_progress(report.lines)
    _settle(producer, futures)
    report.sent += len(futures)
    return report


def _settle(producer: KafkaProducer, futures: list[object]) -> None:
    producer.flush(timeout=120)
    for future in futures:
        future.get(timeout=120)  # type: ignore[attr-defined]
