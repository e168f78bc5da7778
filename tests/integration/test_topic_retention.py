"""`leadflow kafka create-topics` on a real broker: the input topics and the dead letters
keep records for a bounded time (they hold emails and phones that erasing a person in the
store cannot reach); the lifecycle topic keeps the broker's retention."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from tests.conftest import clean_env
from tests.integration.services import Services

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]


@pytest.fixture
def admin(services: Services) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    yield client
    client.close()


def topics(prefix: str) -> dict[str, str]:
    return {"LEADFLOW_KAFKA_TOPIC": f"{prefix}.touchpoints",
            "LEADFLOW_KAFKA_DLQ_TOPIC": f"{prefix}.touchpoints.dlq",
            "LEADFLOW_KAFKA_LIFECYCLE_TOPIC": f"{prefix}.lifecycle",
            "LEADFLOW_KAFKA_SEGMENT_TOPIC": f"{prefix}.segment"}


def create_topics(services: Services, prefix: str,
                  *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "LEADFLOW_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
           **topics(prefix)}
    return subprocess.run([*LEADFLOW, "kafka", "create-topics", "--partitions", "1", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def modified(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    """The topic's settings that differ from the broker's defaults."""
    answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    entries = answer["topic"][topic]
    return {key: data["value"] if isinstance(data, dict) else str(data)
            for key, data in entries.items()}


def test_input_topics_and_dead_letters_keep_records_a_week_by_default(
        services: Services, admin: KafkaAdminClient, topic_prefix: str) -> None:
    done = create_topics(services, topic_prefix)
    assert done.returncode == 0, done.stderr
    assert f"{topic_prefix}.touchpoints: created, records kept 168 h" in done.stdout
    week = str(168 * 3_600_000)
    for name in ("touchpoints", "touchpoints.dlq", "segment"):
        assert modified(admin, f"{topic_prefix}.{name}").get("retention.ms") == week, name
    assert "retention.ms" not in modified(admin, f"{topic_prefix}.lifecycle")


def test_existing_topics_get_the_retention_and_keep_their_other_settings(
        services: Services, admin: KafkaAdminClient, topic_prefix: str) -> None:
    touchpoints = f"{topic_prefix}.touchpoints"
    admin.create_topics([NewTopic(touchpoints, 1, 1,
                                  topic_configs={"max.message.bytes": "2000000"})])
    done = create_topics(services, topic_prefix, "--retention-hours", "24")
    assert done.returncode == 0, done.stderr
    assert f"{touchpoints}: exists, records kept 24 h" in done.stdout
    settings = modified(admin, touchpoints)
    assert settings.get("retention.ms") == str(24 * 3_600_000)
    assert settings.get("max.message.bytes") == "2000000"
    # 0 leaves the retention as it is.
    again = create_topics(services, topic_prefix, "--retention-hours", "0")
    assert again.returncode == 0, again.stderr
    assert f"{touchpoints}: exists\n" in again.stdout
    assert modified(admin, touchpoints).get("retention.ms") == str(24 * 3_600_000)
