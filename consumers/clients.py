"""Kafka clients for each leadflow role, built from ``KafkaSettings`` in one place.

Each function connects when called (kafka-python bootstraps in the constructor), so callers
build clients inside the command that needs them, never at import time, and translate
``KafkaError`` into their own message.
"""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from leadflow.consumers.settings import KafkaSettings


def touchpoint_consumer(settings: KafkaSettings) -> KafkaConsumer:
    """The consumer group member that reads the touchpoints topic.

    Offsets are never auto-committed (the database's tracking records are the position);
    static membership (``instance_id``) and the session timeout come from the settings.

    A member hears that the group is rebalancing (another member joined or left) at its next
    heartbeat, and the new member waits for that: a tenth of the session timeout (1 s by
    default; it was a quarter, 2.5 s, and a consumer started a moment after another got its
    partitions 3.2 s after its start). Kafka asks for at most a third.
    """
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records, client_id="leadflow-consume",
        fetch_max_wait_ms=200, max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        group_instance_id=settings.instance_id,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.session_timeout_ms // 10))


def dead_letter_producer(settings: KafkaSettings) -> KafkaProducer:
    """The consumer's producer for the dead-letter topic (every replica acknowledges)."""
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                         linger_ms=5, client_id="leadflow-dlq")


def publish_producer(settings: KafkaSettings) -> KafkaProducer:
    """``leadflow publish``: larger batches, for throughput over a whole file."""
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                         linger_ms=20, batch_size=256 * 1024, client_id="leadflow-publish")


def intake_producer(settings: KafkaSettings, batch_bytes: int = 16384) -> KafkaProducer:
    """``leadflow serve``: idempotent, every replica acknowledges, small lingering (a request
    waits for its records' acknowledgements), and a bounded wait for metadata so a broker
    that is gone fails a request in seconds rather than a minute. ``batch_bytes`` is kept
    under the topic's message limit: the broker refuses a batch over it whole."""
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                         enable_idempotence=True, linger_ms=5, max_block_ms=10_000,
                         batch_size=batch_bytes, client_id="leadflow-serve")


def intake_probe(settings: KafkaSettings) -> KafkaAdminClient:
    """``leadflow serve``'s readiness probe: a metadata round trip to the cluster."""
    return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                            client_id="leadflow-serve-probe", request_timeout_ms=5000)


def relay_producer(settings: KafkaSettings) -> KafkaProducer:
    """The relay's producer for the lifecycle topic."""
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                         linger_ms=5, client_id="leadflow-relay")


def relay_tail_consumer(settings: KafkaSettings) -> KafkaConsumer:
    """A group-less consumer the relay uses to read the last message of each partition."""
    return KafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                         enable_auto_commit=False, client_id="leadflow-relay-tail")


def admin_client(settings: KafkaSettings) -> KafkaAdminClient:
    """For creating leadflow's topics."""
    return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                            client_id="leadflow-admin")
