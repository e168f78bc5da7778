"""The hostile corpus through a real Kafka topic with several partitions and the real consumer.

Each hostile message is dead-lettered with its reason (and the producer's key and headers),
every good message between them is applied, the consumer keeps running and its tracked
offsets reach the end of every partition; a lead whose stored events were damaged by hand
costs only its own records; the read models project and rebuild afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from tests.hostile_corpus import CASES, GOOD, dumps, good_filler, record
from tests.integration.kafka_helpers import Pipeline, applied_event_ids
from tests.integration.services import Services

pytestmark = pytest.mark.integration

PARTITIONS = 4
# Hostile keys and headers travel with the records (Kafka lets a producer send anything).
HOSTILE_KEYS: list[bytes | None] = [None, b"", b"\xff\xfe\x00binary", "ключ".encode(),
                                    b"k" * 10_000]
HOSTILE_HEADERS = [("leadflow-reason", b"forged"), ("x-\u202e", b"\xff\x00"), ("trace", b"")]
DAMAGED = "damaged.person@damaged.example"


@pytest.fixture
def pipe(services: Services, pg_url: str, topic_prefix: str) -> Iterator[Pipeline]:
    pipeline = Pipeline(services, pg_url, topic_prefix)
    assert pipeline.run("db", "init").returncode == 0
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        # Records over 1 MiB must reach the consumer to be refused by it, as on a broker
        # configured for large messages.
        big = {"max.message.bytes": str(4 << 20)}
        admin.create_topics([NewTopic(pipeline.topic, PARTITIONS, 1, topic_configs=big),
                             NewTopic(pipeline.dlq, PARTITIONS, 1, topic_configs=big),
                             NewTopic(pipeline.lifecycle, 1, 1)])
    finally:
        admin.close()
    yield pipeline
    pipeline.close()


def _produce(pipe: Pipeline, messages: list[tuple[bytes | None, bytes | None, list[Any]]]) -> None:
    producer = KafkaProducer(bootstrap_servers=pipe.services.kafka_bootstrap, acks="all",
                             max_request_size=8 << 20)
    for i, (key, value, headers) in enumerate(messages):
        # Spread over every partition whatever the key (a None key would go anywhere).
        producer.send(pipe.topic, key=key, value=value, headers=headers,
                      partition=i % PARTITIONS)
    producer.flush()
    producer.close()


def test_hostile_messages_are_dead_lettered_and_never_block_a_partition(
        pipe: Pipeline) -> None:
    # Phase 1: the leads the corpus refers to, and a lead we then damage by hand.
    first = [*GOOD, *(dumps(record(f"d-{i}", lead={"email": DAMAGED}, occurred_at=at))
                      for i, at in enumerate(("2026-03-01T09:00:00Z", "2026-03-01T10:00:00Z",
                                              "2026-03-01T11:00:00Z")))]
    _produce(pipe, [(b"email:" + DAMAGED.encode(), v, []) for v in first[1:]]
             + [(b"k", first[0], [])])
    consumed = pipe.run("consume", "--until-idle")
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    app = pipe.app()
    damaged_id = app.resolve(f"email:{DAMAGED}")
    with psycopg.connect(pipe.pg_url, autocommit=True) as conn:
        # Its second stored row (one row per record; a row is keyed by its first version).
        deleted = conn.execute(
            "DELETE FROM leadflow_events WHERE originator_id = %s AND originator_version = "
            "(SELECT originator_version FROM leadflow_events WHERE originator_id = %s "
            "ORDER BY originator_version LIMIT 1 OFFSET 1)", [damaged_id, damaged_id]).rowcount
    assert deleted == 1

    # Phase 2: the corpus, tombstones, hostile keys and headers, between good records.
    filler = good_filler(400)
    messages: list[tuple[bytes | None, bytes | None, list[Any]]] = []
    expect: dict[int, str] = {}  # message index -> reason (DLQ) or "applied"/"duplicate"
    hostile = [(c.raw, c.expect) for c in CASES] + [
        (None, "empty_record"), (b"", "empty_record"), (b"   \n", "empty_record"),
        (dumps(record("d-after", lead={"email": DAMAGED})), "lead_unloadable"),
        (dumps(record("d-after-2", lead={"email": DAMAGED}, type="page_viewed")),
         "lead_unloadable")]
    for n, (raw, reason) in enumerate(hostile):
        messages.append((HOSTILE_KEYS[n % len(HOSTILE_KEYS)], raw,
                         HOSTILE_HEADERS if n % 3 == 0 else []))
        expect[len(messages) - 1] = reason
        for good in filler[n * 4:(n + 1) * 4]:
            messages.append((b"email:filler", good, []))
            expect[len(messages) - 1] = "applied"
    _produce(pipe, messages)
    consumed = pipe.run("consume", "--until-idle", timeout=900)
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    assert "Traceback" not in consumed.stderr

    # Offsets: every message of every partition is behind a tracked position.
    assert pipe.tracked_total(PARTITIONS) == len(first) + len(messages)

    # Every refused message is in the DLQ once, with its reason first among the headers.
    letters = pipe.read_all(pipe.dlq)
    refused = {i: r for i, r in expect.items() if r not in ("applied", "duplicate")}
    assert len(letters) == len(refused)
    got = sorted((int(dict(m.headers)["leadflow-original-partition"]),
                  int(dict(m.headers)["leadflow-original-offset"]), m.headers[0][1].decode())
                 for m in letters)
    # Message i went to partition i % 4; its offset there is its rank among those messages.
    wanted = sorted((i % PARTITIONS, _offset(i, len(first)), reason)
                    for i, reason in refused.items())
    assert got == wanted
    for letter in letters:
        headers = dict(letter.headers[:7])
        assert headers["leadflow-error-class"] and headers["leadflow-detail"]
        if headers["leadflow-reason"] == b"lead_unloadable":
            assert str(damaged_id).encode() in headers["leadflow-detail"]
    # The producer's forged header is kept, renamed: leadflow's reason is the only one.
    assert ("original-leadflow-reason", b"forged") in [h for m in letters for h in m.headers]
    assert all([k for k, _ in m.headers].count("leadflow-reason") == 1 for m in letters)
    assert all(dict(m.headers)["leadflow-reason"] != b"forged" for m in letters)

    # Every good message applied, no refused one.
    applied_list = applied_event_ids(pipe.app())
    applied = set(applied_list)
    assert applied_list.count("h-good-1") == 1  # the re-send and both conflicts changed nothing
    good_ids = {json.loads(v)["event_id"] for v in filler[:4 * len(hostile)]}
    good_ids |= {json.loads(c.raw.lstrip(b"\xef\xbb\xbf"))["event_id"] for c in CASES
                 if c.expect == "applied"}
    assert len(good_ids) > 300
    assert good_ids <= applied
    assert not {"h-nul-co", "h-homo-dom", "h-rev-text", "d-after", "d-after-2"} & applied

    # The damaged lead is reported by verify, not a crash; the read models build.
    verified = pipe.run("verify", "--json")
    assert verified.returncode == 4, verified.stderr[-2000:]
    assert str(damaged_id) in verified.stdout
    for command in (("project", "--until-idle"), ("rebuild",)):
        done = pipe.run(*command)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"


def _offset(index: int, phase1: int) -> int:
    """Offset of phase-2 message ``index`` in its partition (phase 1 went there first)."""
    before = sum(1 for j in range(phase1) if j % PARTITIONS == index % PARTITIONS)
    return before + index // PARTITIONS


def test_publish_sends_what_the_consumer_can_apply_and_names_every_other_line(
        pipe: Pipeline, tmp_path: Path) -> None:
    engine_decides = {"applied", "duplicate", "event_id_conflict", "unknown_lead",
                      "unknown_rep"}
    lines = [*GOOD, *(c.raw for c in CASES)]
    source = tmp_path / "hostile.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    published = pipe.run("publish", str(source))
    assert published.returncode == 3, published.stderr[-2000:]
    assert "Traceback" not in published.stderr
    rejects = [json.loads(x) for x in
               (tmp_path / "hostile.jsonl.rejects.jsonl").read_text().splitlines()]
    expected = {n: c.expect for n, c in enumerate(CASES, start=len(GOOD) + 1)
                if c.expect not in engine_decides}
    assert {r["line"]: r["reason"] for r in rejects} == expected
    sent = pipe.read_all(pipe.topic)
    assert len(sent) == len(lines) - len(expected)
