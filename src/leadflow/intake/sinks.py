"""Where the HTTP intake puts validated records: Kafka (production) or the store (embedded).

Both are called from worker threads and block until the records are safe: the broker
acknowledged them (``acks=all``, idempotent producer) or the engine committed them. Each
returns one :class:`SinkOutcome` per record, in order, or raises :class:`SinkUnavailable`
when the broker or the database failed (the HTTP answer is then 503 and the client retries
the whole request: re-sent records are duplicates by ``event_id``, never applied twice).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from leadflow.contract import InboundRecord

if TYPE_CHECKING:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    from leadflow.engine.app import LeadflowApp

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Submission:
    """A record that passed the contract, and the contract-v1 JSON bytes it was read from
    (what goes to Kafka, so the consumer reads exactly what was validated here)."""

    record: InboundRecord
    raw: bytes


@dataclass(frozen=True)
class SinkOutcome:
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    detail: str | None = None


class SinkUnavailable(Exception):
    """The broker or the database failed; nothing of the request is known to be safe."""


class Sink(Protocol):
    #: ``kafka`` or ``store``: named in logs and ``/readyz``.
    mode: str

    def submit(self, items: Sequence[Submission]) -> list[SinkOutcome]:
        """Write the records; blocks until they are safe (see the module docstring)."""

    def ready(self) -> str | None:
        """None when the sink can take records, else why not (blocks briefly)."""

    def close(self) -> None:
        """Release clients; pending records are flushed first."""


#: What a record costs in a Kafka record batch beside its key and value: the batch header
#: (61 bytes) and the record's own varint-framed fields, with room to spare.
RECORD_OVERHEAD = 128


def topic_message_limit(admin: KafkaAdminClient, topic: str) -> int | None:
    """The topic's ``max.message.bytes`` (the broker's default when the topic sets none), or
    None when the topic does not exist. Raises ``KafkaError`` when the cluster fails."""
    from kafka.admin import ConfigResource, ConfigResourceType

    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})],
        config_filter="all")
    entry = described.get("topic", {}).get(topic, {}).get("max.message.bytes")
    return int(entry["value"]) if entry else None


class KafkaSink:
    """Produces each record to the touchpoints topic, keyed as ``leadflow publish`` keys it.

    ``submit`` waits for every record's acknowledgement: a record is never answered
    ``accepted`` before every in-sync replica has it.

    A record larger than the topic's ``max.message.bytes`` is rejected before it is sent:
    the broker would refuse it, and kafka-python's idempotent producer then refuses every
    later record of that partition. Should the broker refuse one all the same (the topic's
    limit lowered since start), the producer is replaced.
    """

    mode = "kafka"

    def __init__(self, producer: Callable[[], KafkaProducer], topic: str, *,
                 max_message_bytes: int,
                 free_mail: frozenset[str] | None = None,
                 admin: Callable[[], KafkaAdminClient] | None = None,
                 ack_timeout: float = 30.0) -> None:
        self._producer_factory = producer
        self.producer = producer()
        self.topic = topic
        self.max_message_bytes = max_message_bytes
        self.free_mail = free_mail
        self.ack_timeout = ack_timeout
        self._admin_factory = admin
        self._admin: KafkaAdminClient | None = None
        self._admin_lock = threading.Lock()
        self._producer_lock = threading.Lock()

    def submit(self, items: Sequence[Submission]) -> list[SinkOutcome]:
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        from leadflow.consumers.publish import partition_key

        producer = self.producer
        outcomes: list[SinkOutcome | None] = [None] * len(items)
        futures: list[tuple[int, Any]] = []
        refused = False
        try:
            for index, item in enumerate(items):
                key = partition_key(item.record, self.free_mail).encode()
                size = len(key) + len(item.raw) + RECORD_OVERHEAD
                if size > self.max_message_bytes:
                    outcomes[index] = SinkOutcome(
                        "rejected", "record_too_large",
                        f"{size:,} bytes as a Kafka message; the topic {self.topic} takes at "
                        f"most {self.max_message_bytes:,} (max.message.bytes)")
                    continue
                futures.append((index, producer.send(self.topic, key=key, value=item.raw)))
            for index, future in futures:
                try:
                    future.get(timeout=self.ack_timeout)
                except MessageSizeTooLargeError as exc:
                    refused = True
                    outcomes[index] = SinkOutcome("rejected", "record_too_large",
                                                  f"the broker refuses a message this large "
                                                  f"({exc})")
                else:
                    outcomes[index] = SinkOutcome("accepted")
        except KafkaError as exc:
            log.error("kafka produce failed", topic=self.topic,
                      error_class=type(exc).__name__, error=str(exc))
            raise SinkUnavailable(f"Kafka did not acknowledge the records "
                                  f"({type(exc).__name__})") from exc
        finally:
            if refused:
                self._replace(producer)
        return [o if o is not None else SinkOutcome("accepted") for o in outcomes]

    def _replace(self, broken: KafkaProducer) -> None:
        with self._producer_lock:
            if self.producer is not broken:
                return  # another request replaced it already
            log.warning("kafka refused a message as too large; replacing the producer",
                        topic=self.topic)
            self.producer = self._producer_factory()
        broken.close(timeout=self.ack_timeout)

    def ready(self) -> str | None:
        from kafka.errors import KafkaError

        # A metadata round trip: the producer's own cached metadata would say "connected"
        # long after the broker went away.
        try:
            with self._admin_lock:
                if self._admin is None and self._admin_factory is not None:
                    self._admin = self._admin_factory()
                if self._admin is not None:
                    self._admin.describe_cluster()
            if not self.producer.partitions_for(self.topic):
                return f"topic {self.topic} has no partitions"
        except KafkaError as exc:
            return f"Kafka unreachable ({type(exc).__name__}: {exc})"
        return None

    def close(self) -> None:
        self.producer.flush(timeout=self.ack_timeout)
        self.producer.close(timeout=self.ack_timeout)
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()


class EngineSink:
    """Applies records to the local store through the engine, one batch per request.

    One writer: every call runs on the sink's single worker thread, in arrival order, so
    the application (its aggregate cache, its SQLite connection) is never used by two
    threads at once.
    """

    mode = "store"

    def __init__(self, app: LeadflowApp, *, ready_timeout: float = 5.0) -> None:
        self.app = app
        self.ready_timeout = ready_timeout
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadflow-writer")
        self._probe: Future[None] | None = None

    def submit(self, items: Sequence[Submission]) -> list[SinkOutcome]:
        return self._writer.submit(self._apply, items).result()

    def _apply(self, items: Sequence[Submission]) -> list[SinkOutcome]:
        from leadflow.engine.app import INFRASTRUCTURE_ERRORS, Outcome

        try:
            result = self.app.apply_batch([item.record for item in items])
        except INFRASTRUCTURE_ERRORS as exc:
            log.error("store write failed", error_class=type(exc).__name__, error=str(exc))
            raise SinkUnavailable(f"the store failed ({type(exc).__name__})") from exc
        outcomes = []
        for outcome in result.results:
            if outcome.outcome is Outcome.APPLIED:
                outcomes.append(SinkOutcome("accepted"))
            elif outcome.outcome is Outcome.DUPLICATE:
                outcomes.append(SinkOutcome("duplicate"))
            else:
                outcomes.append(SinkOutcome("rejected", outcome.reason or "rejected",
                                            outcome.detail))
        return outcomes

    def ready(self) -> str | None:
        from concurrent.futures import TimeoutError as FutureTimeout

        from leadflow.engine.app import INFRASTRUCTURE_ERRORS

        def probe() -> None:
            # One indexed read: the store answers (and its tables exist).
            self.app.process_recorder.max_tracking_id("leadflow-serve-readiness")

        # A probe still queued behind a long write is waited for again, not queued twice.
        if self._probe is None or self._probe.done():
            self._probe = self._writer.submit(probe)
        try:
            self._probe.result(timeout=self.ready_timeout)
        except FutureTimeout:
            return f"the store did not answer within {self.ready_timeout:g}s"
        except INFRASTRUCTURE_ERRORS as exc:
            return f"the store is unreachable ({type(exc).__name__}: {exc})"
        return None

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.app.close()
