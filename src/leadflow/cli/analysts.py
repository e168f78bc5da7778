"""For analysts: the read models (tables and views in the event store's database), the
funnel and the HTML report.

``project`` keeps the read models up to date, ``rebuild`` replays every event into fresh
ones; ``funnel`` and ``report`` bring them up to date first. The projections package is
imported inside the commands (it is not needed to start the CLI).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import click
from eventsourcing.persistence import PersistenceError
from rich.table import Table

from leadflow.cli.common import Context, check_writable, fail, out_console, parse_time, redact
from leadflow.cli.progress import progress_bar
from leadflow.cli.services import metrics_port_option, new_health, serving_metrics
from leadflow.config import ConfigError
from leadflow.runtime import tune_gc


def projection_db(obj: Context) -> Any:
    import psycopg

    from leadflow.config import database_env, database_url_for_clients
    from leadflow.projections.db import ProjectionDB

    url = obj.settings.database_url
    try:
        database_env(url)  # the checks the event store's URL gets (a missing directory ...)
        return ProjectionDB(database_url_for_clients(url))
    except ConfigError as exc:
        fail(str(exc))
    except (sqlite3.Error, psycopg.Error) as exc:
        fail(f"cannot open the database {redact(url)}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _projecting(obj: Context, rebuilding: bool = False) -> Iterator[None]:
    """A projector that stops on an event it cannot take, or on the database, ends the
    command with one line saying what to do."""
    import psycopg

    from leadflow.projections import projector

    failed: tuple[type[BaseException], ...] = tuple(
        cls for cls in [getattr(projector, "ProjectionFailedError", None)]
        if isinstance(cls, type) and issubclass(cls, BaseException))
    try:
        yield
    except failed as exc:
        kept = ("the live tables are unchanged" if rebuilding else
                "they stay up to date until the event before it")
        fail(f"{exc}. The event store holds an event the read models cannot take; {kept}. "
             "Run `leadflow verify` to check the store, and report this message to the "
             "leadflow maintainers")
    except (PersistenceError, sqlite3.Error, psycopg.Error) as exc:
        fail(f"the database {redact(obj.settings.database_url)} failed while projecting: "
             f"{type(exc).__name__}: {exc}")


def run_projector(obj: Context, until_idle: bool, metrics_port: int | None = None) -> Any:
    from leadflow.metrics import ProjectorMetrics, new_registry
    from leadflow.projections.projector import Projector

    db = projection_db(obj)
    registry, health = new_registry(), new_health()
    projector = Projector(obj.app(), db, page_size=obj.settings.projection_page_size,
                          metrics=ProjectorMetrics(registry), health=health)
    tune_gc()
    if not until_idle:
        signal.signal(signal.SIGTERM, projector.stop)
        signal.signal(signal.SIGINT, projector.stop)
    with _projecting(obj), serving_metrics(obj, metrics_port, registry, health), \
            progress_bar() as progress:
        task = progress.add_task("project", total=None, unit="events")
        stats = projector.run(until_idle=until_idle, progress=lambda pos, top: progress.update(
            task, completed=pos, total=top))
    return db, stats


@click.command()
@click.option("--until-idle", is_flag=True, help="Exit once every stored event is projected.")
@metrics_port_option
@click.pass_obj
def project(obj: Context, until_idle: bool, metrics_port: int | None) -> None:
    """Follow the event store and keep the analyst tables and views up to date.

    Each page of events and the tracking position commit in one transaction. PostgreSQL
    wakes the projector with LISTEN/NOTIFY; SQLite is polled.
    """
    db, stats = run_projector(obj, until_idle, metrics_port)
    db.close()
    click.echo(f"projected {stats.events} events in {stats.pages} pages; position "
               f"{stats.position}")


@click.command()
@click.option("--projection", "name", default="all", show_default=True,
              help="all, or a table name (lead_state, lead_personal, stage_transitions, "
                   "funnel_daily, score_ledger, owner_load, account_state, "
                   "lead_model_state): the tables are "
                   "rebuilt together because they share one tracking position.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              envvar="LEADFLOW_REBUILD_WORKERS", show_envvar=True,
              help="Processes that replay the events, the leads split among them "
                   "(PostgreSQL on Linux). Default: one per core, with 50,000 events or "
                   "more each.")
@click.pass_obj
def rebuild(obj: Context, name: str, workers: int | None) -> None:
    """Replay every event into fresh tables and swap them in at once.

    Readers keep seeing the old tables until the swap, which is one transaction. On
    PostgreSQL the leads are split among processes (--workers), each replaying its leads'
    events in order; the result is the same rows as one process gives.
    """
    from leadflow.projections.projector import Projector, RebuildInterrupted
    from leadflow.projections.schema import TABLES

    if name != "all" and name not in TABLES:
        raise click.BadParameter(f"{name!r} is unknown; use all or one of "
                                 f"{', '.join(TABLES)}", param_hint="--projection")
    db = projection_db(obj)
    projector = Projector(obj.app(), db, page_size=obj.settings.projection_page_size)
    tune_gc()
    # Ctrl-C or a TERM stops the replay after its current page (and its other processes):
    # one line, the live tables untouched, no traceback.
    signal.signal(signal.SIGTERM, projector.stop)
    signal.signal(signal.SIGINT, projector.stop)
    try:
        with _projecting(obj, rebuilding=True), progress_bar() as progress:
            task = progress.add_task("rebuild", total=None, unit="events")
            stats = projector.rebuild(progress=lambda pos, top: progress.update(
                task, completed=pos, total=top), workers=workers)
    except RebuildInterrupted as exc:
        fail(str(exc))
    finally:
        db.close()
    click.echo(f"rebuilt {', '.join(TABLES)} from {stats.events} events; position "
               f"{stats.position}")


@click.command()
@click.option("--from", "start", default=None, help="First day (YYYY-MM-DD), event time.")
@click.option("--to", "end", default=None, help="Last day (YYYY-MM-DD), inclusive.")
@click.option("--by", type=click.Choice(["source", "campaign", "owner", "segment"]),
              default=None, help="Also break the funnel down by this dimension.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (group,stage,count,conversion).")
@click.pass_obj
def funnel(obj: Context, start: str | None, end: str | None, by: str | None, as_json: bool,
           as_csv: bool) -> None:
    """Leads that reached each stage in the period, and stage-to-stage conversion.

    A lead that moved on still counts for every stage it passed. The read models are
    brought up to date first.
    """
    from leadflow.projections import queries

    if as_json and as_csv:
        raise click.UsageError("--json and --csv: choose one")
    low = parse_time(start, "--from").date() if start else None
    high = parse_time(end, "--to").date() if end else None
    if low is not None and high is not None and low > high:
        raise click.UsageError(f"--from {low} is later than --to {high}: the period is empty")
    if high == date.max:
        high = None  # the last representable day: no upper bound (the query adds a day)
    db, _ = run_projector(obj, until_idle=True)
    result = queries.funnel(db, low, high, by)  # type: ignore[arg-type]
    db.close()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    groups = [("all", result.stages), *result.groups]
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["group", "stage", "count", "conversion_from_previous"])
        for group, stages in groups:
            for row in stages:
                writer.writerow([group, row.stage, row.count,
                                 "" if row.conversion_from_previous is None
                                 else row.conversion_from_previous])
        return
    console = out_console()
    table = Table(title=f"Funnel {low or 'start'} .. {high or 'end'}"
                  + (f" by {by}" if by else ""))
    table.add_column(by or "group")
    for stage in ("new", "mql", "sql", "opportunity", "customer"):
        table.add_column(stage, justify="right")
    for group, stages in groups:
        table.add_row(group, *[
            f"{r.count}" + ("" if r.conversion_from_previous is None
                            else f" ({100 * r.conversion_from_previous:.1f}%)")
            for r in stages])
    console.print(table)


@click.command()
@click.option("--html", "html_path", type=click.Path(path_type=Path), required=True,
              help="Where to write the self-contained HTML page.")
@click.pass_obj
def report(obj: Context, html_path: Path) -> None:
    """Write an HTML report: funnel, conversion and velocity charts, tables by source/owner."""
    from leadflow.projections.report import render_report

    check_writable(html_path, "the report")  # before the projector's work, not after
    db, _ = run_projector(obj, until_idle=True)
    page = render_report(db)
    db.close()
    try:
        html_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write the report {html_path}: {exc.strerror or exc}")
    click.echo(f"wrote {html_path}")
