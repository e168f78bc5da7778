"""`leadflow serve` in production mode against the real Kafka broker, the records then
consumed into PostgreSQL; and Segment messages on a Kafka topic of their own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from leadflow.contract import parse_record
from tests.intake_server import ServeProcess
from tests.integration.kafka_helpers import Pipeline
from tests.integration.services import Services
from tests.segment_spec import JOURNEY_AT, JOURNEY_EMAIL, JOURNEY_SCORE, journey

pytestmark = pytest.mark.integration

TOKEN = "wk_kafka_91d2"


@pytest.fixture
def pipe(services: Services, pg_url: str, topic_prefix: str) -> Iterator[Pipeline]:
    pipeline = Pipeline(services, pg_url, topic_prefix)
    result = pipeline.run("db", "init")
    assert result.returncode == 0, result.stderr
    # One partition: the journey's records are keyed by different identities (the cookie,
    # the user id, the company domain) and are compared with one order of application.
    pipeline.create_topics(partitions=1)
    yield pipeline
    pipeline.close()


def lead_json(pipe: Pipeline, identity: str) -> dict[str, object]:
    shown = pipe.run("lead", "show", identity, "--at", JOURNEY_AT, "--json")
    assert shown.returncode == 0, shown.stderr
    lead: dict[str, object] = json.loads(shown.stdout)
    return lead


def test_serve_answers_after_the_broker_acknowledged_and_consume_applies_the_records(
        pipe: Pipeline, tmp_path: Path) -> None:
    env = pipe.env(LEADFLOW_INTAKE_TOKENS=TOKEN)
    with ServeProcess(env, tmp_path / "serve.log") as server:
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["sink"] == "kafka"
        batch = httpx.post(f"{server.url}/v1/batch", json={"batch": journey()},
                           auth=(TOKEN, ""), timeout=60).json()
        assert (batch["sink"], batch["accepted"], batch["unmapped"]) == ("kafka", 6, 1)
        records = httpx.post(f"{server.url}/v1/records", headers={
            "Authorization": f"Bearer {TOKEN}"}, timeout=60, json=[
            {"event_id": "k1", "type": "content_downloaded",
             "occurred_at": "2026-03-02T09:00:00Z", "lead": {"email": "Lu@Globex.com"}},
            {"event_id": "k2", "type": "email_opened", "occurred_at": "2026-03-02T09:00:00Z",
             "lead": {"email": "lu@@globex"}}]).json()
        assert [r["status"] for r in records["results"]] == ["accepted", "rejected"]
        # Answered only once acknowledged: every accepted record is on the topic now.
        sent = pipe.read_all(pipe.topic)
        assert len(sent) == 7
        values = [parse_record(m.value) for m in sent]
        assert {v.event_id for v in values} == {"j-page", "j-open", "j-click", "j-signup",
                                                "j-trial", "j-identify", "k1"}
        # Keyed as `leadflow publish` keys: the company's domain, else the main identity.
        assert {m.key for m in sent} == {b"anonymous_id:cookie-77", b"domain:initech.com",
                                         b"external_id:019mr8mf4r", b"domain:globex.com"}
        assert server.stop() == 0
    consumed = pipe.run("consume", "--until-idle")
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    lead = lead_json(pipe, JOURNEY_EMAIL)
    assert lead["score"] == pytest.approx(JOURNEY_SCORE)
    assert (lead["stage"], lead["owner"]) == ("mql", "rep-b")
    assert lead_json(pipe, "lu@globex.com")["engagement"] == pytest.approx(10)
    assert pipe.read_all(pipe.dlq) == []


def test_segment_messages_on_their_own_topic_are_mapped_and_the_unmappable_dead_lettered(
        pipe: Pipeline, services: Services) -> None:
    segment_topic = f"{pipe.prefix}.segment"
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(segment_topic, 1, 1)])
    finally:
        admin.close()
    malformed = b'{"type": "track", "event": '
    values = [json.dumps(m).encode() for m in journey()] + [malformed]
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    for value in values:
        producer.send(segment_topic, key=b"019mr8mf4r", value=value)
    producer.flush()
    producer.close()
    consumed = pipe.run("consume", "--until-idle", LEADFLOW_KAFKA_SEGMENT_TOPIC=segment_topic)
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    assert lead_json(pipe, JOURNEY_EMAIL)["score"] == pytest.approx(JOURNEY_SCORE)
    letters = pipe.read_all(pipe.dlq)
    by_reason = {dict(m.headers)["leadflow-reason"].decode(): m for m in letters}
    assert set(by_reason) == {"unmapped_event", "malformed_json"}
    unmapped = dict(by_reason["unmapped_event"].headers)
    assert unmapped["leadflow-error-class"] == b"SegmentUnmapped"
    assert unmapped["leadflow-original-topic"].decode() == segment_topic
    assert b"Account Created" in unmapped["leadflow-detail"]
    assert by_reason["malformed_json"].value == malformed
    # A second run finds everything tracked: nothing applied twice, no new dead letter.
    again = pipe.run("consume", "--until-idle", LEADFLOW_KAFKA_SEGMENT_TOPIC=segment_topic)
    assert again.returncode == 0 and "0 applied" in again.stdout
    assert len(pipe.read_all(pipe.dlq)) == 2


def test_a_record_over_the_topics_message_limit_is_rejected_alone_and_later_ones_go(
        pipe: Pipeline, services: Services, tmp_path: Path) -> None:
    small_topic = f"{pipe.prefix}.small"
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    admin.create_topics([NewTopic(small_topic, 1, 1,
                                  topic_configs={"max.message.bytes": "1200"})])
    env = pipe.env(LEADFLOW_INTAKE_TOKENS=TOKEN, LEADFLOW_KAFKA_TOPIC=small_topic)

    def opened(event_id: str, reason_length: int = 0) -> dict[str, object]:
        record: dict[str, object] = {
            "event_id": event_id, "type": "disqualified" if reason_length else "email_opened",
            "occurred_at": "2026-03-02T09:00:00Z", "lead": {"email": "s@globex.com"}}
        if reason_length:
            record["reason"] = "r" * reason_length
        return record

    try:
        with ServeProcess(env, tmp_path / "serve.log") as server:
            def post(record: dict[str, object]) -> dict[str, object]:
                answer = httpx.post(f"{server.url}/v1/records", json=record, timeout=60,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
                result: dict[str, object] = answer.json()["results"][0]
                return result

            # Over the limit serve read at start: refused before it is sent.
            assert post(opened("big", 1900))["reason"] == "record_too_large"
            assert post(opened("s1"))["status"] == "accepted"
            # The limit lowered behind serve's back: the broker refuses, the producer
            # (which would refuse everything after that) is replaced, later records go.
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, small_topic,
                                                configs={"max.message.bytes": "400"})])
            time.sleep(2)
            refused = post(opened("mid", 400))
            assert (refused["status"], refused["reason"]) == ("rejected", "record_too_large")
            assert post(opened("s2"))["status"] == "accepted"
    finally:
        admin.close()
    sent = [json.loads(m.value)["event_id"] for m in pipe.read_all(small_topic)]
    assert sent == ["s1", "s2"]
    assert "replacing the producer" in (tmp_path / "serve.log").read_text()
