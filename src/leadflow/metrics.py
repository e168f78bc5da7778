"""Prometheus metrics and health endpoints for leadflow's long-running commands.

``consume``, ``project`` and ``relay`` expose, on ``--metrics-port`` / ``LEADFLOW_METRICS_PORT``
(off by default; ``LEADFLOW_METRICS_HOST``, default ``0.0.0.0``):

- ``GET /metrics``: the process's metrics in Prometheus' text format;
- ``GET /healthz``: liveness, 200 while the command's loop keeps turning (503 once it has not
  for ``LEADFLOW_METRICS_STALL_SECONDS``, default 300: a hung process to restart);
- ``GET /readyz``: readiness, 200 when every check passes (the database answers ``SELECT 1``;
  for ``consume`` also: partitions are assigned), else 503; the body is JSON naming each check.

Each process keeps its metrics in its own ``CollectorRegistry`` (never prometheus_client's
global one), so tests and several roles in one process do not see each other's numbers.

API, for any command that wants metrics (``serve``'s HTTP requests: ``HttpMetrics``)::

    from leadflow.metrics import (Health, HttpMetrics, MetricsServer, database_check,
                                  new_registry)

    registry = new_registry()                     # process metrics included
    http = HttpMetrics(registry)                  # or ConsumerMetrics, ProjectorMetrics, ...
    health = Health()
    health.add_check("database", database_check(url))
    with MetricsServer(registry, health, port=9464):
        ...                                       # the loop calls health.beat() each turn
        http.observe("POST", "/v1/records", 200, seconds=0.004)

``render(registry)`` returns ``(body, content_type)`` for an application that serves
``/metrics`` from its own HTTP stack instead of ``MetricsServer``.

Metric names are in the README's Operations section; the Grafana dashboard is
``ops/grafana/leadflow.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from leadflow.config import ConfigError

log = structlog.get_logger(__name__)

# A container's health checks and Prometheus (another container) must reach it.
DEFAULT_HOST = "0.0.0.0"
DEFAULT_STALL_SECONDS = 300.0

#: Batch durations: a poll's batch of one partition takes milliseconds to seconds.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: HTTP request durations (``serve``).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def new_registry(process: bool = True) -> CollectorRegistry:
    """A registry of one's own; ``process``: with the process' CPU, memory and open files."""
    registry = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class ConsumerMetrics:
    """What ``consume`` counts: records by outcome, dead letters, batches, lag, conflicts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry(process=False)
        r = self.registry
        self.records = Counter(
            "leadflow_consumer_records", "Records consumed, by outcome (applied, duplicate, "
            "rejected).", ["outcome"], registry=r)
        self.rejected = Counter(
            "leadflow_consumer_rejected_records", "Records rejected, by reason code.",
            ["reason"], registry=r)
        self.dead_letters = Counter(
            "leadflow_consumer_dead_letters", "Dead letters produced (and flushed) to the DLQ "
            "topic, by reason code; a batch retried after publishing them sends them again.",
            ["reason"], registry=r)
        self.batch_seconds = Histogram(
            "leadflow_consumer_batch_duration_seconds", "Time from a partition's polled "
            "records to their committed transaction (retries included).",
            buckets=BATCH_BUCKETS, registry=r)
        self.lag = Gauge(
            "leadflow_consumer_lag_records", "Per partition: the log end offset minus the "
            "offset after the last tracked (applied) record.", ["topic", "partition"],
            registry=r)
        self.tracked_offset = Gauge(
            "leadflow_consumer_tracked_offset", "Per partition: the last offset committed with "
            "the events (tracking record).", ["topic", "partition"], registry=r)
        self.assigned = Gauge(
            "leadflow_consumer_assigned_partitions", "Partitions assigned to this consumer.",
            registry=r)
        self.conflicts = Counter(
            "leadflow_consumer_write_conflicts", "Batches whose commit met another writer's "
            "(IntegrityError), then applied in halves or retried.", registry=r)
        self.retries = Counter(
            "leadflow_consumer_batch_retries", "Batch retries, by cause (write_conflict, "
            "infrastructure: the database or the broker).", ["cause"], registry=r)
        for outcome in ("applied", "duplicate", "rejected"):
            self.records.labels(outcome)
        for cause in ("write_conflict", "infrastructure"):
            self.retries.labels(cause)

    def partition_lag(self, topic: str, partition: int, tracked: int | None,
                      log_end: int | None) -> None:
        """Record a partition's position; ``log_end`` None: not known yet (no fetch)."""
        labels = (topic, str(partition))
        if tracked is not None:
            self.tracked_offset.labels(*labels).set(tracked)
        if log_end is not None:
            applied_up_to = 0 if tracked is None else tracked + 1
            self.lag.labels(*labels).set(max(0, log_end - applied_up_to))

    def forget_partition(self, topic: str, partition: int) -> None:
        """A revoked partition's series go: another consumer reports it now."""
        for gauge in (self.lag, self.tracked_offset):
            with contextlib.suppress(KeyError):  # never reported: nothing to remove
                gauge.remove(topic, str(partition))


class FollowerMetrics:
    """What a follower of the event store counts (``project``, ``relay``): events done, its
    position, and how far behind the store it is."""

    def __init__(self, role: str, what: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry(process=False)
        r = self.registry
        self.done = Counter(f"leadflow_{role}_events", f"Stored events {what}.", registry=r)
        self.position = Gauge(f"leadflow_{role}_position",
                              "The last notification id done (tracking position).", registry=r)
        self.lag_events = Gauge(
            f"leadflow_{role}_lag_events", "Stored events (all topics) after the position; 0 "
            "once a read finds nothing left to do.", registry=r)
        self.lag_seconds = Gauge(
            f"leadflow_{role}_lag_seconds", "Seconds since it was last caught up; 0 while it "
            "is.", registry=r)
        self._caught_up_at = time.monotonic()

    def progress(self, position: int, newest: int, caught_up: bool) -> None:
        """After each page: its position, the store's newest notification id, and whether
        the read found nothing left."""
        self.position.set(position)
        now = time.monotonic()
        if caught_up:
            self._caught_up_at = now
            self.lag_events.set(0)
            self.lag_seconds.set(0)
        else:
            self.lag_events.set(max(0, newest - position))
            self.lag_seconds.set(now - self._caught_up_at)


class ProjectorMetrics(FollowerMetrics):
    """``project``: ``leadflow_projector_*``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("projector", "projected into the read models", registry)


class RelayMetrics(FollowerMetrics):
    """``relay``: ``leadflow_relay_*``, and the lifecycle messages it published."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("relay", "read by the relay", registry)
        self.published = Counter(
            "leadflow_relay_published_messages", "Lifecycle messages published (and "
            "acknowledged).", registry=self.registry)
        self.skipped = Counter(
            "leadflow_relay_skipped_messages", "Lifecycle messages not sent again: the topic "
            "already held them (a relay restarted between publishing and tracking).",
            registry=self.registry)


class HttpMetrics:
    """HTTP requests by method, route and status, and their durations (``serve``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry(process=False)
        self.requests = Counter(
            "leadflow_http_requests", "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"], registry=self.registry)
        self.seconds = Histogram(
            "leadflow_http_request_duration_seconds", "Time to answer an HTTP request, by "
            "route.", ["route"], buckets=HTTP_BUCKETS, registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request; ``route`` is the route's template, never the raw path (a
        client must not be able to create series)."""
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)


class Health:
    """Liveness (the loop keeps turning) and readiness (named checks) of one process."""

    def __init__(self, stall_seconds: float = DEFAULT_STALL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.clock = clock
        self._beat = clock()
        self._checks: dict[str, Callable[[], bool]] = {}

    def beat(self) -> None:
        """Called by the command's loop on every turn (thread-safe: one float written)."""
        self._beat = self.clock()

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def live(self) -> tuple[bool, dict[str, Any]]:
        idle = self.clock() - self._beat
        return idle <= self.stall_seconds, {"seconds_since_loop": round(idle, 3),
                                            "stall_seconds": self.stall_seconds}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, Any] = {}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception as exc:  # a check that fails says so; the endpoint answers
                results[name] = False
                log.debug("readiness check failed", check=name, error=str(exc))
        return all(results.values()), results


def database_check(url: str, timeout_seconds: float = 2.0,
                   cache_seconds: float = 2.0) -> Callable[[], bool]:
    """A readiness check: the database answers ``SELECT 1`` on a connection of its own (the
    application's are the loop's). The answer is kept ``cache_seconds``, so frequent probes
    cost the database little."""
    from leadflow.config import database_url_for_clients, sqlite_path

    scheme = url.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres"):
        client_url = database_url_for_clients(url)

        def probe() -> None:
            import psycopg

            with psycopg.connect(client_url, connect_timeout=max(1, round(timeout_seconds)),
                                 autocommit=True) as conn:
                conn.execute("SELECT 1")
    elif scheme == "sqlite":
        path = sqlite_path(url)

        def probe() -> None:
            conn = sqlite3.connect(path, timeout=timeout_seconds)
            try:
                conn.execute("SELECT 1")
            finally:
                conn.close()
    elif url in ("memory:", "memory://", "popo:"):
        return lambda: True
    else:
        raise ConfigError(f"no readiness check for the database URL scheme {scheme!r}")

    lock = threading.Lock()
    last: list[float | bool] = [float("-inf"), False]

    def check() -> bool:
        with lock:
            if time.monotonic() - float(last[0]) < cache_seconds:
                return bool(last[1])
            try:
                probe()
                answer = True
            except Exception as exc:
                log.warning("database not reachable", error_class=type(exc).__name__)
                answer = False
            last[0], last[1] = time.monotonic(), answer
            return answer

    return check


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = render(self.server.registry)
            self._answer(200, body, content_type)
        elif path in ("/healthz", "/livez"):
            ok, detail = self.server.health.live()
            self._json(200 if ok else 503, {"status": "ok" if ok else "stalled", **detail})
        elif path == "/readyz":
            ok, checks = self.server.health.ready()
            self._json(200 if ok else 503, {"status": "ready" if ok else "not ready",
                                            "checks": checks})
        else:
            self._json(404, {"error": f"not found: {path}; try /metrics, /healthz or /readyz"})

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._answer(status, json.dumps(data).encode() + b"\n", "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes every few seconds would drown the command's own log.
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 health: Health) -> None:
        self.registry = registry
        self.health = health
        super().__init__(address, _Handler)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a port, served from a daemon thread.

    A context manager: the socket is bound (``port`` 0: any free port, see ``.port``) on
    entering and closed on leaving.
    """

    def __init__(self, registry: CollectorRegistry, health: Health, port: int,
                 host: str = DEFAULT_HOST) -> None:
        self.registry = registry
        self.health = health
        self.host = host
        self.requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        try:
            self._server = _Server((self.host, self.requested_port), self.registry, self.health)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.requested_port}: "
                              f"{exc.strerror or exc} (--metrics-port, LEADFLOW_METRICS_PORT)"
                              ) from exc
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="leadflow-metrics", daemon=True)
        self._thread.start()
        log.info("metrics and health served", host=self.host, port=self.port,
                 endpoints=["/metrics", "/healthz", "/readyz"])
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def metrics_host(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("LEADFLOW_METRICS_HOST", DEFAULT_HOST)


def stall_seconds(environ: dict[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    text = env.get("LEADFLOW_METRICS_STALL_SECONDS", str(DEFAULT_STALL_SECONDS))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"LEADFLOW_METRICS_STALL_SECONDS={text!r} is not a number") from None
    if value <= 0:
        raise ConfigError("LEADFLOW_METRICS_STALL_SECONDS must be more than 0")
    return value

