"""``leadflow`` command line: the composition root. Clients are built here, in ``main()``.

Exit codes: 0 success; 1 a problem named in one line on stderr, never a traceback (bad
configuration, unreadable or unwritable file, unknown lead, a damaged store); 2 usage error
(click: also options that contradict each other); 3 the command ran but some input lines were
rejected; 4 ``verify`` found stored events that do not verify.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, NoReturn, TypeVar
from uuid import UUID

import click
import structlog
from eventsourcing.persistence import PersistenceError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from leadflow.config import ConfigError, Settings
from leadflow.contract import RecordRejected
from leadflow.contract.identity import (
    InvalidIdentityError,
    is_lead_id,
    parse_identity_argument,
)
from leadflow.domain import STAGES, AggregateUnloadableError, LeadflowError, UnknownLeadError
from leadflow.domain.ids import identity_key
from leadflow.domain.rules import Rules, RulesError, load_rules
from leadflow.engine.app import LeadflowApp, LeadView
from leadflow.engine.ingest import IngestReport, RejectsWriter, ingest_lines, numbered_lines
from leadflow.logs import configure_logging, per_record_summary
from leadflow.store.chain import LeadVerification, Problem

EXIT_OK, EXIT_ERROR, EXIT_REJECTED = 0, 1, 3

err_console = Console(stderr=True)
log = structlog.get_logger("leadflow.cli")

# Passwords of the configured database: never printed, whatever message carries them.
_secrets: set[str] = set()


def _scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """``error: <message>`` on one line (drivers' messages span several; the terminal's
    width does not wrap it), without the database password, and exit."""
    text = "; ".join(part.strip() for part in _scrub(message).splitlines() if part.strip())
    err_console.print("[bold red]error:[/] ", end="", highlight=False)
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


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
            fail(f"the database {_redact(url)} failed: {type(exc).__name__}: {exc}")


class Context:
    """Settings and lazily built clients, shared by sub-commands."""

    def __init__(self, settings: Settings, rules_path: str | None) -> None:
        self.settings = settings
        self.rules_path = rules_path or settings.rules_path
        self._app: LeadflowApp | None = None

    def rules(self) -> Rules:
        try:
            return load_rules(self.rules_path)
        except RulesError as exc:
            fail(str(exc))

    def app(self, published_rules: bool = True) -> LeadflowApp:
        """The application; ``published_rules=False`` skips reading the rules published with
        `rescore --apply` (``verify`` reads stored bytes only and must work on a store whose
        rule book is damaged)."""
        if self._app is None:
            try:
                env = self.settings.eventsourcing_env()
            except ConfigError as exc:
                fail(str(exc))
            try:
                self._app = LeadflowApp(env=env, rules=self.rules())
            except PersistenceError as exc:  # unreachable server, bad credentials, no database
                fail(f"cannot open the database {_redact(self.settings.database_url)}: "
                     f"{type(exc).__name__}: {exc}")
            if published_rules:
                self._use_published_rules(self._app)
        return self._app

    def _use_published_rules(self, app: LeadflowApp) -> None:
        """Rules published with `rescore --apply` win over the built-in defaults; an
        explicit rules file wins over both (with a warning when they differ)."""
        from leadflow.domain.rules import parse_rules

        try:
            published = app.published_rules()
            rules = None if published is None else parse_rules(
                published["text"], source=f"published {published['version']}")
        except PersistenceError:
            raise
        except Exception as exc:  # a damaged rule book: name it, offer the way around it
            if self.rules_path is None:
                fail(f"the rules published with `rescore --apply` cannot be loaded from the "
                     f"store ({type(exc).__name__}: {exc}); score with a rules file "
                     "(--rules or LEADFLOW_RULES) and run `leadflow verify`")
            log.warning("published rules cannot be loaded", error=f"{type(exc).__name__}: "
                        f"{exc}")
            return
        if rules is None:
            return
        if self.rules_path is None:
            app.rules = rules
        elif published is not None and published["version"] != app.rules.version:
            log.warning("explicit rules differ from the published version",
                        explicit=app.rules.version, published=published["version"])


def parse_time(text: str, name: str) -> datetime:
    """ISO 8601 with offset, a date (UTC midnight), or 'now' (wall clock, at this boundary)."""
    if text == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{name}: {text!r} is not a time; use ISO 8601 like 2026-03-01T12:00:00+00:00, "
             "a date like 2026-03-01, or 'now'")
    if value.tzinfo is None:
        if "T" in text or " " in text:
            fail(f"{name}: {text!r} has no UTC offset; add one, e.g. {text}+00:00")
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        fail(f"{name}: {text!r} is outside the times leadflow can represent (years 1 to 9999 "
             "in UTC)")


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
    _secrets.update(_passwords(settings.database_url))
    ctx.obj = Context(settings, rules_path)


def _passwords(url: str) -> set[str]:
    """What to scrub from messages: the URL's password, raw and percent-encoded, or when the
    URL cannot be read, everything that might be the password."""
    from urllib.parse import quote

    from leadflow.config import parse_postgres_url

    sep, rest = url.partition("://")[1:]
    userinfo = rest.rpartition("@")[0]
    if not (sep and ":" in userinfo):
        return set()
    try:
        password = parse_postgres_url(url).password or ""
    except ConfigError:
        password = userinfo.partition(":")[2]
    return {p for p in (password, quote(password, safe="")) if p}


def _open_input(source: str) -> BinaryIO:
    """The input as bytes: a bad byte costs its own line (malformed_encoding), not the file."""
    try:
        return sys.stdin.buffer if source == "-" else open(source, "rb")
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")


def _check_writable(path: Path, what: str = "") -> None:
    """Name an output path that cannot be written before any work is done for it."""
    named = f"{what} {path}" if what else str(path)
    if path.is_dir():
        fail(f"cannot write {named}: it is a directory")
    if not path.parent.is_dir():
        fail(f"cannot write {named}: the directory {path.parent} does not exist")


def _open_for_writing(path: Path, what: str = "") -> IO[str]:
    _check_writable(path, what)
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {f'{what} {path}' if what else path}: {exc.strerror or exc}")


def _check_rejects_path(source: str, rejects_path: Path) -> None:
    # Opening the rejects file truncates it: it must not be the input being read.
    if source != "-" and Path(source).exists() and rejects_path.exists() \
            and rejects_path.resolve() == Path(source).resolve():
        raise click.BadParameter(f"{rejects_path} is the input file; rejected lines would "
                                 "overwrite it", param_hint="--rejects")


class _RateColumn(ProgressColumn):
    """Items per second, in the task's unit (events, leads, days)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text("" if speed is None else f"{speed:,.0f} {unit}/s".replace(" /", "/"),
                    style="progress.data.speed")


class _RecordsColumn(ProgressColumn):
    """Records done and records per second (the bar itself follows the file's bytes)."""

    def render(self, task: Task) -> Text:
        records = int(task.fields.get("records", 0))
        elapsed = task.finished_time if task.finished else task.elapsed
        rate = f" ({records / elapsed:,.0f}/s)" if elapsed else ""
        return Text(f"{records:,} records{rate}", style="progress.data.speed")


@contextlib.contextmanager
def _progress(records: bool = False) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal (``records``: for ingest, a bar over
    the input's bytes with the count of records beside it).

    Log lines print above the bar; per-record warnings are counted while it is drawn and
    summarised once after it (see ``leadflow.logs``).
    """
    columns: tuple[ProgressColumn | str, ...] = (
        (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
         _RecordsColumn(), TimeElapsedColumn()) if records else
        (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
         _RateColumn(), TimeElapsedColumn()))
    # stdout is the command's output (JSON, JSONL with -o -): never redirected to the bar.
    progress = Progress(*columns, console=err_console, disable=not err_console.is_terminal,
                        redirect_stdout=False)
    if progress.disable:
        with progress:
            yield progress
        return
    with per_record_summary(), progress:
        yield progress


def run_ingest(obj: Context, source: str, rejects_path: Path, batch_size: int,
               check_future: bool) -> IngestReport:
    app = obj.app()
    stream = _open_input(source)
    total = None if source == "-" else Path(source).stat().st_size
    now = datetime.now(UTC) if check_future else None
    with stream, _open_for_writing(rejects_path, "the rejects file") as rejects, \
            _progress(records=True) as progress:
        task = progress.add_task(f"ingest {source}", total=total, records=0)
        report = ingest_lines(
            app, numbered_lines(stream, obj.settings.max_record_bytes), batch_size=batch_size,
            now=now, max_future_skew=obj.settings.max_future_skew,
            rejects=RejectsWriter(rejects), max_bytes=obj.settings.max_record_bytes,
            on_batch=lambda lines, done: progress.update(task, completed=done, records=lines),
        )
    if report.rejected == 0:
        rejects_path.unlink(missing_ok=True)
    log.info("ingest finished", source=source, **report.as_dict())
    return report


@cli.command()
@click.argument("source", metavar="FILE|-")
@click.option("--rejects", "rejects_path", type=click.Path(path_type=Path), default=None,
              help="Where rejected lines go (default: FILE.rejects.jsonl, or rejects.jsonl).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None,
              help="Records per transaction (LEADFLOW_BATCH_SIZE, default 1000).")
@click.option("--allow-future/--reject-future", default=False,
              help="Accept records dated further ahead than LEADFLOW_MAX_FUTURE_SKEW_SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def ingest(obj: Context, source: str, rejects_path: Path | None, batch_size: int | None,
           allow_future: bool, as_json: bool) -> None:
    """Validate and apply a JSONL file (or - for stdin) in batches.

    Bad lines are reported with their line number and reason, written to the rejects
    file, and the good lines still apply. Exit code 3 when anything was rejected.
    """
    if rejects_path is None:
        rejects_path = Path("rejects.jsonl" if source == "-" else source + ".rejects.jsonl")
    _check_rejects_path(source, rejects_path)
    report = run_ingest(obj, source, rejects_path, batch_size or obj.settings.batch_size,
                        check_future=not allow_future)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(f"{report.lines} lines: {report.applied} applied, {report.duplicates} "
                   f"duplicates ignored, {report.rejected} rejected")
        if report.rejected:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.reasons.items()))
            click.echo(f"rejected by reason: {reasons}; details in {rejects_path}")
    sys.exit(EXIT_REJECTED if report.rejected else EXIT_OK)


@cli.command()
@click.option("--leads", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--days", type=click.IntRange(1), default=90, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--start", default="2026-01-01", show_default=True,
              help="First day of the stream (event time).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="JSONL file to write (- for stdout).")
@click.pass_obj
def generate(obj: Context, leads: int, days: int, seed: int, start: str, output: Path) -> None:
    """Write a realistic synthetic stream, deterministic for a seed.

    Personas behave differently, companies have several people, sales dispositions follow
    engagement, and a small share of duplicates and bad records is mixed in on purpose.
    """
    from leadflow.generator import generate as generate_stream

    begin = parse_time(start, "--start")
    try:
        begin + timedelta(days=days + 1)
    except OverflowError:
        fail(f"--start {start} with --days {days} goes past the year 9999")
    count = 0
    out: IO[str] = sys.stdout if str(output) == "-" else _open_for_writing(output)
    with out, _progress() as progress:
        task = progress.add_task("generate", total=None, unit="records")
        for line in generate_stream(leads=leads, days=days, seed=seed, start=begin):
            out.write(line + "\n")
            count += 1
            if count % 10_000 == 0:
                progress.update(task, completed=count)
        progress.update(task, completed=count)
    log.info("generated", records=count, leads=leads, days=days, seed=seed, output=str(output))
    if str(output) != "-":
        click.echo(f"wrote {count} records for {leads} leads to {output}")


@cli.command()
@click.option("--leads", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--days", type=click.IntRange(1), default=90, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--fresh/--keep", default=True, show_default=True,
              help="Start from an empty SQLite store (only for sqlite:/// URLs).")
@click.pass_obj
def demo(obj: Context, leads: int, days: int, seed: int, fresh: bool) -> None:
    """Generate a stream, ingest it, advance the clock, and show what ops people look at."""
    from leadflow.generator import generate as generate_stream

    url = obj.settings.database_url
    if fresh and url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(url[len("sqlite:///"):] + suffix).unlink(missing_ok=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="leadflow-demo-") as tmp:
        stream = Path(tmp) / "stream.jsonl"
        with stream.open("w", encoding="utf-8") as out:
            for line in generate_stream(leads=leads, days=days, seed=seed, start=start):
                out.write(line + "\n")
        report = run_ingest(obj, str(stream), Path(tmp) / "rejects.jsonl",
                            obj.settings.batch_size, check_future=True)
    app = obj.app()
    end = report.max_occurred_at or start
    clock = app.advance_clock(end)
    projected = None
    if not url.startswith(("memory", "popo")):
        db, projected = run_projector(obj, until_idle=True)
        db.close()
    console = _out_console()
    console.print(f"[bold]leadflow demo[/] on {escape(_redact(url))}: {report.lines} records "
                  f"for {leads} leads over {days} days; {report.applied} applied, "
                  f"{report.duplicates} duplicates ignored, {report.rejected} rejected "
                  f"({', '.join(f'{k}={v}' for k, v in sorted(report.reasons.items()))})")
    console.print(f"clock advanced to {end.isoformat()}: {clock.woken} leads woken, "
                  f"{clock.events} events recorded")
    if projected is not None:
        console.print(f"analyst read models up to date: {projected.events} events projected "
                      "(try `leadflow funnel --by source` or `leadflow report --html "
                      "report.html`)")
    _print_summary(console, app, end)


def _out_console() -> Console:
    # Piped output has no terminal width; keep tables readable instead of 80 columns.
    probe = Console()
    return probe if probe.is_terminal else Console(width=150)


def _print_summary(console: Console, app: LeadflowApp, at: datetime) -> None:
    views: list[LeadView] = []
    for lead_id in app.lead_ids():
        if app.resolve(lead_id) == lead_id:
            views.append(app.lead(lead_id, at=at))
    stages: Counter[str] = Counter(v.stage_now for v in views)
    table = Table(title=f"Leads per stage ({len(views)} live leads)")
    table.add_column("stage")
    table.add_column("leads", justify="right")
    for stage in STAGES:
        table.add_row(stage, str(stages.get(stage, 0)))
    table.add_row("dormant (flag)", str(sum(v.dormant for v in views)))
    console.print(table)

    top = sorted(views, key=lambda v: -v.score)[:10]
    table = Table(title=f"Top leads by score at {at.date().isoformat()}")
    for col in ("lead", "stage", "owner", "fit", "engagement", "score", "top rules"):
        table.add_column(col, justify="right" if col in ("fit", "engagement", "score") else "left")
    for v in top:
        strongest = sorted((c for c in v.breakdown if c.value), key=lambda c: -c.value)[:3]
        rules = ", ".join(f"{c.rule} {c.value:.1f}" for c in strongest)
        table.add_row(v.primary_key, v.stage_now, v.owner or ("pool" if v.in_pool else "-"),
                      f"{v.fit:.1f}", f"{v.engagement:.1f}", f"{v.score:.1f}", rules)
    console.print(table)

    load = app.rep_load()
    owned: Counter[str] = Counter(v.owner for v in views if v.owner)
    table = Table(title="Owners")
    for col in ("rep", "open leads (load)", "leads owned", "customers"):
        table.add_column(col, justify="left" if col == "rep" else "right")
    customers: Counter[str] = Counter(v.owner for v in views
                                      if v.owner and v.stage_now == "customer")
    for rep in sorted(set(load) | set(owned)):
        table.add_row(rep, str(load.get(rep, 0)), str(owned.get(rep, 0)),
                      str(customers.get(rep, 0)))
    table.add_row("pool (unassigned)", str(sum(v.in_pool for v in views)), "-", "-")
    console.print(table)


@cli.group()
def lead() -> None:
    """Look at one lead."""


@lead.command("show")
@click.argument("identity")
@click.option("--at", "at_text", default=None, help="Event time (ISO 8601, date or 'now'). "
              "Default: now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def lead_show(obj: Context, identity: str, at_text: str | None, as_json: bool) -> None:
    """Stage, owner, fit, engagement and score of a lead at a time, with per-rule breakdown.

    IDENTITY is an email, a +E.164 phone, kind:value (external_id:CRM-1) or a lead id (the
    UUID printed as lead_id, or lead:UUID; a bare UUID that is no lead id is tried as an
    external id). history, as-of, explain, verify and unmerge take the same.
    """
    at = parse_time(at_text or "now", "--at")
    app = obj.app()
    view = _lookup(identity, lambda key: app.lead(key, at=at))
    if as_json:
        click.echo(json.dumps(view.to_json()))
        return
    console = _out_console()
    console.print(f"[bold]{view.primary_key}[/] lead {view.lead_id}")
    console.print(f"at {view.at.isoformat()}: stage [bold]{view.stage}[/] (now {view.stage_now}), "
                  f"owner {view.owner or ('pool' if view.in_pool else '-')}, "
                  f"score [bold]{view.score:.2f}[/] = fit {view.fit:.2f} + engagement "
                  f"{view.engagement:.2f}")
    table = Table()
    for col in ("rule", "kind", "count", "points", "value now"):
        table.add_column(col, justify="left" if col in ("rule", "kind") else "right")
    for c in view.breakdown:
        table.add_row(c.rule, c.kind, str(c.count), f"{c.points:g}", f"{c.value:.2f}")
    console.print(table)


@cli.group()
def clock() -> None:
    """Event-time clock: records time-driven transitions (decay, SLA, dormancy)."""


@clock.command("advance")
@click.option("--to", "to_text", default="now", show_default=True,
              help="Event time to advance to (ISO 8601, date or 'now').")
@click.pass_obj
def clock_advance(obj: Context, to_text: str) -> None:
    """Record every transition due up to --to, each at its exact computed event time."""
    to = parse_time(to_text, "--to")
    app = obj.app()
    with _progress() as progress:
        task = progress.add_task("advance clock", total=None, unit="days")
        result = app.advance_clock(to, progress=lambda day, n: progress.update(
            task, advance=1, description=f"advance clock {day}"))
    if result.position is not None and result.position > to:
        click.echo(f"clock already at {result.position.isoformat()}, later than "
                   f"{to.isoformat()}: nothing to record (event time does not go back)")
        return
    click.echo(f"clock at {to.isoformat()}: {result.woken} leads woken, "
               f"{result.events} events recorded")


@cli.group()
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
    click.echo(f"{file}: ok, version {loaded.version} ({loaded.label}); "
               f"{len(s.engagement)} engagement rules, {len(s.fit)} fit rules, MQL at "
               f"{s.mql_threshold:g}, half-life {s.half_life_days:g} days, "
               f"{len(loaded.routing.rules)} routing rules")


@rules.command("show-default")
def rules_show_default() -> None:
    """Print the built-in rules file, to copy and edit."""
    from leadflow.domain.rules import default_rules_text

    click.echo(default_rules_text(), nl=False)


@cli.group()
def schemas() -> None:
    """Published JSON Schemas (inbound record, rules file)."""


@schemas.command("export")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("schemas"))
def schemas_export(directory: Path) -> None:
    """Write the JSON Schemas generated from the models into DIRECTORY."""
    from leadflow.contract.schemas import write_schemas

    for path in write_schemas(directory):
        click.echo(f"wrote {path}")


# ---------------------------------------------------------------- auditors

EXIT_TAMPERED = 4


@cli.command()
@click.argument("identity", required=False)
@click.option("--expect-head", default=None,
              help="Chain head recorded earlier for IDENTITY: also detects removed newest events.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_obj
def verify(obj: Context, identity: str | None, expect_head: str | None, as_json: bool) -> None:
    """Check that no stored lead event was altered, deleted, reordered or inserted.

    Recomputes each lead's hash chain from the stored rows. Exit code 4 and a report naming
    the lead and the version when anything does not verify.
    """
    if expect_head and not identity:
        raise click.UsageError("--expect-head needs IDENTITY, the lead whose chain head it is")
    from leadflow.engine.auditor import stored_lead_ids

    app = obj.app(published_rules=False)
    unreadable: list[dict[str, Any]] = []
    if identity:
        lead_ids = [_lookup(identity, lambda key: _verify_target(app, key))]
    else:
        lead_ids, unreadable = stored_lead_ids(app)
    results = []
    with _progress() as progress:
        task = progress.add_task("verify", total=len(lead_ids), unit="leads")
        for lead_id in lead_ids:
            results.append(_verify_one(app, lead_id))
            progress.advance(task)
    problems = [p.as_dict() for r in results for p in r.problems] + unreadable
    if expect_head and results and results[0].head != expect_head:
        problems.append(Problem(results[0].lead_id, results[0].events,
                                f"chain head {results[0].head} is not the expected "
                                f"{expect_head}: newest events were removed or replaced"
                                ).as_dict())
    report = {
        "leads": len(results), "events": sum(r.events for r in results), "ok": not problems,
        "problems": problems,
        "heads": {str(r.lead_id): r.head for r in results} if identity else None,
    }
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"verified {report['leads']} leads, {report['events']} events: "
                   + ("ok" if not problems else f"{len(problems)} problems"))
        for p in problems:
            click.echo(f"  lead {p['lead_id'] or '?'} version {p['version']}: {p['problem']}")
        if identity and results:
            click.echo(f"chain head {results[0].head}")
    sys.exit(EXIT_TAMPERED if problems else EXIT_OK)


def _verify_target(app: LeadflowApp, key: str) -> UUID:
    """The lead to verify: a lead id names itself (a merged lead keeps its own chain), an
    identity its live lead; a lead whose events cannot be loaded is verified all the same
    (that is what verify is for)."""
    try:
        live = app.resolve(key)
    except AggregateUnloadableError as exc:
        if exc.kind.lower() != "lead":
            raise
        return UUID(key) if is_lead_id(key) else UUID(str(exc.aggregate_id))
    return UUID(key) if is_lead_id(key) else live


def _verify_one(app: LeadflowApp, lead_id: UUID) -> LeadVerification:
    """One lead's chain; stored rows that cannot even be read are a finding, never a crash
    (one unreadable lead must not hide what the others show)."""
    try:
        return app.verify(lead_id)
    except PersistenceError:
        raise  # the database, not the lead: named by the command group
    except Exception as exc:
        return LeadVerification(lead_id, 0, None, (Problem(
            lead_id, 0, f"stored events cannot be read: {type(exc).__name__}: {exc}"),))


T = TypeVar("T")


def _lookup(identity: str, find: Callable[[str], T]) -> T:
    """``find`` applied to what IDENTITY means; an unknown lead or a bad identity end the
    command with one line naming them.

    A bare UUID is tried as a lead id first and then as an external id (CRMs use UUIDs
    too); ``lead:<uuid>`` and ``external_id:<uuid>`` each mean only one of them.
    """
    try:
        key = parse_identity_argument(identity)
    except InvalidIdentityError as exc:
        fail(str(exc))
    keys = [key]
    text = identity.strip()
    if is_lead_id(key) and is_lead_id(text):
        keys.append(identity_key("external_id", text))
    unknown: list[str] = []
    for candidate in keys:
        try:
            return find(candidate)
        except UnknownLeadError as exc:
            unknown.append(str(exc))
        except LeadflowError as exc:
            fail(str(exc))
    fail(", and ".join(unknown))


def _resolve(app: LeadflowApp, identity: str) -> UUID:
    return _lookup(identity, app.resolve)


@contextlib.contextmanager
def _replaying(subject: str) -> Iterator[None]:
    """Auditor queries replay stored events themselves: events that do not replay are named
    (a damaged store) with one line instead of a traceback (kept at debug level)."""
    try:
        yield
    except (LeadflowError, PersistenceError, click.ClickException, click.exceptions.Exit):
        raise
    except Exception as exc:
        log.debug("replay failed", exc_info=True)
        fail(f"the stored events of {subject} cannot be replayed ({type(exc).__name__}: "
             f"{exc}): the store is damaged or was changed outside leadflow; run "
             "`leadflow verify`")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


@cli.command()
@click.argument("identity")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def history(obj: Context, identity: str, as_json: bool) -> None:
    """Every stored event of a lead (and of leads merged into it), in recorded order.

    Event time and record time, type, actor, reason, score before -> after with the points
    of each rule and the rules version, stage and owner changes.
    """
    from leadflow.engine.auditor import Auditor

    app = obj.app()
    lead_id = _resolve(app, identity)
    with _replaying(f"lead {lead_id} or of a lead merged into it"):
        entries = Auditor(app).history(lead_id)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries]))
        return
    table = Table(title=f"History of {identity}")
    for col in ("recorded", "event time", "lead:v", "type", "actor", "score", "points",
                "stage", "owner", "reason"):
        table.add_column(col)
    for e in entries:
        points = ", ".join(f"{p['rule']} {p['points']:+g}" for p in e.points)
        table.add_row(
            e.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            e.occurred_at.isoformat() if e.occurred_at else "-",
            f"{str(e.lead_id)[:8]}:{e.version}", e.type, _fmt(e.actor),
            f"{_fmt(e.score_before)} -> {_fmt(e.score_after)}",
            points + (f" ({e.rules_version})" if e.rules_version and points else ""),
            f"{_fmt(e.stage[0])} -> {e.stage[1]}" if e.stage else "",
            f"{_fmt(e.owner[0])} -> {_fmt(e.owner[1])}" if e.owner else "",
            _fmt(e.reason))
    _out_console().print(table)


@cli.command("as-of")
@click.argument("identity")
@click.argument("time_text", metavar="TIME")
@click.option("--known-at", "known_text", default="now", show_default=True,
              help="Record time: only events recorded by then count.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def as_of(obj: Context, identity: str, time_text: str, known_text: str, as_json: bool) -> None:
    """Stage, owner and score at event time TIME, as known at record time --known-at.

    Late-arriving records change the answer only from the moment they arrived.
    """
    from leadflow.engine.auditor import Auditor

    at = parse_time(time_text, "TIME")
    known_at = parse_time(known_text, "--known-at")
    auditor = Auditor(obj.app())
    with _replaying(repr(identity)):
        lead_id = _lookup(identity, lambda key: _lead_known_by(auditor, key, known_at))
        result = auditor.as_of(lead_id, at, known_at)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{identity} at {result['at']} (as known at {result['known_at']}): stage "
               f"{_fmt(result['stage'])}, owner {_fmt(result['owner'])}, score "
               f"{_fmt(result['score'])} (fit {_fmt(result['fit'])} + engagement "
               f"{_fmt(result['engagement'])})")


def _lead_known_by(auditor: Any, key: str, known_at: datetime) -> UUID:
    """The lead ``key`` meant as recorded by ``known_at``; a lead id names that lead (or the
    lead it had been merged into by then)."""
    from leadflow.domain import Lead

    if not is_lead_id(key):
        return UUID(str(auditor.lead_known_by(key, known_at)))
    lead_id = UUID(key)
    for _ in range(32):
        lead = auditor.as_known(lead_id, known_at)
        if not isinstance(lead, Lead):
            raise UnknownLeadError(f"no lead with id {lead_id} at {known_at.isoformat()}")
        if lead.merged_into is None:
            break
        lead_id = lead.merged_into
    return lead_id


@cli.command()
@click.argument("identity")
@click.option("--at", "at_text", default="now", show_default=True, help="Event time.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def explain(obj: Context, identity: str, at_text: str, as_json: bool) -> None:
    """Why the score is what it is: each record, rule, original points and decayed value."""
    from leadflow.engine.auditor import Auditor

    at = parse_time(at_text, "--at")
    app = obj.app()
    lead_id = _resolve(app, identity)
    with _replaying(f"lead {lead_id} or of a lead merged into it"):
        result = Auditor(app).explain(lead_id, at)
    if as_json:
        click.echo(json.dumps(result))
        return
    console = _out_console()
    console.print(f"{identity} at {result['at']}: score {result['score']:.2f} = fit "
                  f"{result['fit_total']:.2f} + engagement {result['engagement_total']:.2f} "
                  f"(half-life {result['half_life_days']:g} days)")
    fit_table = Table(title="Fit (no decay)")
    fit_table.add_column("rule")
    fit_table.add_column("points", justify="right")
    for row in result["fit"]:
        fit_table.add_row(row["rule"], f"{row['points']:g}")
    console.print(fit_table)
    table = Table(title="Engagement")
    for col in ("record", "event time", "rule", "points", "value now", "expires", "rules"):
        table.add_column(col, justify="right" if col in ("points", "value now") else "left")
    for row in result["engagement"]:
        table.add_row(row["event_id"], row["occurred_at"], row["rule"], f"{row['points']:g}",
                      f"{row['value']:.2f}", _fmt(row["expires_at"]), _fmt(row["rules_version"]))
    console.print(table)


@cli.command()
@click.option("--rules", "candidate", type=click.Path(), required=True,
              help="The rules file to backtest against the current rules.")
@click.option("--from", "start", default=None, help="Only leads created on/after this date.")
@click.option("--apply", "apply_rules", is_flag=True,
              help="Publish the new rules version for scoring from now on.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_obj
def rescore(obj: Context, candidate: str, start: str | None, apply_rules: bool,
            as_json: bool) -> None:
    """Backtest a rules file on the recorded history without writing anything.

    Per lead and in total: who would become MQL earlier, later or never; MQL counts under
    both rule sets; and, against the recorded outcomes, each rule set's precision and recall
    for predicting SQL and customers. --apply then publishes the new version (an event);
    history is never rewritten.
    """
    from leadflow.engine.backtest import run_backtest

    try:
        new_rules = load_rules(candidate)
    except RulesError as exc:
        fail(str(exc))
    app = obj.app()
    since = parse_time(start, "--from") if start else None
    with _progress() as progress:
        task = progress.add_task("rescore", total=None, unit="leads")
        result = run_backtest(app, new_rules, since=since, progress=lambda done, total:
                              progress.update(task, completed=done, total=total))
    unloadable = result["unloadable_leads"]
    if apply_rules:
        text = Path(candidate).read_text(encoding="utf-8")
        app.publish_rules(new_rules, text, datetime.now(UTC), "cli")
        result["applied"] = new_rules.version
    if as_json:
        click.echo(json.dumps(result))
        return
    changes = result["changes"]
    click.echo(f"backtest {result['current_version']} -> {result['new_version']} over "
               f"{result['leads']} leads: {changes['earlier']} MQL earlier, {changes['later']} "
               f"later, {changes['never']} never, {changes['newly']} newly MQL, "
               f"{changes['same']} unchanged")
    click.echo(f"MQLs: {result['mql_count']['current']} -> {result['mql_count']['new']}")
    if unloadable:
        click.echo(f"{len(unloadable)} leads left out: their stored events cannot be loaded "
                   "(run `leadflow verify`)")
    for outcome, q in result["quality"].items():
        click.echo(f"predicting {outcome}: precision {_fmt(q['current']['precision'])} -> "
                   f"{_fmt(q['new']['precision'])}, recall {_fmt(q['current']['recall'])} -> "
                   f"{_fmt(q['new']['recall'])}")
    for row in result["changed_leads"][:50]:
        click.echo(f"  {row['lead']}: {row['change']} ({_fmt(row['mql_at_current'])} -> "
                   f"{_fmt(row['mql_at_new'])})")
    if apply_rules:
        click.echo(f"published rules version {new_rules.version} for scoring from now on")


@cli.command()
@click.argument("identity")
@click.pass_obj
def unmerge(obj: Context, identity: str) -> None:
    """Undo the merge that brought IDENTITY's lead into another lead.

    Both leads' state is recomputed from their own events; run `leadflow project` (or
    `rebuild`) to refresh the read models.
    """
    app = obj.app()
    now = datetime.now(UTC)
    survivor, restored = _lookup(identity, lambda key: app.unmerge(
        _merged_identity(app, key), now, "cli"))
    click.echo(f"lead {restored} separated from lead {survivor}")


def _merged_identity(app: LeadflowApp, key: str) -> str:
    """unmerge takes an identity of the merged lead; a lead id stands for its first one."""
    from eventsourcing.application import AggregateNotFoundError

    from leadflow.domain import Lead

    if not is_lead_id(key):
        return key
    try:
        lead: Any = app.repository.get(UUID(key))
    except AggregateNotFoundError:
        raise UnknownLeadError(f"no lead with id {key}") from None
    if not isinstance(lead, Lead):
        raise UnknownLeadError(f"{key} is not a lead")
    return str(lead.primary_key)


# ---------------------------------------------------------------- analyst read models


def _projection_db(obj: Context) -> Any:
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
        fail(f"cannot open the database {_redact(url)}: {type(exc).__name__}: {exc}")


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
        fail(f"the database {_redact(obj.settings.database_url)} failed while projecting: "
             f"{type(exc).__name__}: {exc}")


def run_projector(obj: Context, until_idle: bool) -> Any:
    from leadflow.projections.projector import Projector

    db = _projection_db(obj)
    projector = Projector(obj.app(), db, page_size=obj.settings.projection_page_size)
    if not until_idle:
        signal.signal(signal.SIGTERM, projector.stop)
        signal.signal(signal.SIGINT, projector.stop)
    with _projecting(obj), _progress() as progress:
        task = progress.add_task("project", total=None, unit="events")
        stats = projector.run(until_idle=until_idle, progress=lambda pos, top: progress.update(
            task, completed=pos, total=top))
    return db, stats


@cli.command()
@click.option("--until-idle", is_flag=True, help="Exit once every stored event is projected.")
@click.pass_obj
def project(obj: Context, until_idle: bool) -> None:
    """Follow the event store and keep the analyst tables and views up to date.

    Each page of events and the tracking position commit in one transaction. PostgreSQL
    wakes the projector with LISTEN/NOTIFY; SQLite is polled.
    """
    db, stats = run_projector(obj, until_idle)
    db.close()
    click.echo(f"projected {stats.events} events in {stats.pages} pages; position "
               f"{stats.position}")


@cli.command()
@click.option("--projection", "name", default="all", show_default=True,
              help="all, or a table name (lead_state, stage_transitions, funnel_daily, "
                   "score_ledger, owner_load, account_state): the tables are rebuilt together "
                   "because they share one tracking position.")
@click.pass_obj
def rebuild(obj: Context, name: str) -> None:
    """Replay every event into fresh tables and swap them in at once.

    Readers keep seeing the old tables until the swap, which is one transaction.
    """
    from leadflow.projections.projector import Projector
    from leadflow.projections.schema import TABLES

    if name != "all" and name not in TABLES:
        raise click.BadParameter(f"{name!r} is unknown; use all or one of "
                                 f"{', '.join(TABLES)}", param_hint="--projection")
    db = _projection_db(obj)
    projector = Projector(obj.app(), db, page_size=obj.settings.projection_page_size)
    with _projecting(obj, rebuilding=True), _progress() as progress:
        task = progress.add_task("rebuild", total=None, unit="events")
        stats = projector.rebuild(progress=lambda pos, top: progress.update(
            task, completed=pos, total=top))
    db.close()
    click.echo(f"rebuilt {', '.join(TABLES)} from {stats.events} events; position "
               f"{stats.position}")


@cli.command()
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
    console = _out_console()
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


@cli.command()
@click.option("--html", "html_path", type=click.Path(path_type=Path), required=True,
              help="Where to write the self-contained HTML page.")
@click.pass_obj
def report(obj: Context, html_path: Path) -> None:
    """Write an HTML report: funnel, conversion and velocity charts, tables by source/owner."""
    from leadflow.projections.report import render_report

    _check_writable(html_path, "the report")  # before the projector's work, not after
    db, _ = run_projector(obj, until_idle=True)
    page = render_report(db)
    db.close()
    try:
        html_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write the report {html_path}: {exc.strerror or exc}")
    click.echo(f"wrote {html_path}")


# ---------------------------------------------------------------- production path (Kafka)


def _kafka_settings() -> Any:
    from leadflow.consumers.settings import KafkaSettings

    try:
        return KafkaSettings.from_env()
    except ConfigError as exc:
        fail(str(exc))


def _kafka_call(what: str, build: Any) -> Any:
    from kafka.errors import KafkaError

    try:
        return build()
    except KafkaError as exc:
        fail(f"{what}: Kafka is not reachable or refused the request ({type(exc).__name__}: "
             f"{exc}); check LEADFLOW_KAFKA_BOOTSTRAP")


@cli.command()
@click.option("--until-idle", is_flag=True,
              help="Exit once every assigned partition is caught up.")
@click.pass_obj
def consume(obj: Context, until_idle: bool) -> None:
    """Consume the touchpoints topic into the event store (exactly-once effect).

    Each poll's records of one partition are applied as one batch and committed with the
    partition offset in one transaction; bad records go to the dead-letter topic with the
    reason in their headers. SIGTERM/SIGINT finish the current batch and exit.
    """
    from leadflow.consumers import clients
    from leadflow.consumers.touchpoints import ConsumerStoppedError, TouchpointConsumer

    settings = _kafka_settings()
    app = obj.app()
    consumer = _kafka_call("consumer", lambda: clients.touchpoint_consumer(settings))
    producer = _kafka_call("producer", lambda: clients.dead_letter_producer(settings))
    runner = TouchpointConsumer(app, settings, consumer, producer,
                                max_future_skew=obj.settings.max_future_skew,
                                max_record_bytes=obj.settings.max_record_bytes)
    runner.install_signal_handlers()
    try:
        stats = runner.run(until_idle=until_idle)
    except ConsumerStoppedError as exc:
        fail(str(exc))
    click.echo(f"consumed {stats.records} records in {stats.batches} batches: "
               f"{stats.applied} applied, {stats.duplicates} duplicates ignored, "
               f"{stats.dead_lettered} dead-lettered, {stats.retries} retries")


@cli.command()
@click.argument("source", metavar="FILE|-")
@click.option("--rejects", "rejects_path", type=click.Path(path_type=Path), default=None,
              help="Where invalid lines go (default: FILE.rejects.jsonl, or rejects.jsonl).")
@click.pass_obj
def publish(obj: Context, source: str, rejects_path: Path | None) -> None:
    """Validate, key (by identity) and produce a JSONL file to the touchpoints topic.

    Invalid lines are reported with their line number and reason and not sent (exit 3).
    """
    from leadflow.consumers import clients
    from leadflow.consumers.publish import publish_lines

    settings = _kafka_settings()
    if rejects_path is None:
        rejects_path = Path("rejects.jsonl" if source == "-" else source + ".rejects.jsonl")
    _check_rejects_path(source, rejects_path)
    stream = _open_input(source)
    producer = _kafka_call("producer", lambda: clients.publish_producer(settings))
    with stream, _open_for_writing(rejects_path, "the rejects file") as rejects_file:
        rejects = RejectsWriter(rejects_file)

        def on_reject(line_no: int, exc: RecordRejected, raw: bytes) -> None:
            rejects.write(line_no, exc.reason, exc.detail, raw, exc.field)
            log.warning("line not published", line=line_no, reason=exc.reason,
                        field=exc.field)

        max_bytes = obj.settings.max_record_bytes
        report = _kafka_call("publish", lambda: publish_lines(
            producer, settings.topic, numbered_lines(stream, max_bytes), on_reject=on_reject,
            now=datetime.now(UTC), max_future_skew=obj.settings.max_future_skew,
            max_bytes=max_bytes))
    producer.close()
    if report.rejected == 0:
        rejects_path.unlink(missing_ok=True)
    click.echo(f"{report.lines} lines: {report.sent} published to {settings.topic}, "
               f"{report.rejected} rejected")
    if report.rejected:
        click.echo(f"rejected lines are in {rejects_path}")
    sys.exit(EXIT_REJECTED if report.rejected else EXIT_OK)


@cli.command()
@click.option("--until-idle", is_flag=True, help="Exit once every stored event is relayed.")
@click.pass_obj
def relay(obj: Context, until_idle: bool) -> None:
    """Publish lifecycle events (MQL, owner assigned, recycled, ...) to the lifecycle topic.

    Each message carries a stable event id; a restarted relay does not re-send what the
    topic already holds.
    """
    from leadflow.consumers import clients
    from leadflow.consumers.relay import LifecycleRelay

    settings = _kafka_settings()
    app = obj.app()
    producer = _kafka_call("producer", lambda: clients.relay_producer(settings))
    runner = LifecycleRelay(app, settings, producer,
                            lambda: clients.relay_tail_consumer(settings))
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    stats = _kafka_call("relay", lambda: runner.run(until_idle=until_idle))
    click.echo(f"relayed {stats.published} lifecycle events "
               f"({stats.skipped_already_published} already published), position "
               f"{stats.position}")


@cli.group()
def kafka() -> None:
    """Kafka topics used by leadflow."""


@kafka.command("create-topics")
@click.option("--partitions", type=click.IntRange(1), default=6, show_default=True)
@click.option("--replication-factor", type=click.IntRange(1), default=1, show_default=True)
def kafka_create_topics(partitions: int, replication_factor: int) -> None:
    """Create the touchpoints, dead-letter and lifecycle topics if they do not exist."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from leadflow.consumers import clients

    settings = _kafka_settings()
    admin = _kafka_call("admin", lambda: clients.admin_client(settings))
    existing = set(admin.list_topics())
    wanted = [settings.topic, settings.dlq_topic, settings.lifecycle_topic]
    missing = [t for t in wanted if t not in existing]
    if missing:
        # Created concurrently by another process: the goal is reached all the same.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(t, partitions, replication_factor) for t in missing])
    admin.close()
    for topic in wanted:
        click.echo(f"{topic}: {'created' if topic in missing else 'exists'}")


@cli.group()
def db() -> None:
    """Database administration."""


@db.command("init")
@click.pass_obj
def db_init(obj: Context) -> None:
    """Create the event store tables (idempotent)."""
    try:
        app = obj.app()
    except Exception as exc:  # any driver error: name it and exit non-zero
        fail(f"cannot initialise {_redact(obj.settings.database_url)}: {exc}")
    app.close()
    click.echo(f"database ready: {_redact(obj.settings.database_url)}")


@db.command("grant-analyst")
@click.argument("role")
@click.option("--password", default=None, help="Set (or change) the role's login password.")
@click.pass_obj
def db_grant_analyst(obj: Context, role: str, password: str | None) -> None:
    """PostgreSQL: a ROLE that can SELECT the analyst tables and views and nothing else.

    No access to the event store, no writes, no CREATE. Re-run safely; a rebuild keeps
    the grants.
    """
    from leadflow.projections.admin import grant_analyst
    from leadflow.projections.projector import Projector

    database = _projection_db(obj)
    if database.dialect != "postgres":
        fail("grant-analyst needs LEADFLOW_DATABASE_URL=postgresql://…; SQLite has no roles")
    Projector(obj.app(), database).setup()
    grant_analyst(database, role, password)
    database.close()
    click.echo(f"role {role} can read the analyst tables and views, and nothing else")


def _redact(url: str) -> str:
    from leadflow.config import redact_url

    return redact_url(url)


def main() -> Any:
    try:
        return cli(standalone_mode=True)
    except (RecordRejected, ConfigError) as exc:  # defensive: should be handled above
        fail(str(exc))
    except Exception:
        if not _secrets:
            raise
        # An error nobody named (a bug): its traceback helps, the password must not show.
        import traceback

        sys.stderr.write(_scrub(traceback.format_exc()))
        sys.exit(EXIT_ERROR)
