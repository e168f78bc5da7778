"""leadflow.metrics: the registry, the gauges' arithmetic, health, and the HTTP endpoints
served on a real socket."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from leadflow.config import ConfigError
from leadflow.metrics import (
    ConsumerMetrics,
    Health,
    HttpMetrics,
    MetricsServer,
    ProjectorMetrics,
    RelayMetrics,
    database_check,
    new_registry,
    stall_seconds,
)


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers["Content-Type"], exc.read()


def test_each_process_counts_in_a_registry_of_its_own() -> None:
    one, two = ConsumerMetrics(), ConsumerMetrics()
    one.records.labels("applied").inc(3)
    assert one.registry.get_sample_value("leadflow_consumer_records_total",
                                         {"outcome": "applied"}) == 3
    assert two.registry.get_sample_value("leadflow_consumer_records_total",
                                         {"outcome": "applied"}) == 0
    assert REGISTRY.get_sample_value("leadflow_consumer_records_total",
                                     {"outcome": "applied"}) is None


def test_partition_lag_is_the_log_end_minus_the_offset_after_the_tracked_one() -> None:
    metrics = ConsumerMetrics()

    def lag(partition: str) -> float | None:
        return metrics.registry.get_sample_value(
            "leadflow_consumer_lag_records", {"topic": "t", "partition": partition})

    metrics.partition_lag("t", 0, tracked=None, log_end=None)
    assert lag("0") is None  # nothing fetched yet: no lag is known
    metrics.partition_lag("t", 0, tracked=None, log_end=12)
    assert lag("0") == 12  # nothing applied yet: the whole log
    metrics.partition_lag("t", 0, tracked=9, log_end=12)
    assert lag("0") == 2
    assert metrics.registry.get_sample_value(
        "leadflow_consumer_tracked_offset", {"topic": "t", "partition": "0"}) == 9
    metrics.partition_lag("t", 0, tracked=11, log_end=12)
    assert lag("0") == 0
    metrics.forget_partition("t", 0)
    metrics.forget_partition("t", 0)  # twice: a partition never reported is no error
    assert lag("0") is None


def test_a_follower_reports_lag_until_caught_up_and_seconds_behind() -> None:
    projector = ProjectorMetrics()
    projector._caught_up_at = time.monotonic() - 50  # last caught up 50 s ago
    registry = projector.registry
    projector.progress(position=40, newest=100, caught_up=False)
    assert registry.get_sample_value("leadflow_projector_lag_events") == 60
    assert registry.get_sample_value("leadflow_projector_position") == 40
    assert 50 <= registry.get_sample_value("leadflow_projector_lag_seconds") < 60  # type: ignore[operator]
    projector.progress(position=100, newest=100, caught_up=True)
    assert registry.get_sample_value("leadflow_projector_lag_events") == 0
    assert registry.get_sample_value("leadflow_projector_lag_seconds") == 0

    relay = RelayMetrics(new_registry(process=False))
    relay.published.inc(4)
    assert relay.registry.get_sample_value("leadflow_relay_published_messages_total") == 4
    assert relay.registry.get_sample_value("leadflow_relay_lag_events") == 0


def test_liveness_fails_once_the_loop_stops_turning() -> None:
    now = [0.0]
    health = Health(stall_seconds=30, clock=lambda: now[0])
    assert health.live()[0]
    now[0] = 31.0
    live, detail = health.live()
    assert not live and detail["seconds_since_loop"] == 31.0
    health.beat()
    assert health.live()[0]


def test_readiness_is_every_check_and_a_failing_check_counts_as_false() -> None:
    health = Health()
    assert health.ready() == (True, {})
    health.add_check("database", lambda: True)
    health.add_check("partitions_assigned", lambda: False)
    assert health.ready() == (False, {"database": True, "partitions_assigned": False})

    def broken() -> bool:
        raise RuntimeError("boom")

    health = Health()
    health.add_check("database", broken)
    assert health.ready() == (False, {"database": False})


def test_the_database_check_opens_a_connection_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "lf.db"
    sqlite3.connect(path).close()
    assert database_check(f"sqlite:///{path}")()
    assert database_check("memory:")()
    # Nothing listens on port 1 of the loopback: refused at once.
    assert not database_check("postgresql://u:p@127.0.0.1:1/db", timeout_seconds=1)()
    with pytest.raises(ConfigError):
        database_check("mysql://u:p@host/db")


def test_the_server_answers_metrics_health_and_readiness_on_a_real_port() -> None:
    registry = new_registry()
    http = HttpMetrics(registry)
    http.observe("POST", "/v1/records", 202, seconds=0.003)
    ready = [False]
    health = Health()
    health.add_check("partitions_assigned", lambda: ready[0])
    with MetricsServer(registry, health, port=0, host="127.0.0.1") as server:
        status, content_type, body = get(server.port, "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        text = body.decode()
        assert 'leadflow_http_requests_total{method="POST",route="/v1/records",status="202"} ' \
               '1.0' in text
        assert "process_resident_memory_bytes" in text  # the process collector is there
        status, _, body = get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, _, body = get(server.port, "/readyz")
        assert status == 503 and json.loads(body) == {
            "status": "not ready", "checks": {"partitions_assigned": False}}
        ready[0] = True
        status, _, body = get(server.port, "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        assert get(server.port, "/nothing")[0] == 404
        port = server.port
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with MetricsServer(new_registry(), Health(), port=0, host="127.0.0.1") as first, \
            pytest.raises(ConfigError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
        MetricsServer(new_registry(), Health(), port=first.port, host="127.0.0.1").start()


def test_the_stall_setting_is_checked() -> None:
    assert stall_seconds({}) == 300
    assert stall_seconds({"LEADFLOW_METRICS_STALL_SECONDS": "15"}) == 15
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ConfigError, match="LEADFLOW_METRICS_STALL_SECONDS"):
            stall_seconds({"LEADFLOW_METRICS_STALL_SECONDS": bad})


def _exposed_names() -> set[str]:
    """Every series name leadflow's metrics can expose (counters end in _total, histograms
    in _bucket, _count and _sum)."""
    registry = new_registry(process=False)
    ConsumerMetrics(registry)
    ProjectorMetrics(registry)
    RelayMetrics(registry)
    HttpMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    return {family.name + suffix for family in registry.collect()
            for suffix in suffixes[family.type]}


def test_the_grafana_dashboard_queries_only_metrics_leadflow_exposes() -> None:
    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "ops" / "grafana" / "leadflow.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bleadflow_[a-z_]+", expr)}
    exposed = _exposed_names()
    assert used and used <= exposed, used - exposed
    # Every leadflow metric has a panel.
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in used}
    assert {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
            .removesuffix("_sum") for n in exposed} <= families


def test_the_readme_names_every_metric() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    names = {name for name in _exposed_names() if not name.endswith(("_count", "_sum"))}
    for name in names:
        family = name.removesuffix("_bucket")  # a histogram is named by its family
        assert f"`{family}`" in readme, family
