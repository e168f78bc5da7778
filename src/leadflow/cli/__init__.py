"""``leadflow`` command line: the click group ``cli`` and ``main()``, the console script.

Commands are grouped by who runs them, one module each (three for auditors):

- ``intake``: getting records in (ingest, generate, demo, publish, consume, relay, clock);
- ``analysts``: read models, funnel, report (project, rebuild, funnel, report);
- ``auditors``: one lead (lead show, history, as-of, explain, unmerge), with ``integrity``,
  the store's integrity (verify, audit), and ``rescore``, the rules backtest (rescore);
- ``dedupe``: duplicates a person decides on (dedupe suggest, dedupe reject, merge);
- ``privacy``: erasing a person (forget) and the master key (privacy rotate-master-key);
- ``admin``: setting up (db init, db grant-analyst, kafka create-topics, rules, schemas);
- ``common``: the context, one-line errors, times, files and output they share;
  ``progress``: progress bars; ``services``: the metrics endpoint and Kafka settings.

The commands parse arguments, call the engine (``leadflow.engine``; the rules backtest is
``leadflow.engine.backtest``) or the Kafka clients (``leadflow.consumers.clients``) and
print. Clients are built inside the commands that need them, never at import time.

Start-up is lazy: ``COMMANDS`` names the module of each command and its one-line help, and a
command's module is imported only when that command runs (or its own ``--help`` is asked).
``leadflow --help`` therefore imports click and nothing of the engine, eventsourcing, Kafka,
pydantic or rich; ``lead show`` imports what showing a lead needs and no Kafka, projections
or report code. A unit test keeps the table's help equal to each command's docstring.

Exit codes: 0 success; 1 a problem named in one line on stderr, never a traceback (bad
configuration, unreadable or unwritable file, unknown lead, a damaged store); 2 usage error
(click: also options that contradict each other); 3 the command ran but some input lines were
rejected; 4 ``verify`` found stored events that do not verify.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NamedTuple

import click

from leadflow.cli.common import EXIT_ERROR, SECRETS, Context, fail, passwords, redact, scrub
from leadflow.config import ConfigError, Settings


class LazyCommand(NamedTuple):
    """Where a command lives and its short help (shown by ``leadflow --help`` unimported)."""

    module: str
    attribute: str
    short_help: str


#: Every command, by name: its module, the attribute in it, and its one-line help (the first
#: sentence of the command's docstring; ``tests/unit/test_cli_lazy.py`` keeps them equal).
COMMANDS: dict[str, LazyCommand] = {
    # intake
    "ingest": LazyCommand("leadflow.cli.intake", "ingest",
                          "Validate and apply a JSONL file (or - for stdin) in batches."),
    "generate": LazyCommand("leadflow.cli.intake", "generate",
                            "Write a realistic synthetic stream, deterministic for a seed."),
    "demo": LazyCommand("leadflow.cli.intake", "demo",
                        "Generate a stream, ingest it, advance the clock, and show what ops "
                        "people look at."),
    "publish": LazyCommand("leadflow.cli.intake", "publish",
                           "Validate, key (by identity) and produce a JSONL file to the "
                           "touchpoints topic."),
    "consume": LazyCommand("leadflow.cli.intake", "consume",
                           "Consume the touchpoints topic into the event store (exactly-once "
                           "effect)."),
    "relay": LazyCommand("leadflow.cli.intake", "relay",
                         "Publish lifecycle events (MQL, owner assigned, recycled, ...) to the "
                         "lifecycle topic."),
    "clock": LazyCommand("leadflow.cli.intake", "clock",
                         "Event-time clock: records time-driven transitions (decay, SLA, "
                         "dormancy)."),
    "serve": LazyCommand("leadflow.cli.serve", "serve",
                         "Serve the HTTP intake: contract-v1 records and Segment batches."),
    # analysts
    "project": LazyCommand("leadflow.cli.analysts", "project",
                           "Follow the event store and keep the analyst tables and views up "
                           "to date."),
    "rebuild": LazyCommand("leadflow.cli.analysts", "rebuild",
                           "Replay every event into fresh tables and swap them in at once."),
    "funnel": LazyCommand("leadflow.cli.analysts", "funnel",
                          "Leads that reached each stage in the period, and stage-to-stage "
                          "conversion."),
    "report": LazyCommand("leadflow.cli.analysts", "report",
                          "Write an HTML report: funnel, conversion and velocity charts, tables "
                          "by source/owner."),
    # auditors
    "lead": LazyCommand("leadflow.cli.auditors", "lead", "Look at one lead."),
    "history": LazyCommand("leadflow.cli.auditors", "history",
                           "Every stored row of a lead (and of leads merged into it), in "
                           "recorded order."),
    "as-of": LazyCommand("leadflow.cli.auditors", "as_of",
                         "Stage, owner and score at event time TIME, as known at record time "
                         "--known-at."),
    "explain": LazyCommand("leadflow.cli.auditors", "explain",
                           "Why the score is what it is: each record, rule, original points and "
                           "decayed value."),
    "verify": LazyCommand("leadflow.cli.integrity", "verify",
                          "Check that no stored row was altered, deleted, reordered or "
                          "inserted."),
    "audit": LazyCommand("leadflow.cli.integrity", "audit",
                         "Audit keys and checkpoints that anchor the store's chains."),
    "rescore": LazyCommand("leadflow.cli.rescore", "rescore",
                           "Backtest a rules file on the recorded history without writing "
                           "anything."),
    "unmerge": LazyCommand("leadflow.cli.auditors", "unmerge",
                           "Undo the merge that brought IDENTITY's lead into another lead."),
    # duplicates a person decides on
    "dedupe": LazyCommand("leadflow.cli.dedupe", "dedupe",
                          "Duplicate suggestions: pairs of leads that are probably one "
                          "person."),
    "merge": LazyCommand("leadflow.cli.dedupe", "merge",
                         "Merge two leads on a person's decision (undo with `leadflow "
                         "unmerge`)."),
    # privacy
    "forget": LazyCommand("leadflow.cli.privacy", "forget",
                          "Erase the person known by IDENTITY (email:…, phone:…, "
                          "external_id:…, or a lead id)."),
    "privacy": LazyCommand("leadflow.cli.privacy", "privacy",
                           "Master key for personal data (see the README's Privacy section)."),
    # admin
    "db": LazyCommand("leadflow.cli.admin", "db", "Database administration."),
    "kafka": LazyCommand("leadflow.cli.admin", "kafka", "Kafka topics used by leadflow."),
    "rules": LazyCommand("leadflow.cli.admin", "rules",
                         "Rules files: check them before you use them."),
    "schemas": LazyCommand("leadflow.cli.admin", "schemas",
                           "Published JSON Schemas (inbound record, rules file)."),
}

# Errors a command names in one line, by (module, class). Looked up only in modules already
# imported: an exception cannot be an instance of a class nobody loaded, and importing the
# engine to check would cost every command the start-up this module saves.
_NAMED_ERRORS = (
    ("leadflow.domain.errors", "LeadflowError"),
    ("leadflow.contract.identity", "InvalidIdentityError"),
    ("leadflow.config", "ConfigError"),
    ("leadflow.contract.inbound", "RecordRejected"),
)
_DAMAGED_STORE_ERRORS = (("eventsourcing.domain", "OriginatorVersionError"),
                         ("eventsourcing.domain", "OriginatorIDError"))
_DATABASE_ERRORS = (("eventsourcing.persistence", "PersistenceError"),)


def _is_one_of(exc: BaseException, names: tuple[tuple[str, str], ...]) -> bool:
    for module_name, class_name in names:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _damaged_store(exc: Exception) -> str:
    """The message for stored events that cannot be turned back into an aggregate."""
    return (f"the event store holds events that cannot be loaded ({type(exc).__name__}: "
            f"{exc}); run `leadflow verify` to find the damaged lead")


class _Leadflow(click.Group):
    """The command group: loads commands from ``COMMANDS`` on first use; named errors that
    escape a command end it with one line (exit 1).

    Commands name their own errors where they know more; this is the net under them, so
    a damaged store, an unknown lead or a bad identity never ends in a traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            entry = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(entry.module), entry.attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, with the short help of commands not yet imported from ``COMMANDS``."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows: list[tuple[str, str]] = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                if loaded.hidden:
                    continue
                rows.append((name, loaded.get_short_help_str(limit)))
            else:
                # Shortened as click shortens a loaded command's help, without loading it.
                stand_in = click.Command(name, help=COMMANDS[name].short_help)
                rows.append((name, stand_in.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if _is_one_of(exc, _NAMED_ERRORS):
                fail(str(exc))
            if _is_one_of(exc, _DAMAGED_STORE_ERRORS):
                fail(_damaged_store(exc))
            if _is_one_of(exc, _DATABASE_ERRORS):  # the database went away mid-command
                url = ctx.obj.settings.database_url if isinstance(ctx.obj, Context) else ""
                fail(f"the database {redact(url)} failed: {type(exc).__name__}: {exc}")
            raise


@click.group(cls=_Leadflow, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database", "database_url", envvar="LEADFLOW_DATABASE_URL",
              help="sqlite:///PATH (default sqlite:///leadflow.db), memory: or postgresql://…")
@click.option("--rules", "rules_path", envvar="LEADFLOW_RULES", type=click.Path(),
              help="Rules file (TOML). Default: the built-in rules.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (LEADFLOW_LOG_LEVEL)")
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None,
              help="Log format on stderr (LEADFLOW_LOG_FORMAT); json when not a terminal.")
@click.version_option(package_name="leadflow")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, rules_path: str | None,
        log_level: str | None, log_format: str | None) -> None:
    """leadflow: event-sourced lead lifecycle engine (scoring, lifecycle, routing, identity)."""
    from leadflow.logs import configure_logging

    try:
        configure_logging(log_level, log_format)
        settings = Settings.from_env()
    except (ValueError, ConfigError) as exc:
        fail(str(exc))
    if database_url:
        settings = Settings(**{**settings.__dict__, "database_url": database_url})
    SECRETS.update(passwords(settings.database_url))
    ctx.obj = Context(settings, rules_path)


def main() -> Any:
    from leadflow.cli import common

    common.OWNS_PROCESS = True  # the console script: commands may end it (end_process)
    try:
        return cli(standalone_mode=True)
    except Exception as exc:
        if _is_one_of(exc, _NAMED_ERRORS):  # defensive: should be handled above
            fail(str(exc))
        if not SECRETS:
            raise
        # An error nobody named (a bug): its traceback helps, the password must not show.
        import traceback

        sys.stderr.write(scrub(traceback.format_exc()))
        sys.exit(EXIT_ERROR)
