"""``leadflow serve``: the HTTP intake (contract-v1 records and Segment batches).

Production mode (``LEADFLOW_KAFKA_BOOTSTRAP`` set, or ``--sink kafka``) produces each
accepted record to the touchpoints topic and answers once the broker acknowledged it;
embedded mode (``--sink store``, the default without Kafka) applies it to the store. The
ASGI stack (Starlette, uvicorn) is imported here, inside the command, so other commands
never pay for it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from leadflow.cli.common import Context, fail, log, redact
from leadflow.cli.services import kafka_call, kafka_settings

if TYPE_CHECKING:
    from leadflow.metrics import MetricsServer


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port to listen on.")
@click.option("--tokens-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File of intake tokens, one a line (besides LEADFLOW_INTAKE_TOKENS).")
@click.option("--no-auth", is_flag=True,
              help="Accept requests without a token (only behind something that checks).")
@click.option("--sink", type=click.Choice(["auto", "kafka", "store"]), default="auto",
              show_default=True,
              help="kafka: produce to the touchpoints topic; store: apply to the database; "
                   "auto: kafka when LEADFLOW_KAFKA_BOOTSTRAP is set.")
@click.option("--max-body-bytes", type=click.IntRange(1024, 256 << 20), default=4 << 20,
              show_default=True, help="Largest request body (after gzip).")
@click.option("--max-records", type=click.IntRange(1, 1_000_000), default=5000,
              show_default=True, help="Most records (or Segment messages) in one request.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="An origin (https://www.example.com) whose pages may post from a browser, "
                   "e.g. with analytics.js; repeat it, or * for any. None by default.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), envvar="LEADFLOW_METRICS_PORT",
              default=None, help="Serve /metrics (HTTP requests by route and status), "
                                 "/healthz and /readyz on this port, apart from the intake's.")
@click.pass_obj
def serve(obj: Context, host: str, port: int, tokens_file: Path | None, no_auth: bool,
          sink: str, max_body_bytes: int, max_records: int,
          cors_origins: tuple[str, ...], metrics_port: int | None) -> None:
    """Serve the HTTP intake: contract-v1 records and Segment batches.

    POST /v1/records takes contract-v1 records (a JSON object, an array, or NDJSON);
    POST /v1/batch takes the Segment HTTP API's batch (also /v1/identify, /v1/track,
    /v1/page). Each record is validated by the contract and answered by index. Requests need
    a token from LEADFLOW_INTAKE_TOKENS or --tokens-file (Bearer, or HTTP Basic with the
    token as user name, as Segment SDKs send a write key). GET /healthz and /readyz for
    orchestrators. SIGTERM/SIGINT finish the requests in flight and exit.
    """
    import uvicorn

    from leadflow.config import ConfigError
    from leadflow.intake.auth import Tokens, load_tokens
    from leadflow.intake.http import IntakeConfig, Limits, create_app
    from leadflow.intake.sinks import EngineSink, KafkaSink, Sink

    tokens: Tokens | None = None
    try:
        found = load_tokens(os.environ.get("LEADFLOW_INTAKE_TOKENS"), tokens_file)
    except ConfigError as exc:
        fail(str(exc))
    if no_auth:
        if found:
            fail("--no-auth with tokens configured: drop one of them")
        log.warning("intake authentication is OFF (--no-auth): anyone who reaches the port "
                    "can write records")
    elif not found:
        fail("no intake tokens: set LEADFLOW_INTAKE_TOKENS (comma-separated) or "
             "--tokens-file, or pass --no-auth explicitly")
    else:
        tokens = Tokens(found)

    rules = obj.rules()
    use_kafka = sink == "kafka" or (sink == "auto" and bool(os.environ.get(
        "LEADFLOW_KAFKA_BOOTSTRAP", "").strip()))
    target: Sink
    if use_kafka:
        from leadflow.consumers import clients
        from leadflow.intake.sinks import RECORD_OVERHEAD, topic_message_limit

        settings = kafka_settings()
        probe = kafka_call("admin", lambda: clients.intake_probe(settings))
        try:
            message_limit = kafka_call("topic config", lambda: topic_message_limit(
                probe, settings.topic))
        finally:
            probe.close()
        if message_limit is None:  # fail at start, not on the first request
            fail(f"topic {settings.topic} does not exist; run `leadflow kafka create-topics`")
        limit: int = message_limit
        # A batch of records never exceeds what the topic takes in one message.
        batch_bytes = min(16384, max(128, limit - RECORD_OVERHEAD))
        target = kafka_call("producer", lambda: KafkaSink(
            lambda: clients.intake_producer(settings, batch_bytes), settings.topic,
            max_message_bytes=limit, free_mail=rules.free_mail,
            admin=lambda: clients.intake_probe(settings)))
        where = f"kafka topic {settings.topic} at {settings.bootstrap}"
    else:
        app = obj.app()
        target = EngineSink(app)
        rules = app.rules  # the rules the engine scores with (published ones included)
        where = f"store {redact(obj.settings.database_url)}"

    metrics: MetricsServer | None = None
    observe = None
    if metrics_port is not None:
        # On a port of its own: the intake's port may face the internet, the metrics not.
        from leadflow.metrics import Health, HttpMetrics, MetricsServer, metrics_host, new_registry

        registry = new_registry()
        observe = HttpMetrics(registry).observe
        # No loop to stall (uvicorn answers or the process is gone): live while it runs;
        # ready when the sink takes records, as /readyz on the intake port says.
        health = Health(stall_seconds=float("inf"))
        health.add_check(target.mode, lambda: target.ready() is None)
        try:
            metrics = MetricsServer(registry, health, metrics_port, metrics_host()).start()
        except ConfigError as exc:
            target.close()
            fail(str(exc))
    config = IntakeConfig(
        sink=target, mapping=rules.segment, tokens=tokens,
        limits=Limits(max_body_bytes=max_body_bytes, max_records=max_records,
                      max_record_bytes=obj.settings.max_record_bytes),
        max_future_skew=obj.settings.max_future_skew, cors_origins=cors_origins,
        observe=observe)
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), host=host, port=port, log_config=None, access_log=False,
        lifespan="off", log_level="warning", timeout_graceful_shutdown=30))
    log.info("intake starting", host=host, port=port, sink=target.mode, target=where,
             auth="off" if tokens is None else f"{len(tokens)} tokens")
    stopping: list[str] = []
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, restores the handlers it
    # found and raises the signal again: these record it, so the sink is closed (the
    # producer flushed, the store closed) and the command exits 0 instead of being killed.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: stopping.append(
            signal.Signals(received).name))
    try:
        server.run()
    finally:
        if metrics is not None:
            metrics.close()
        target.close()
        log.info("intake stopped", signal=stopping[0] if stopping else None)
