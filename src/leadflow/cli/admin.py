"""Setting up and administering: the database, Kafka's topics, rules files, schemas.

``db init`` and ``kafka create-topics`` prepare a deployment; ``db grant-analyst`` gives
analysts read-only access to the read models; ``rules`` and ``schemas`` are about files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from leadflow.cli.analysts import projection_db
from leadflow.cli.common import Context, fail, redact
from leadflow.cli.progress import progress_bar
from leadflow.cli.services import kafka_call, kafka_settings
from leadflow.domain.rules import RulesError, load_rules


@click.group()
def db() -> None:
    """Database administration."""


@db.command("init")
@click.pass_obj
def db_init(obj: Context) -> None:
    """Create the event store tables (idempotent)."""
    try:
        app = obj.app()
    except Exception as exc:  # any driver error: name it and exit non-zero
        fail(f"cannot initialise {redact(obj.settings.database_url)}: {exc}")
    app.close()
    click.echo(f"database ready: {redact(obj.settings.database_url)}")


@db.command("migrate")
@click.pass_obj
def db_migrate(obj: Context) -> None:
    """Bring an event store written by an earlier leadflow to this format (idempotent).

    Every event is kept as it is. The timer index (each lead's next time-driven check, which
    `clock advance` reads) is built from the leads' state; run again, it is rebuilt.
    """
    app = obj.app(migrating=True)
    with progress_bar() as bar:
        task = bar.add_task("migrate", total=None, unit="leads")
        result = app.migrate(lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(f"store at format {result.version}: {result.leads} leads, {result.timers} with a "
               f"time-driven check ahead" + (f", {len(result.unloadable)} that cannot be loaded "
                                            "(see `leadflow verify`)" if result.unloadable else ""))


ANALYST_PASSWORD_ENV = "LEADFLOW_ANALYST_PASSWORD"


def _refuse_password_in_argv(ctx: click.Context, param: click.Parameter,
                             value: str | None) -> None:
    # Kept as a hidden option so the refusal names the alternatives instead of click's
    # "no such option"; the value itself is never echoed.
    if value is not None:
        raise click.UsageError(
            "--password is not accepted: a password in the arguments shows in `ps` and the "
            "shell's history. Type it at the prompt, pipe it with --password-stdin, or set "
            f"{ANALYST_PASSWORD_ENV}", ctx=ctx)


def _analyst_password(role: str, from_stdin: bool) -> str | None:
    """The password to set, or None to keep the role's: from stdin (``--password-stdin``),
    else ``LEADFLOW_ANALYST_PASSWORD``, else a hidden, confirmed prompt on a terminal."""
    import os
    import sys

    if from_stdin:
        text = sys.stdin.read()
        # One trailing line break is how `echo` and files end; the rest is the password.
        password = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        if not password:
            raise click.UsageError("--password-stdin: stdin held no password")
        return password
    from_env = os.environ.get(ANALYST_PASSWORD_ENV)
    if from_env is not None:
        if not from_env:
            raise click.UsageError(f"{ANALYST_PASSWORD_ENV} is set but empty")
        return from_env
    if sys.stdin.isatty():
        typed: str = click.prompt(f"Password for role {role} (empty: keep the current one)",
                                  hide_input=True, confirmation_prompt=True, default="",
                                  show_default=False, err=True)
        return typed or None
    return None


@db.command("grant-analyst")
@click.argument("role")
@click.option("--password-stdin", "password_stdin", is_flag=True,
              help="Read the role's login password from stdin (one line).")
@click.option("--with-personal-data", "with_personal", is_flag=True,
              help="Also SELECT on lead_personal (identities, job titles). Without it, a "
                   "grant made before is taken back.")
@click.option("--password", hidden=True, expose_value=False, callback=_refuse_password_in_argv,
              help="Refused: use the prompt, --password-stdin or LEADFLOW_ANALYST_PASSWORD.")
@click.pass_obj
def db_grant_analyst(obj: Context, role: str, password_stdin: bool,
                     with_personal: bool) -> None:
    """PostgreSQL: a ROLE that can SELECT the analyst tables and views and nothing else.

    The read models it sees are keyed by lead id and hold no personal data; with
    --with-personal-data it also reads lead_personal. No access to the event store, no
    writes, no CREATE, no temporary tables, no large objects to read (nor to create, when
    run by a superuser; stderr says what could not be revoked). Re-run safely; a rebuild
    keeps the grants.

    The login password (set or changed; left as it is when none is given) comes from
    --password-stdin, else LEADFLOW_ANALYST_PASSWORD, else a hidden prompt on a terminal;
    never from the arguments, which other users see in `ps`.
    """
    from leadflow.projections.admin import grant_analyst
    from leadflow.projections.projector import Projector

    database = projection_db(obj)
    if database.dialect != "postgres":
        fail("grant-analyst needs LEADFLOW_DATABASE_URL=postgresql://…; SQLite has no roles")
    password = _analyst_password(role, password_stdin)
    Projector(obj.app(), database).setup()
    result = grant_analyst(database, role, password, with_personal)
    database.close()
    what = ("the analyst tables and views, personal data included" if with_personal else
            "the analyst tables and views without personal data")
    password_note = ("password set" if result.password_set else
                     "password unchanged (none given)")
    click.echo(f"role {role} can read {what}, and nothing else; {password_note}")
    for note in result.notes:
        click.echo(f"warning: role {role}: {note}", err=True)


@click.group()
def kafka() -> None:
    """Kafka topics used by leadflow."""


#: Default retention of the input topics (touchpoints, Segment) and the dead letters: a week
#: to replay or inspect, no longer. The event store, not Kafka, is the system of record.
DEFAULT_RETENTION_HOURS = 168


@kafka.command("create-topics")
@click.option("--partitions", type=click.IntRange(1), default=6, show_default=True)
@click.option("--replication-factor", type=click.IntRange(1), default=1, show_default=True)
@click.option("--retention-hours", type=click.IntRange(0), default=DEFAULT_RETENTION_HOURS,
              show_default=True,
              help="How long the touchpoints, Segment and dead-letter topics keep records "
                   "(retention.ms), set on existing topics too; 0 leaves it as it is.")
def kafka_create_topics(partitions: int, replication_factor: int, retention_hours: int) -> None:
    """Create the touchpoints, dead-letter and lifecycle topics if they do not exist.

    Also the Segment topic when LEADFLOW_KAFKA_SEGMENT_TOPIC names one. The input topics and
    the dead letters hold people's emails and phones as sent, which erasing a person in the
    store cannot reach: they keep them --retention-hours, then the broker deletes them.
    Replays come from the event store, never from Kafka. The lifecycle topic (lead ids and
    stages, for CRMs) keeps the broker's retention.
    """
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from leadflow.consumers import clients

    settings = kafka_settings()
    admin = kafka_call("admin", lambda: clients.admin_client(settings))
    existing = set(admin.list_topics())
    transient = [settings.topic, settings.dlq_topic,
                 *([settings.segment_topic] if settings.segment_topic else [])]
    wanted = [*transient[:2], settings.lifecycle_topic, *transient[2:]]
    retention = ({"retention.ms": str(retention_hours * 3_600_000)} if retention_hours
                 else None)
    missing = [t for t in wanted if t not in existing]
    if missing:
        # Created concurrently by another process: the goal is reached all the same.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([
                NewTopic(t, partitions, replication_factor,
                         topic_configs=retention if t in transient else None)
                for t in missing])
    kept = [t for t in transient if t not in missing]
    if retention and kept:
        # Incremental (kafka-python uses IncrementalAlterConfigs where the broker has it):
        # the topics' other settings stay as they are.
        answer = kafka_call("admin", lambda: admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=retention) for t in kept]))
        refused = [f"{name}: {result}" for by_name in answer.values()
                   for name, result in by_name.items()
                   if getattr(result, "errno", 0) not in (0, None)]
        if refused:
            admin.close()
            fail(f"cannot set retention.ms on {'; '.join(refused)}")
    admin.close()
    for topic in wanted:
        kept_for = (f", records kept {retention_hours} h" if retention and topic in transient
                    else "")
        click.echo(f"{topic}: {'created' if topic in missing else 'exists'}{kept_for}")


@click.group()
def rules() -> None:
    """Rules files: check them before you use them."""


@rules.command("check")
@click.argument("file", type=click.Path())
def rules_check(file: str) -> None:
    """Validate a rules file; prints its version, or names the invalid field (exit 1)."""
    try:
        loaded = load_rules(file)
    except RulesError as exc:
        fail(str(exc))
    s = loaded.scoring
    primary = loaded.lifecycle.primary_model
    models = (f", named models {', '.join(loaded.models)}" if loaded.models else "")
    click.echo(f"{file}: ok, version {loaded.version} ({loaded.label}); primary model "
               f"{primary or '[scoring]'}: {len(s.engagement)} engagement rules, "
               f"{len(s.fit)} fit rules, MQL at {s.mql_threshold:g}, half-life "
               f"{s.half_life_days:g} days{models}; {len(loaded.routing.rules)} routing rules, "
               f"{len(loaded.segment.track)} Segment track and {len(loaded.segment.page)} page "
               "mappings")


@rules.command("show-default")
def rules_show_default() -> None:
    """Print the built-in rules file, to copy and edit."""
    from leadflow.domain.rules import default_rules_text

    click.echo(default_rules_text(), nl=False)


@click.group()
def schemas() -> None:
    """Published JSON Schemas (inbound record, rules file)."""


@schemas.command("export")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("schemas"))
def schemas_export(directory: Path) -> None:
    """Write the JSON Schemas generated from the models into DIRECTORY."""
    from leadflow.contract.schemas import write_schemas

    for path in write_schemas(directory):
        click.echo(f"wrote {path}")
