"""Real Kafka and PostgreSQL for the integration tests, never mocks.

Resolution order: explicit URLs in the environment (``LEADFLOW_TEST_KAFKA_BOOTSTRAP`` and
``LEADFLOW_TEST_POSTGRES_URL``), then testcontainers when a Docker engine answers, then the
project's local launcher ``scripts/services`` (Kafka from Maven Central jars, PostgreSQL from
the Debian package). When none can start, the tests fail with what is missing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    postgres_url: str
    origin: str
    # Restart hooks for the resilience tests (only the local launcher offers them).
    restart_kafka: Callable[[], None] | None = None
    restart_postgres: Callable[[], None] | None = None
    stop_postgres: Callable[[], None] | None = None
    start_postgres: Callable[[], None] | None = None


class ServicesUnavailableError(RuntimeError):
    pass


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _parse_exports(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def _launcher(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "services"), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@contextmanager
def provide_services() -> Iterator[Services]:
    kafka = os.environ.get("LEADFLOW_TEST_KAFKA_BOOTSTRAP")
    postgres = os.environ.get("LEADFLOW_TEST_POSTGRES_URL")
    if kafka and postgres:
        yield Services(kafka, postgres, "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer().with_kraft() as k, PostgresContainer("postgres:16") as p:
            url = p.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
            yield Services(k.get_bootstrap_server(), url, "testcontainers")
        return
    started = _launcher("up")
    if started.returncode != 0:
        raise ServicesUnavailableError(
            "integration tests need Kafka and PostgreSQL: no LEADFLOW_TEST_KAFKA_BOOTSTRAP/"
            "LEADFLOW_TEST_POSTGRES_URL, no Docker engine, and scripts/services up failed:\n"
            + started.stderr[-4000:]
        )
    env = _parse_exports(started.stdout)
    try:
        yield Services(
            kafka_bootstrap=env["LEADFLOW_KAFKA_BOOTSTRAP"],
            postgres_url=env["LEADFLOW_TEST_POSTGRES_URL"],
            origin="scripts/services",
            restart_kafka=lambda: _check(_launcher("restart", "kafka")),
            restart_postgres=lambda: _check(_launcher("restart", "postgres")),
            stop_postgres=lambda: _check(_launcher("stop", "postgres")),
            start_postgres=lambda: _check(_launcher("start", "postgres")),
        )
    finally:
        if os.environ.get("LEADFLOW_KEEP_SERVICES") != "1":
            _launcher("down", timeout=120)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise ServicesUnavailableError(result.stderr[-4000:])
