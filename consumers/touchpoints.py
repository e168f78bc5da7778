"""Kafka -> engine: one transaction per poll per partition, with the offset tracked inside it.

The database is the source of truth for progress: the partition's offset is written as an
eventsourcing tracking record in the same transaction as the events the batch produced, and
on (re)assignment the consumer seeks to that offset + 1. A redelivered batch therefore
changes nothing, and a crash at any moment loses nothing (exactly-once *effect*).

Records that cannot be applied are dead-lettered (and the DLQ producer flushed) *before*
the batch commits, so a dead letter can be duplicated by a crash but never lost. Kafka's
own committed offsets are written afterwards only so lag monitoring works.

This module translates; it holds no business rules.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import FrameType
from typing import Any

import psycopg
import structlog
from eventsourcing.persistence import IntegrityError, PersistenceError, Tracking
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from leadflow.consumers.relay import partition_for
from leadflow.consumers.settings import KafkaSettings
from leadflow.contract import (
    DEFAULT_MAX_RECORD_BYTES,
    InboundRecord,
    RecordRejected,
    parse_record,
)
from leadflow.contract.segment import parse_raw as parse_segment
from leadflow.engine.app import LeadflowApp
from leadflow.engine.results import BatchResult
from leadflow.metrics import ConsumerMetrics, Health
from leadflow.runtime import collector_paused

log = structlog.get_logger(__name__)

# Failures worth retrying: the database or the broker is (briefly) unavailable.
RETRYABLE: tuple[type[BaseException], ...] = (PersistenceError, psycopg.Error, KafkaError,
                                              OSError)


@lru_cache(maxsize=65536)
def _partition_of(key: str, partitions: int) -> int:
    """``partition_for`` of a lead's Kafka key, remembered: the absorption queue's rows are
    asked about every batch (and every page when idle), many with the same key, and
    kafka-python's murmur2 is Python code (~6 µs a key: 12 ms a page of 2,000 rows)."""
    return partition_for(key.encode(), partitions)


class ConsumerStoppedError(RuntimeError):
    """The consumer gave up after bounded retries; restart it to resume from the database."""


def tracking_name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@dataclass
class ConsumeStats:
    batches: int = 0
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    skipped_batches: int = 0
    retries: int = 0
    splits: int = 0  # batches applied in halves after a write conflict
    absorptions: int = 0  # pending absorptions settled while idle
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    record: Any  # kafka ConsumerRecord
    reason: str
    error_class: str
    detail: str
    field: str | None = None


# A dead letter must fit the DLQ topic and producer defaults (1 MiB per message). A bigger
# record (the source topic allowed it) goes with its first bytes, its size and digest; the
# whole of it stays at the original offset the headers name.
DLQ_VALUE_LIMIT = 900 << 10


def _dead_letter_value(value: bytes | None) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    if value is None or len(value) <= DLQ_VALUE_LIMIT:
        return value, []
    return value[:DLQ_VALUE_LIMIT], [
        ("leadflow-value-truncated", b"true"),
        ("leadflow-value-bytes", str(len(value)).encode()),
        ("leadflow-value-sha256", hashlib.sha256(value).hexdigest().encode())]


def _header(text: str) -> bytes:
    # Details may quote hostile input (lone surrogates): never fail to encode them.
    return text.encode("utf-8", "backslashreplace")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: TouchpointConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))
        for tp in revoked:
            self.owner.forget_partition(tp)
        # Another consumer may now write these leads: cached aggregates could go stale.
        self.owner.app.forget_cached_aggregates()

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            self.owner.seek_to_tracked(tp)
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))


class TouchpointConsumer:
    """Consumes the touchpoints topic into the engine until stopped (or idle)."""

    def __init__(
        self,
        app: LeadflowApp,
        settings: KafkaSettings,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        *,
        max_future_skew: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        metrics: ConsumerMetrics | None = None,
        health: Health | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.max_future_skew = max_future_skew
        self.max_record_bytes = max_record_bytes
        self.clock = clock
        self.sleep = sleep
        self.stats = ConsumeStats()
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.health = health if health is not None else Health()
        # Last tracked offset per partition (None: nothing tracked yet), for the lag gauges.
        self._tracked: dict[TopicPartition, int | None] = {}
        # Read by the readiness probe from the HTTP thread: the Kafka client is not
        # thread-safe, this int is.
        self.assigned_partitions = 0
        self._stop = threading.Event()

    # ------------------------------------------------------------------ control

    def stop(self, *_: object) -> None:
        """Ask the loop to finish the current batch and exit (safe from a signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", signal=signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def subscribe(self) -> None:
        segment = self.settings.segment_topic
        topics = [self.settings.topic, *([segment] if segment else [])]
        # The topics' partitions are known before the group is joined. Otherwise the first
        # assignment is computed from empty metadata and gives nobody anything; the group
        # rebalances once the metadata arrives, and a member learns of that only at its next
        # heartbeat (2.5 s with the default session timeout): two consumers started
        # together began consuming 2.6 s after they joined, one consumer 0.6 s.
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        for topic in topics:
            self.consumer.partitions_for_topic(topic)

    def has_partitions(self) -> bool:
        """Readiness: partitions are assigned (safe to call from another thread)."""
        return self.assigned_partitions > 0

    def forget_partition(self, tp: TopicPartition) -> None:
        self._tracked.pop(tp, None)
        self.metrics.forget_partition(tp.topic, tp.partition)

    def seek_to_tracked(self, tp: TopicPartition) -> None:
        position = self.app.process_recorder.max_tracking_id(
            tracking_name(tp.topic, tp.partition))
        self._tracked[tp] = position
        if position is None:
            self.consumer.seek_to_beginning(tp)
            log.info("no tracked offset; from the beginning", topic=tp.topic,
                     partition=tp.partition)
        else:
            self.consumer.seek(tp, position + 1)
            log.info("resuming after tracked offset", topic=tp.topic, partition=tp.partition,
                     offset=position)

    # ------------------------------------------------------------------ loop

    def run(self, until_idle: bool = False, poll_timeout_ms: int = 500) -> ConsumeStats:
        """Poll and apply until stopped; with ``until_idle``, return once caught up."""
        self.subscribe()
        unassigned_since = time.monotonic()
        try:
            while not self._stop.is_set():
                polled = self.consumer.poll(timeout_ms=poll_timeout_ms,
                                            max_records=self.settings.max_poll_records)
                self.health.beat()
                assignment = self.consumer.assignment() or set()
                self.assigned_partitions = len(assignment)
                self.metrics.assigned.set(len(assignment))
                if assignment:
                    unassigned_since = time.monotonic()
                elif time.monotonic() - unassigned_since > self.settings.rejoin_timeout_seconds:
                    log.error("no partitions assigned; stopping",
                              seconds=self.settings.rejoin_timeout_seconds)
                    raise ConsumerStoppedError(
                        f"no partitions assigned for {self.settings.rejoin_timeout_seconds:g}s "
                        "(broker or group coordinator unreachable); restart to resume from "
                        "the tracked offsets")
                # A poll's batches run with the cyclic collector paused (runtime.py): it runs
                # between polls, once what the batches read and wrote is freed.
                with collector_paused():
                    for tp, records in polled.items():
                        self.process(tp, records)
                        self.health.beat()
                        if self._stop.is_set():
                            break
                self._report_lag(assignment)
                # Idle: let leads take up what cookie-only records queued for them (a batch
                # only settles what its leads or its age call for); caught up means none left.
                settled = self._settle_absorptions() if not polled else 0
                if until_idle and not polled and not settled and self._caught_up():
                    log.info("caught up; exiting", **self.stats.__dict__)
                    break
        except KafkaError as exc:
            # Batches retry their own Kafka errors (the DLQ); this is the broker itself.
            log.error("kafka failed; stopping", error_class=type(exc).__name__, error=str(exc))
            raise ConsumerStoppedError(
                f"Kafka failed ({type(exc).__name__}: {exc}); restart to resume from the "
                "tracked offsets") from exc
        finally:
            self._shutdown()
        return self.stats

    def _shutdown(self) -> None:
        # Dead letters are flushed before every commit, so nothing is pending here; a broker
        # that is gone must not hide the error that stopped the loop.
        try:
            self.producer.flush(timeout=10)
        except KafkaError as exc:
            log.error("dead-letter producer flush failed at shutdown", error=str(exc))
        try:
            self.consumer.close(autocommit=False)
        except KafkaError as exc:
            log.error("consumer close failed at shutdown", error=str(exc))

    def _report_lag(self, assignment: set[TopicPartition]) -> None:
        # The highwater mark comes with every fetch response: no request to the broker here.
        for tp in assignment:
            self.metrics.partition_lag(tp.topic, tp.partition, self._tracked.get(tp),
                                       self.consumer.highwater(tp))

    def _caught_up(self) -> bool:
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        ends = self.consumer.end_offsets(list(assignment))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assignment)

    def process(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        """Apply one partition's polled records as one batch, tracked at the last offset."""
        if not records:
            return
        started = time.perf_counter()
        first, last = records[0].offset, records[-1].offset
        bound = log.bind(topic=tp.topic, partition=tp.partition, first_offset=first,
                         last_offset=last)
        good: list[InboundRecord] = []
        good_raw: list[Any] = []
        dead: list[DeadLetter] = []
        now = self.clock()
        for record in records:
            try:
                parsed = self._parse(record, now)
            except RecordRejected as exc:
                dead.append(DeadLetter(record, exc.reason, type(exc).__name__, exc.detail,
                                       exc.field))
                continue
            good.append(parsed)
            good_raw.append(record)
        tracking = Tracking(tracking_name(tp.topic, tp.partition), last)

        def dead_letter(result: BatchResult) -> None:
            letters = list(dead)
            for rejected in result.rejected:
                letters.append(DeadLetter(good_raw[rejected.index], rejected.reason or "rejected",
                                          rejected.error_class or "LeadflowError",
                                          rejected.detail or ""))
            self._publish_dead_letters(letters)

        for attempt in range(self.settings.max_retries + 1):
            try:
                # The process owns every partition assigned to it, not only this batch's:
                # its batches apply one after another, so they never race each other. A
                # sole consumer (all partitions) therefore never diverts a cookie visit.
                result = self.app.apply_batch(
                    good, tracking=tracking, before_commit=dead_letter,
                    owns=self._owns(self.consumer.assignment() or {tp}))
            except IntegrityError as exc:
                tracked = self.app.process_recorder.max_tracking_id(tracking.application_name)
                if tracked is not None and tracked >= last:
                    # Already applied (a redelivery after a rebalance): nothing to do.
                    bound.warning("batch already applied; skipping", tracked=tracked)
                    self.stats.skipped_batches += 1
                    self._tracked[tp] = tracked
                    self.consumer.seek(tp, tracked + 1)
                    return
                if len(records) > 1:
                    # Another writer changed what this batch read (an identity both registered,
                    # a lead both appended to). Redoing all of it risks meeting that writer's
                    # next commit again; halves commit sooner, each tracked at its own last
                    # offset (still exactly once: the tracking position only moves forward).
                    bound.warning("write conflict; applying the batch in halves",
                                  records=len(records), error=str(exc))
                    self.stats.retries += 1
                    self.stats.splits += 1
                    self.metrics.conflicts.inc()
                    self.metrics.retries.labels("write_conflict").inc()
                    middle = len(records) // 2
                    self.process(tp, records[:middle])
                    self.process(tp, records[middle:])
                    return
                bound.warning("write conflict; retrying with fresh aggregates",
                              attempt=attempt + 1, error=str(exc))
                self.metrics.conflicts.inc()
                self.metrics.retries.labels("write_conflict").inc()
                self._backoff(attempt)
            except RETRYABLE as exc:
                bound.warning("batch failed; retrying", attempt=attempt + 1,
                              error_class=type(exc).__name__, error=str(exc))
                self.metrics.retries.labels("infrastructure").inc()
                self._backoff(attempt)
            else:
                self._count(result, dead, len(records))
                self._tracked[tp] = last
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
                self._commit_kafka_offset(tp, last)
                bound.debug("batch committed", applied=result.applied,
                            duplicates=result.duplicates,
                            dead_lettered=len(dead) + len(result.rejected))
                return
        bound.error("giving up after retries; stopping", retries=self.settings.max_retries)
        raise ConsumerStoppedError(
            f"batch {tp.topic}:{tp.partition} offsets {first}-{last} failed "
            f"{self.settings.max_retries + 1} times; restart to resume from the tracked offset"
        )

    def _owns(self, partitions: Collection[TopicPartition]) -> Callable[[str], bool] | None:
        """Whether a Kafka key (a lead's owner, see ``LeadflowApp.settle_absorptions``) is
        one of ``partitions``': the producers' default partitioner (murmur2, as ``publish``
        sends). None (every key) while the topic's partitions are not known yet."""
        topic = self.settings.topic
        known = self.consumer.partitions_for_topic(topic)
        if not known:
            return None
        ordered = sorted(known)
        mine = {tp.partition for tp in partitions if tp.topic == topic}
        if mine >= known:
            return None  # every partition: every lead is this process's

        def owns(key: str) -> bool:
            return ordered[_partition_of(key, len(ordered))] in mine

        return owns

    def _settle_absorptions(self) -> int:
        """Pending absorptions settled now (0: none left); a failure is logged, counted and
        left for the next idle poll."""
        try:
            settled = self.app.settle_absorptions(self._owns(self.consumer.assignment() or ()))
        except IntegrityError as exc:
            log.warning("write conflict while settling absorptions; retried when idle",
                        error=str(exc))
            self.metrics.conflicts.inc()
            self.metrics.retries.labels("write_conflict").inc()
            return 1
        except RETRYABLE as exc:
            log.warning("settling absorptions failed; retried when idle",
                        error_class=type(exc).__name__, error=str(exc))
            self.metrics.retries.labels("infrastructure").inc()
            self._backoff(0)
            return 1
        if settled:
            self.stats.absorptions += settled
            log.debug("absorptions settled", absorptions=settled)
        return settled

    def _parse(self, record: Any, now: datetime) -> InboundRecord:
        """A contract-v1 record from either topic, or :class:`RecordRejected` (a Segment
        message no rule maps too: ``SegmentUnmapped``, dead-lettered with its reason)."""
        if record.topic != self.settings.segment_topic:
            return parse_record(record.value, now=now, max_future_skew=self.max_future_skew,
                                max_bytes=self.max_record_bytes)
        # The broker's timestamp stands in for Segment's receivedAt: a message without a
        # timestamp gets the same occurred_at on every redelivery.
        received = datetime.fromtimestamp(record.timestamp / 1000, UTC) \
            if isinstance(record.timestamp, int) and record.timestamp >= 0 else None
        return parse_segment(record.value, self.app.rules.segment, received_at=received,
                             now=now, max_future_skew=self.max_future_skew,
                             max_bytes=self.max_record_bytes).record

    def _backoff(self, attempt: int) -> None:
        self.stats.retries += 1
        self.sleep(min(10.0, self.settings.retry_backoff_seconds * 2 ** attempt))

    def _count(self, result: BatchResult, dead: list[DeadLetter], n: int) -> None:
        self.stats.batches += 1
        self.stats.records += n
        self.stats.applied += result.applied
        self.stats.duplicates += result.duplicates
        self.stats.dead_lettered += len(dead) + len(result.rejected)
        for reason in [d.reason for d in dead] + [r.reason or "rejected" for r in result.rejected]:
            self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
            self.metrics.rejected.labels(reason).inc()
        self.metrics.records.labels("applied").inc(result.applied)
        self.metrics.records.labels("duplicate").inc(result.duplicates)
        self.metrics.records.labels("rejected").inc(len(dead) + len(result.rejected))

    def _publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        futures = []
        for letter in letters:
            record = letter.record
            headers = [
                ("leadflow-reason", _header(letter.reason)),
                ("leadflow-error-class", _header(letter.error_class)),
                ("leadflow-detail", _header(letter.detail[:2000])),
                ("leadflow-original-topic", _header(record.topic)),
                ("leadflow-original-partition", str(record.partition).encode()),
                ("leadflow-original-offset", str(record.offset).encode()),
            ]
            if letter.field:
                headers.append(("leadflow-field", _header(letter.field[:200])))
            value, truncation = _dead_letter_value(record.value)
            headers += truncation
            # The producer's own headers follow leadflow's; one that claims a leadflow- name
            # is kept as original-<name>, so no reader (dict(headers) keeps the last value)
            # can take a forged reason for leadflow's.
            headers += [(f"original-{k}" if k.startswith("leadflow-") else k, v)
                        for k, v in (record.headers or []) if isinstance(k, str)]
            key = record.key if record.key is None or len(record.key) <= 64 << 10 \
                else record.key[:64 << 10]
            futures.append(self.producer.send(self.settings.dlq_topic, key=key, value=value,
                                              headers=headers))
            log.warning("dead-lettered", topic=record.topic, partition=record.partition,
                        offset=record.offset, reason=letter.reason, field=letter.field,
                        error_class=letter.error_class, detail=letter.detail[:300])
        # Must be durable before the batch commits: otherwise a crash could lose it.
        self.producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)  # raises the send's KafkaError, if any
        for letter in letters:
            self.metrics.dead_letters.labels(letter.reason).inc()

    def _commit_kafka_offset(self, tp: TopicPartition, last: int) -> None:
        # Only for lag monitoring; the tracking record in the database is authoritative.
        try:
            self.consumer.commit_async({tp: OffsetAndMetadata(last + 1, "", -1)})
        except KafkaError as exc:
            log.info("kafka offset commit skipped", error=str(exc))
