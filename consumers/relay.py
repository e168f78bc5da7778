"""Event store -> ``leadflow.lifecycle``: an outbox relay that publishes each event once.

The relay follows the application's notification log (only the topics CRMs care about),
publishes to a partition it computes itself from the lead id, and after each flushed page
records its position as a tracking record. A crash between the flush and the tracking
write would normally re-send the page; to avoid that, every message carries its
notification id in a header, and on start the relay reads the last message of each output
partition: a notification at or below that partition's last published id is skipped.
Within one partition the idempotent producer preserves order, so that check is exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from leadflow.consumers.settings import KafkaSettings
from leadflow.contract.lifecycle import RELAYED_EVENT_CLASSES, to_lifecycle
from leadflow.engine.app import LeadflowApp
from leadflow.metrics import Health, RelayMetrics
from leadflow.store.fold import envelope_topics

log = structlog.get_logger(__name__)

NOTIFICATION_HEADER = "leadflow-notification-id"
#: Which event of the stored row (an envelope holds several) the message is.
SEQ_HEADER = "leadflow-event-seq"


@dataclass
class RelayStats:
    published: int = 0
    skipped_already_published: int = 0
    not_relayed: int = 0
    position: int | None = None


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default (murmur2) partitioner, so keys land where any client would put them."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class LifecycleRelay:
    def __init__(self, app: LeadflowApp, settings: KafkaSettings, producer: KafkaProducer,
                 consumer_factory: Callable[[], KafkaConsumer], page_size: int = 500,
                 metrics: RelayMetrics | None = None, health: Health | None = None) -> None:
        self.app = app
        self.settings = settings
        self.producer = producer
        self.consumer_factory = consumer_factory
        self.page_size = page_size
        self.stats = RelayStats()
        self.metrics = metrics if metrics is not None else RelayMetrics()
        self.health = health if health is not None else Health()
        self._stop = threading.Event()
        self.tracking_name = f"relay:{settings.lifecycle_topic}"
        topics = [get_topic(cls) for cls in RELAYED_EVENT_CLASSES]
        # Relayed events also travel inside envelopes (one stored row per record: fold.py).
        envelopes = {t for topic in topics for t in envelope_topics(topic.rsplit(".", 1)[0])}
        self.topics = topics + sorted(envelopes)

    def stop(self, *_: object) -> None:
        self._stop.set()

    def last_published(self) -> dict[int, tuple[int, int]]:
        """Newest (notification id, event within it) already in each output partition (from
        the log tail)."""
        consumer = self.consumer_factory()
        try:
            partitions = consumer.partitions_for_topic(self.settings.lifecycle_topic) or set()
            tps = [TopicPartition(self.settings.lifecycle_topic, p) for p in sorted(partitions)]
            if not tps:
                return {}
            consumer.assign(tps)
            ends = consumer.end_offsets(tps)
            found: dict[int, tuple[int, int]] = {}
            for tp in tps:
                if ends[tp] == 0:
                    continue
                consumer.seek(tp, ends[tp] - 1)
                for _ in range(20):
                    batch = consumer.poll(timeout_ms=500).get(tp, [])
                    if batch:
                        headers = dict(batch[-1].headers or [])
                        found[tp.partition] = (int(headers[NOTIFICATION_HEADER]),
                                               int(headers.get(SEQ_HEADER, b"0")))
                        break
                else:
                    raise RuntimeError(f"could not read the last message of {tp}")
            return found
        finally:
            consumer.close(autocommit=False)

    def partitions(self) -> int:
        parts = self.producer.partitions_for(self.settings.lifecycle_topic)
        return len(parts)

    def run(self, until_idle: bool = False, idle_sleep: float = 0.5) -> RelayStats:
        recorder = self.app.process_recorder
        position = recorder.max_tracking_id(self.tracking_name) or 0
        published = self.last_published()
        expand = self.app.codec.expander.expand
        n_partitions = self.partitions()
        log.info("relay starting", position=position, last_published=published,
                 partitions=n_partitions)
        try:
            while not self._stop.is_set():
                self.health.beat()
                page = recorder.select_notifications(position + 1, self.page_size,
                                                     topics=self.topics)
                if not page:
                    self.metrics.progress(position, position, caught_up=True)
                    if until_idle:
                        break
                    self._stop.wait(idle_sleep)
                    continue
                futures = []
                for notification in page:
                    for seq, event in enumerate(expand(notification)):
                        message = to_lifecycle(event)
                        if message is None:
                            self.stats.not_relayed += 1
                            continue
                        key = str(message.lead_id).encode()
                        partition = partition_for(key, n_partitions)
                        if (notification.id, seq) <= published.get(partition, (0, 0)):
                            self.stats.skipped_already_published += 1
                            self.metrics.skipped.inc()
                            continue
                        futures.append(self.producer.send(
                            self.settings.lifecycle_topic, key=key, partition=partition,
                            value=message.model_dump_json().encode(),
                            headers=[(NOTIFICATION_HEADER, str(notification.id).encode()),
                                     (SEQ_HEADER, str(seq).encode()),
                                     ("leadflow-event-id", message.event_id.encode())],
                        ))
                self.producer.flush(timeout=60)
                for future in futures:
                    future.get(timeout=60)
                self.stats.published += len(futures)
                position = page[-1].id
                recorder.insert_tracking(Tracking(self.tracking_name, position))
                self.stats.position = position
                self.metrics.published.inc(len(futures))
                self.metrics.done.inc(len(page))
                self.metrics.progress(position, int(recorder.max_notification_id() or 0),
                                      caught_up=False)
                log.info("relayed page", position=position, published=len(futures))
        finally:
            self.producer.flush(timeout=30)
        return self.stats
