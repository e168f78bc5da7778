"""Production path against a real Kafka broker and a real PostgreSQL server.

Exact-equality tests use single-partition topics: Kafka only orders records within a
partition, and routing (round robin, load) and account surges depend on the order of
records across leads, so only one partition gives one order to compare with.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from leadflow.contract.lifecycle import LifecycleEvent
from leadflow.generator import generate
from tests.integration.kafka_helpers import (
    Pipeline,
    applied_event_ids,
    lead_states,
    reference_app,
    valid_records,
    wait_until,
)
from tests.integration.services import Services

pytestmark = pytest.mark.integration


def write_stream(path: Path, leads: int, days: int, seed: int) -> list[str]:
    lines = list(generate(leads=leads, days=days, seed=seed))
    path.write_text("\n".join(lines) + "\n")
    return lines


def latest_assignment(log: Path) -> list[int]:
    """The partitions a consumer's log says it was given last (empty before the first)."""
    assigned: list[int] = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "partitions assigned":
                assigned = event["partitions"]
    return assigned


def test_db_init_is_idempotent(pipe: Pipeline) -> None:
    again = pipe.run("db", "init")
    assert again.returncode == 0 and "database ready" in again.stdout
    assert "***" in again.stdout  # the password is never printed


@pytest.mark.parametrize("fetch", [None, "16384"], ids=["default-fetch", "16-KiB-fetches"])
def test_published_records_consumed_into_postgres_match_the_embedded_engine(
        pipe: Pipeline, tmp_path: Path, fetch: str | None) -> None:
    # 16 KiB partition fetches (a soft limit: the broker still returns a whole record batch
    # of the producer's): the same result.
    extra = {"LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES": fetch} if fetch else {}
    pipe.create_topics(partitions=1)
    lines = write_stream(tmp_path / "s.jsonl", leads=300, days=45, seed=11)
    published = pipe.run("publish", str(tmp_path / "s.jsonl"))
    assert published.returncode == 3, published.stderr  # the stream has bad lines on purpose
    records = valid_records(lines)
    assert f"{len(records)} published" in published.stdout
    consumed = pipe.run("consume", "--until-idle", **extra)
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    end = max(r.occurred_at for r in records)
    reference = reference_app(records)
    app = pipe.app()
    assert lead_states(app, end) == lead_states(reference, end)
    ids = applied_event_ids(app)
    assert len(ids) == len(set(ids)) == len({r.event_id for r in records}) - sum(
        1 for r in reference.apply_batch(records).rejected)


def test_every_bad_record_kind_is_dead_lettered_and_good_records_around_it_apply(
        pipe: Pipeline) -> None:
    pipe.create_topics(partitions=1)

    def rec(event_id: str, **fields: object) -> bytes:
        data: dict[str, object] = {"event_id": event_id, "type": "email_opened",
                                   "occurred_at": "2026-03-02T09:00:00Z",
                                   "lead": {"email": "dlq@acme.io"}}
        data.update(fields)
        return json.dumps(data).encode()

    bad = {
        "malformed_json": b'{"event_id": "x", "type"',
        "schema_violation": rec("b2", occurred_at="not a time"),
        "unknown_type": rec("b3", type="tweet_liked"),
        "invalid_identity": rec("b4", lead={"email": "bob@@acme"}),
        "timestamp_out_of_range": rec("b5", occurred_at="2099-01-01T00:00:00Z"),
        "unknown_lead": rec("b6", type="deal_won", lead={"email": "ghost@acme.io"}),
    }
    values = [rec("g1")]
    for value in bad.values():
        values += [value, rec(f"g-after-{len(values)}")]
    pipe.produce_raw(values, key=b"email:dlq@acme.io")  # as kcat or any client would
    consumed = pipe.run("consume", "--until-idle")
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    app = pipe.app()
    assert app.lead("email:dlq@acme.io").touchpoints == 7
    letters = pipe.read_all(pipe.dlq)
    assert len(letters) == len(bad)
    by_reason = {dict(m.headers)["leadflow-reason"].decode(): m for m in letters}
    assert set(by_reason) == set(bad)
    for reason, message in by_reason.items():
        headers = dict(message.headers)
        assert message.value == bad[reason]
        assert headers["leadflow-original-topic"].decode() == pipe.topic
        assert int(headers["leadflow-original-offset"]) == values.index(bad[reason])
        assert headers["leadflow-original-partition"] == b"0"
        assert headers["leadflow-error-class"] and headers["leadflow-detail"]


def test_publish_refuses_invalid_lines_and_sends_the_rest(pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=1)
    source = tmp_path / "in.jsonl"
    good = json.dumps({"event_id": "p1", "type": "email_opened",
                       "occurred_at": "2026-03-02T09:00:00Z", "lead": {"email": "P@acme.io"}})
    source.write_text(good + "\nnot json\n")
    result = pipe.run("publish", str(source))
    assert result.returncode == 3 and "1 published" in result.stdout
    rejects = (tmp_path / "in.jsonl.rejects.jsonl").read_text().splitlines()
    assert json.loads(rejects[0])["line"] == 2
    sent = pipe.read_all(pipe.topic)
    # Keyed by account (a company email's domain): one partition owns a company's people.
    assert [(m.key, m.value) for m in sent] == [(b"domain:acme.io", good.encode())]


def test_a_consumer_killed_at_random_moments_ends_exactly_like_an_uninterrupted_run(
        pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=1)
    lines = write_stream(tmp_path / "s.jsonl", leads=2200, days=90, seed=5)
    records = valid_records(lines)
    assert len(records) >= 20_000
    assert pipe.run("publish", str(tmp_path / "s.jsonl")).returncode == 3
    chaos = random.Random(20261122)
    log = tmp_path / "consumer.log"
    progress = [0]
    kills = 0
    # Small polls make each kill land in the middle of the stream, between many commits.
    small = {"LEADFLOW_KAFKA_MAX_POLL_RECORDS": "250", "LEADFLOW_KAFKA_INSTANCE_ID": "crash-1"}
    while kills < 5:
        process = pipe.start("consume", log=log, **small)
        # Kill after a random share of the records still to commit (not of time: that
        # depends on how fast the engine is), then a random moment later, so the kill lands
        # mid-batch. A share of what is left: the consumer runs on until it is killed, and a
        # fixed step past the stream's end (after faster runs ahead) would never be reached.
        left = len(records) - progress[-1]
        target = progress[-1] + chaos.randint(max(1, left // 12), max(1, left // 6))
        wait_until(lambda target=target: pipe.tracked_total(partitions=1) >= target, 120,
                   f"the consumer to commit {target} of {len(records)} records",
                   interval=0.05, watch=[(process, log)])
        time.sleep(chaos.uniform(0.0, 0.1))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills += 1
        progress.append(pipe.tracked_total(partitions=1))
    assert progress[-1] < len(records), "the stream finished before the last kill; kill sooner"
    assert sorted(progress) == progress and progress[-1] > progress[1] > 0
    final = pipe.run("consume", "--until-idle", **small)
    assert final.returncode == 0, final.stderr[-3000:]
    end = max(r.occurred_at for r in records)
    app = pipe.app()
    ids = applied_event_ids(app)
    assert len(ids) == len(set(ids)), "a record was applied twice"
    reference = reference_app(records)
    assert set(ids) == set(applied_event_ids(reference)), "a record was lost"
    assert lead_states(app, end) == lead_states(reference, end)


def test_two_consumers_in_one_group_share_partitions_without_double_processing(
        pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=4)
    lines = write_stream(tmp_path / "s.jsonl", leads=600, days=30, seed=8)
    logs = [tmp_path / "c1.log", tmp_path / "c2.log"]
    first = pipe.start("consume", log=logs[0], LEADFLOW_KAFKA_MAX_POLL_RECORDS="100")
    second = pipe.start("consume", log=logs[1], LEADFLOW_KAFKA_MAX_POLL_RECORDS="100")
    processes = [first, second]
    records = valid_records(lines)  # exactly what publish sent
    reference = reference_app(records)
    expected = set(applied_event_ids(reference))
    try:
        # Both join the group before anything is published: one consumer started a moment
        # earlier could otherwise drain all four partitions before the other is assigned any.
        watch = list(zip(processes, logs, strict=True))
        wait_until(lambda: all(latest_assignment(log) for log in logs)
                   and sorted(latest_assignment(logs[0]) + latest_assignment(logs[1]))
                   == [0, 1, 2, 3], 120, "the group to split the four partitions between "
                   "both consumers", watch=watch)
        assert pipe.run("publish", str(tmp_path / "s.jsonl")).returncode == 3
        wait_until(lambda: pipe.tracked_total(partitions=4) >= len(records), 300,
                   "both consumers to reach the end of all partitions", watch=watch)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in processes]
    assert codes == [0, 0]
    for log in logs:  # each applied some of the records
        assert "consumed 0 records" not in log.read_text(), log.read_text()[-2000:]
    ids = applied_event_ids(pipe.app())
    assert len(ids) == len(set(ids)), "a record was applied twice"
    assert set(ids) == expected


def test_consumer_survives_a_broker_restart_and_resumes_after_a_database_outage(
        pipe: Pipeline, services: Services, tmp_path: Path) -> None:
    if services.restart_kafka is None or services.stop_postgres is None \
            or services.start_postgres is None:
        pytest.fail("this test needs the local launcher's restart hooks (scripts/services)")
    pipe.create_topics(partitions=2)
    lines = write_stream(tmp_path / "s.jsonl", leads=1200, days=30, seed=9)
    records = valid_records(lines)
    half = len(lines) // 2
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:half]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[half:]) + "\n")
    first_half = len(valid_records(lines[:half]))
    assert pipe.run("publish", str(tmp_path / "a.jsonl")).returncode == 3
    log = tmp_path / "consumer.log"
    settings = {"LEADFLOW_KAFKA_MAX_POLL_RECORDS": "200", "LEADFLOW_KAFKA_INSTANCE_ID": "r-1",
                "LEADFLOW_KAFKA_MAX_RETRIES": "1", "POSTGRES_CONNECT_TIMEOUT": "1",
                "LEADFLOW_KAFKA_REJOIN_TIMEOUT_SECONDS": "30"}
    process = pipe.start("consume", log=log, **settings)
    try:
        wait_until(lambda: pipe.tracked_total(2) > 500, 120, "the consumer to make progress",
                   watch=[(process, log)])
        services.restart_kafka()
        # Either it rejoins and catches up, or it stops loudly and a restart resumes it.
        wait_until(lambda: pipe.tracked_total(2) >= first_half or process.poll() is not None,
                   180, "the consumer to catch up or stop after the broker restart")
        if process.poll() is not None:
            assert process.returncode != 0
            assert "restart to resume from the tracked offsets" in log.read_text()
            process = pipe.start("consume", log=log, **settings)
            wait_until(lambda: pipe.tracked_total(2) >= first_half, 180,
                       "the restarted consumer to catch up", watch=[(process, log)])
        # Take the database away while records keep arriving: bounded retries, then a loud stop.
        services.stop_postgres()
        try:
            assert pipe.run("publish", str(tmp_path / "b.jsonl")).returncode == 3
            code = process.wait(timeout=180)
        finally:
            services.start_postgres()
    finally:
        if process.poll() is None:
            process.kill()
    assert code != 0, "the consumer must stop loudly when the database stays down"
    assert "giving up after retries" in log.read_text()
    final = pipe.run("consume", "--until-idle", **settings)
    assert final.returncode == 0, final.stderr[-3000:]
    ids = applied_event_ids(pipe.app())
    assert len(ids) == len(set(ids)), "a record was applied twice"
    assert set(ids) == set(applied_event_ids(reference_app(records))), "a record was lost"


def test_the_relay_publishes_each_lifecycle_event_once_even_when_restarted(
        pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=3)
    lines = write_stream(tmp_path / "s.jsonl", leads=800, days=45, seed=12)
    records = valid_records(lines)
    app = pipe.app()
    for i in range(0, len(records), 500):
        app.apply_batch(records[i:i + 500])
    log = tmp_path / "relay.log"
    for _ in range(3):
        process = pipe.start("relay", log=log, LEADFLOW_LOG_LEVEL="INFO")
        time.sleep(2.5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    final = pipe.run("relay", "--until-idle")
    assert final.returncode == 0, final.stderr[-3000:]
    messages = pipe.read_all(pipe.lifecycle)
    events = [LifecycleEvent.model_validate_json(m.value) for m in messages]
    counts = Counter(e.event_id for e in events)
    assert counts and max(counts.values()) == 1, "an event was relayed twice"
    kinds = Counter(e.type for e in events)
    assert kinds["lead.mql_reached"] > 0 and kinds["lead.owner_assigned"] > 0
    # Every relayable stored event is there, keyed by lead.
    again = pipe.run("relay", "--until-idle")
    assert again.returncode == 0 and "relayed 0 lifecycle events" in again.stdout
    assert all(m.key == str(e.lead_id).encode() for m, e in zip(messages, events, strict=True))


def test_the_partition_fetch_size_reaches_the_kafka_client(pipe: Pipeline) -> None:
    from leadflow.consumers.clients import touchpoint_consumer
    from leadflow.consumers.settings import KafkaSettings

    settings = KafkaSettings.from_env(pipe.env(LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES="123456"))
    consumer = touchpoint_consumer(settings)  # connects to the real broker
    try:
        assert consumer.config["max_partition_fetch_bytes"] == 123456
        assert consumer.config["max_poll_records"] == settings.max_poll_records
        # A rebalance is heard of within a second by default (see touchpoint_consumer).
        assert consumer.config["heartbeat_interval_ms"] == settings.session_timeout_ms // 10
        assert consumer.config["heartbeat_interval_ms"] <= 1000
    finally:
        consumer.close()


def test_a_consumer_joining_a_new_group_is_given_its_partitions_in_the_first_assignment(
        pipe: Pipeline, tmp_path: Path) -> None:
    # Without the topic's metadata before the join, the group's first assignment was
    # computed from nothing and was empty; a second rebalance followed when the metadata
    # arrived (2.6 s later for two consumers started together, who learn of it by heartbeat).
    pipe.create_topics(partitions=3)
    write_stream(tmp_path / "s.jsonl", leads=40, days=10, seed=5)
    assert pipe.run("publish", str(tmp_path / "s.jsonl")).returncode == 3
    consumed = pipe.run("consume", "--until-idle")
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    assignments = [event["partitions"] for line in
                   (consumed.stdout + consumed.stderr).splitlines() if line.startswith("{")
                   for event in [json.loads(line)] if event["event"] == "partitions assigned"]
    assert assignments == [[0, 1, 2]]
