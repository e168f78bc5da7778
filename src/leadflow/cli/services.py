"""What the commands that serve or talk to Kafka share: ``--metrics-port`` and the metrics
and health endpoint, Kafka settings and one-line Kafka errors. Nothing connects at import
time; prometheus and Kafka are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from leadflow.cli.common import Context, fail
from leadflow.config import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from leadflow.metrics import Health

F = TypeVar("F", bound=Callable[..., Any])


def metrics_port_option(command: F) -> F:
    """``--metrics-port`` / ``LEADFLOW_METRICS_PORT`` for a long-running command."""
    option = click.option(
        "--metrics-port", type=click.IntRange(0, 65535), default=None,
        envvar="LEADFLOW_METRICS_PORT", show_envvar=False,
        help="Serve /metrics (Prometheus), /healthz and /readyz on this port "
             "(LEADFLOW_METRICS_PORT; LEADFLOW_METRICS_HOST, default 0.0.0.0). Off by default.")
    return option(command)


def new_health() -> Health:
    from leadflow.metrics import Health, stall_seconds

    try:
        return Health(stall_seconds=stall_seconds())
    except ConfigError as exc:
        fail(str(exc))


@contextlib.contextmanager
def serving_metrics(obj: Context, port: int | None, registry: CollectorRegistry,
                    health: Health) -> Iterator[None]:
    """While the command runs: its metrics and health on ``port`` (nothing when None), with
    a readiness check that the database answers."""
    if port is None:
        yield
        return
    from leadflow.metrics import MetricsServer, database_check, metrics_host

    try:
        health.add_check("database", database_check(obj.settings.database_url))
        server = MetricsServer(registry, health, port, metrics_host()).start()
    except ConfigError as exc:
        fail(str(exc))
    try:
        yield
    finally:
        server.close()


def kafka_settings() -> Any:
    from leadflow.consumers.settings import KafkaSettings

    try:
        return KafkaSettings.from_env()
    except ConfigError as exc:
        fail(str(exc))


def kafka_call(what: str, build: Any) -> Any:
    from kafka.errors import KafkaError

    try:
        return build()
    except KafkaError as exc:
        fail(f"{what}: Kafka is not reachable or refused the request ({type(exc).__name__}: "
             f"{exc}); check LEADFLOW_KAFKA_BOOTSTRAP")
