"""``leadflow`` command line: the click group ``cli`` and ``main()``, the console script.

Commands are grouped by who runs them, one module each:

- ``intake``: getting records in (ingest, generate, demo, publish, consume, relay, clock);
- ``analysts``: read models, funnel, report (project, rebuild, funnel, report);
- ``auditors``: one lead and the store's integrity (lead show, history, as-of, explain,
  verify, rescore, unmerge);
- ``admin``: setting up (db init, db grant-analyst, kafka create-topics, rules, schemas);
- ``common``: the context, one-line errors, times, files and progress bars they share.

The commands parse arguments, call the engine (``leadflow.engine``; the rules backtest is
``leadflow.engine.backtest``) or the Kafka clients (``leadflow.consumers.clients``) and
print. Clients are built inside the commands that need them, never at import time.

Exit codes: 0 success; 1 a problem named in one line on stderr, never a traceback (bad
configuration, unreadable or unwritable file, unknown lead, a damaged store); 2 usage error
(click: also options that contradict each other); 3 the command ran but some input lines were
rejected; 4 ``verify`` found stored events that do not verify.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from eventsourcing.persistence import PersistenceError

from leadflow.cli import admin, analysts, auditors, intake
from leadflow.cli.common import (
    EXIT_ERROR,
    SECRETS,
    Context,
    fail,
    passwords,
    redact,
    scrub,
)
from leadflow.config import ConfigError, Settings
from leadflow.contract import RecordRejected
from leadflow.contract.identity import InvalidIdentityError
from leadflow.domain import LeadflowError
from leadflow.logs import configure_logging


def _damaged_store(exc: Exception) -> str:
    """The message for stored events that cannot be turned back into an aggregate."""
    return (f"the event store holds events that cannot be loaded ({type(exc).__name__}: "
            f"{exc}); run `leadflow verify` to find the damaged lead")


class _Leadflow(click.Group):
    """The command group; named errors that escape a command end it with one line (exit 1).

    Commands name their own errors where they know more; this is the net under them, so
    a damaged store, an unknown lead or a bad identity never ends in a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from eventsourcing.domain import OriginatorIDError, OriginatorVersionError

        try:
            return super().invoke(ctx)
        except (LeadflowError, InvalidIdentityError, ConfigError, RecordRejected) as exc:
            fail(str(exc))
        except (OriginatorVersionError, OriginatorIDError) as exc:
            fail(_damaged_store(exc))
        except PersistenceError as exc:  # the database went away (or refused) mid-command
            url = ctx.obj.settings.database_url if isinstance(ctx.obj, Context) else ""
            fail(f"the database {redact(url)} failed: {type(exc).__name__}: {exc}")


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
    try:
        configure_logging(log_level, log_format)
        settings = Settings.from_env()
    except (ValueError, ConfigError) as exc:
        fail(str(exc))
    if database_url:
        settings = Settings(**{**settings.__dict__, "database_url": database_url})
    SECRETS.update(passwords(settings.database_url))
    ctx.obj = Context(settings, rules_path)


for command in (
    # intake
    intake.ingest, intake.generate, intake.demo, intake.publish, intake.consume,
    intake.relay, intake.clock,
    # analysts
    analysts.project, analysts.rebuild, analysts.funnel, analysts.report,
    # auditors
    auditors.lead, auditors.history, auditors.as_of, auditors.explain, auditors.verify,
    auditors.rescore, auditors.unmerge,
    # admin
    admin.db, admin.kafka, admin.rules, admin.schemas,
):
    cli.add_command(command)


def main() -> Any:
    try:
        return cli(standalone_mode=True)
    except (RecordRejected, ConfigError) as exc:  # defensive: should be handled above
        fail(str(exc))
    except Exception:
        if not SECRETS:
            raise
        # An error nobody named (a bug): its traceback helps, the password must not show.
        import traceback

        sys.stderr.write(scrub(traceback.format_exc()))
        sys.exit(EXIT_ERROR)
