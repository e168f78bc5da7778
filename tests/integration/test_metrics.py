"""Metrics and health of `consume`, `project` and `relay`, scraped while they run against the
real Kafka broker and PostgreSQL server, and checked against what was sent."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.kafka_helpers import Pipeline, log_tail, wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Endpoint:
    """The metrics port of one running leadflow process."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def up(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)


def record(event_id: str, email: str, type_: str = "email_opened") -> bytes:
    return json.dumps({"event_id": event_id, "type": type_,
                       "occurred_at": "2026-03-02T09:00:00Z",
                       "lead": {"email": email}}).encode()


def keys_on_partitions(partitions: int) -> list[bytes]:
    """One key per partition, in partition order, as Kafka's default partitioner places it."""
    from leadflow.consumers.relay import partition_for

    found: dict[int, bytes] = {}
    n = 0
    while len(found) < partitions:
        key = f"domain:company{n}.io".encode()
        found.setdefault(partition_for(key, partitions), key)
        n += 1
    return [found[p] for p in range(partitions)]


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log_tail(log)


def test_consumer_metrics_count_what_was_sent_and_lag_goes_to_zero(
        pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=2)
    good = [record(f"g{i}", f"person{i}@acme{i % 7}.io") for i in range(40)]
    bad = {"malformed_json": [b'{"event_id": "x"', b"not json at all"],
           "unknown_type": [record("b1", "u@acme.io", "tweet_liked")],
           "invalid_identity": [json.dumps({"event_id": "b2", "type": "email_opened",
                                            "occurred_at": "2026-03-02T09:00:00Z",
                                            "lead": {"email": "bob@@acme"}}).encode()]}
    bad_count = sum(len(v) for v in bad.values())
    # Twenty good records on each partition (Kafka's own partitioner picks it from the key);
    # the bad ones and a re-sent good one on the first.
    key_a, key_b = keys_on_partitions(2)
    pipe.produce_raw(good[:20], key=key_a)
    pipe.produce_raw(good[20:], key=key_b)
    pipe.produce_raw([v for values in bad.values() for v in values], key=key_a)
    pipe.produce_raw([good[0]], key=key_a)  # a re-sent record: a duplicate

    port = free_port()
    endpoint = Endpoint(port)
    log = tmp_path / "consume.log"
    process = pipe.start("consume", "--metrics-port", str(port), log=log,
                         LEADFLOW_METRICS_HOST="127.0.0.1")
    try:
        wait_until(endpoint.up, 60, "the consumer's metrics port", watch=[(process, log)])
        wait_until(lambda: endpoint.value("leadflow_consumer_records_total",
                                          outcome="applied") >= 40, 120,
                   "40 applied records", watch=[(process, log)])
        wait_until(lambda: endpoint.value("leadflow_consumer_records_total",
                                          outcome="duplicate") >= 1, 60,
                   "the duplicate", watch=[(process, log)])
        samples = endpoint.samples()

        def get(name: str, **labels: str) -> float:
            return samples.get((name, tuple(sorted(labels.items()))), 0.0)

        assert get("leadflow_consumer_records_total", outcome="applied") == 40
        assert get("leadflow_consumer_records_total", outcome="duplicate") == 1
        assert get("leadflow_consumer_records_total", outcome="rejected") == bad_count
        for reason, values in bad.items():
            assert get("leadflow_consumer_rejected_records_total", reason=reason) == len(values)
            assert get("leadflow_consumer_dead_letters_total", reason=reason) == len(values)
        assert len(pipe.read_all(pipe.dlq)) == bad_count
        assert get("leadflow_consumer_assigned_partitions") == 2
        assert get("leadflow_consumer_batch_duration_seconds_count") >= 2  # one per partition
        assert get("leadflow_consumer_write_conflicts_total") == 0
        # The tracked offsets: partition 0 holds 20 good + the bad + 1 duplicate, 1 holds 20.
        assert pipe.tracked_total(2) == 40 + bad_count + 1
        assert get("leadflow_consumer_tracked_offset", topic=pipe.topic,
                   partition="0") == 20 + bad_count + 1 - 1
        assert get("leadflow_consumer_tracked_offset", topic=pipe.topic, partition="1") == 19

        def lags() -> list[float | None]:
            now = endpoint.samples()
            return [now.get(("leadflow_consumer_lag_records",
                             (("partition", str(p)), ("topic", pipe.topic)))) for p in (0, 1)]

        wait_until(lambda: lags() == [0, 0], 60, "lag 0 on both partitions")
        status, ready = endpoint.ready()
        assert status == 200 and ready["checks"] == {"partitions_assigned": True,
                                                     "database": True}
        status, body = endpoint.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"

        # More records while it runs: counted, and the lag comes back to 0.
        pipe.produce_raw([record(f"late{i}", f"late{i}@acme.io") for i in range(15)],
                         key=b"domain:late")
        wait_until(lambda: endpoint.value("leadflow_consumer_records_total",
                                          outcome="applied") == 55, 60, "55 applied",
                   watch=[(process, log)])
        wait_until(lambda: lags() == [0, 0], 60, "lag 0 again")
    finally:
        if process.poll() is None:
            stop(process, log)


def test_a_consumer_without_partitions_is_alive_but_not_ready(
        pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=1)
    ports = [free_port(), free_port()]
    endpoints = [Endpoint(p) for p in ports]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [pipe.start("consume", "--metrics-port", str(port), log=log,
                            LEADFLOW_METRICS_HOST="127.0.0.1",
                            LEADFLOW_KAFKA_REJOIN_TIMEOUT_SECONDS="600")
                 for port, log in zip(ports, logs, strict=True)]
    try:
        for endpoint, process, log in zip(endpoints, processes, logs, strict=True):
            wait_until(endpoint.up, 60, "a consumer's metrics port", watch=[(process, log)])

        def one_ready() -> bool:
            states = [e.ready() for e in endpoints]
            return sorted(s for s, _ in states) == [200, 503]

        # One partition, two members: exactly one of them holds it.
        wait_until(one_ready, 90, "one consumer ready and the other not")
        idle = next(e for e in endpoints if e.ready()[0] == 503)
        assert idle.ready()[1]["checks"] == {"partitions_assigned": False, "database": True}
        assert idle.get("/healthz")[0] == 200  # alive: its loop turns, waiting for partitions
        assert idle.value("leadflow_consumer_assigned_partitions") == 0
    finally:
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is None:
                stop(process, log)


def test_projector_and_relay_metrics_follow_the_store(pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=1)
    source = tmp_path / "s.jsonl"
    source.write_text("\n".join(
        json.dumps({"event_id": f"p{i}", "type": "demo_requested" if i % 3 == 0
                    else "content_downloaded", "occurred_at": "2026-03-02T09:00:00Z",
                    "lead": {"email": f"p{i % 12}@acme.io", "title": "VP Sales",
                             "employees": 20}})
        for i in range(60)) + "\n")
    ingested = pipe.run("ingest", str(source))
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    app = pipe.app()
    newest = int(app.recorder.max_notification_id() or 0)
    assert newest > 0

    ports = {"project": free_port(), "relay": free_port()}
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    processes = {name: pipe.start(name, "--metrics-port", str(port), log=logs[name],
                                  LEADFLOW_METRICS_HOST="127.0.0.1")
                 for name, port in ports.items()}
    endpoints = {name: Endpoint(port) for name, port in ports.items()}
    try:
        for name in ports:
            wait_until(endpoints[name].up, 60, f"{name}'s metrics port",
                       watch=[(processes[name], logs[name])])
        projector, relay = endpoints["project"], endpoints["relay"]
        wait_until(lambda: projector.value("leadflow_projector_position") == newest, 60,
                   "the projector at the store's newest event",
                   watch=[(processes["project"], logs["project"])])
        assert projector.value("leadflow_projector_lag_events") == 0
        assert projector.value("leadflow_projector_lag_seconds") == 0
        assert projector.value("leadflow_projector_events_total") > 0
        assert projector.ready() == (200, {"status": "ready", "checks": {"database": True}})

        def relayed() -> bool:
            return relay.value("leadflow_relay_lag_events") == 0 and \
                relay.value("leadflow_relay_published_messages_total") > 0
        wait_until(relayed, 60, "the relay caught up",
                   watch=[(processes["relay"], logs["relay"])])
        messages = pipe.read_all(pipe.lifecycle)
        assert relay.value("leadflow_relay_published_messages_total") == len(messages)
        assert relay.ready()[0] == 200

        # New events: both follow them to the store's new end.
        more = tmp_path / "more.jsonl"
        more.write_text("\n".join(
            json.dumps({"event_id": f"m{i}", "type": "demo_requested",
                        "occurred_at": "2026-03-03T09:00:00Z",
                        "lead": {"email": f"m{i}@beta.io", "title": "CEO", "employees": 30}})
            for i in range(10)) + "\n")
        assert pipe.run("ingest", str(more)).returncode == 0
        newer = int(app.recorder.max_notification_id() or 0)
        assert newer > newest
        wait_until(lambda: projector.value("leadflow_projector_position") == newer, 60,
                   "the projector at the new end")
        wait_until(lambda: len(pipe.read_all(pipe.lifecycle)) ==
                   relay.value("leadflow_relay_published_messages_total") > len(messages), 60,
                   "the relay's count equal to the topic's messages")
        assert projector.value("leadflow_projector_lag_events") == 0
    finally:
        app.close()
        for name, process in processes.items():
            if process.poll() is None:
                stop(process, logs[name])
