"""Kafka settings from ``LEADFLOW_KAFKA_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from leadflow.config import ConfigError


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "localhost:9092"
    topic: str = "leadflow.touchpoints"
    dlq_topic: str = "leadflow.touchpoints.dlq"
    lifecycle_topic: str = "leadflow.lifecycle"
    group_id: str = "leadflow-engine"
    max_poll_records: int = 2000
    #: bytes fetched per partition and request (kafka-python's default). Larger fetches let a
    #: poll return more of a partition, so batches grow toward ``max_poll_records``: fewer,
    #: larger transactions, for more memory (README, Performance).
    max_partition_fetch_bytes: int = 1024 * 1024
    #: how many times a failing batch is retried (database down, write conflict) before the
    #: consumer stops loudly; it resumes from the tracked offsets on restart.
    max_retries: int = 5
    retry_backoff_seconds: float = 0.5
    #: static group membership (KIP-345): a restarted consumer with the same id takes its
    #: partitions back at once instead of waiting for the session to time out.
    instance_id: str | None = None
    session_timeout_ms: int = 10_000
    #: a consumer without partitions for this long (broker or group coordinator gone and not
    #: coming back to it) stops loudly so its supervisor restarts it from the tracked offsets.
    rejoin_timeout_seconds: float = 120.0
    #: a topic of Segment-spec messages, consumed beside ``topic`` and mapped by the rules'
    #: ``[segment]`` section (unset: none).
    segment_topic: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if environ is None else environ
        try:
            return cls(
                bootstrap=env.get("LEADFLOW_KAFKA_BOOTSTRAP", cls.bootstrap),
                topic=env.get("LEADFLOW_KAFKA_TOPIC", cls.topic),
                dlq_topic=env.get("LEADFLOW_KAFKA_DLQ_TOPIC", cls.dlq_topic),
                lifecycle_topic=env.get("LEADFLOW_KAFKA_LIFECYCLE_TOPIC", cls.lifecycle_topic),
                group_id=env.get("LEADFLOW_KAFKA_GROUP", cls.group_id),
                max_poll_records=int(env.get("LEADFLOW_KAFKA_MAX_POLL_RECORDS",
                                             cls.max_poll_records)),
                max_partition_fetch_bytes=int(env.get(
                    "LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES", cls.max_partition_fetch_bytes)),
                max_retries=int(env.get("LEADFLOW_KAFKA_MAX_RETRIES", cls.max_retries)),
                retry_backoff_seconds=float(env.get("LEADFLOW_KAFKA_RETRY_BACKOFF_SECONDS",
                                                    cls.retry_backoff_seconds)),
                instance_id=env.get("LEADFLOW_KAFKA_INSTANCE_ID") or None,
                rejoin_timeout_seconds=float(env.get("LEADFLOW_KAFKA_REJOIN_TIMEOUT_SECONDS",
                                                     cls.rejoin_timeout_seconds)),
                session_timeout_ms=int(env.get("LEADFLOW_KAFKA_SESSION_TIMEOUT_MS",
                                               cls.session_timeout_ms)),
                segment_topic=env.get("LEADFLOW_KAFKA_SEGMENT_TOPIC", "").strip() or None,
            )
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"LEADFLOW_KAFKA_* numeric setting is not a number: {exc}") from exc

    def __post_init__(self) -> None:
        if not 1024 <= self.max_partition_fetch_bytes <= 1 << 30:
            raise ConfigError(f"LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES="
                              f"{self.max_partition_fetch_bytes} is outside 1024 to 1073741824")

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]
