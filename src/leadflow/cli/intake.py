"""Getting records in: the commands the people who feed leadflow run.

``generate`` makes a synthetic stream, ``ingest`` applies a file to the store embedded,
``publish`` / ``consume`` are the production path through Kafka, ``relay`` sends lifecycle
events on to CRMs, ``clock advance`` feeds in the passing of event time (decay, SLA,
dormancy), and ``demo`` runs the whole embedded path once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leadflow.cli.analysts import run_projector
from leadflow.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    Context,
    check_rejects_path,
    end_process,
    err_console,
    fail,
    log,
    open_for_writing,
    open_input,
    out_console,
    parse_time,
    redact,
)
from leadflow.cli.progress import progress_bar
from leadflow.cli.services import (
    kafka_call,
    kafka_settings,
    metrics_port_option,
    new_health,
    serving_metrics,
)
from leadflow.contract import RecordRejected
from leadflow.domain import STAGES
from leadflow.engine.app import LeadflowApp, LeadView
from leadflow.engine.ingest import IngestReport, RejectsWriter, ingest_lines, numbered_lines
from leadflow.logs import held_warnings
from leadflow.projections.schema import FUNNEL as FUNNEL_STAGES
from leadflow.runtime import tune_gc

# ---------------------------------------------------------------- embedded path (files)


@click.command()
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
    out: IO[str] = sys.stdout if str(output) == "-" else open_for_writing(output)
    with out, progress_bar() as progress:
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


def run_ingest(obj: Context, source: str, rejects_path: Path, batch_size: int,
               check_future: bool, segment: bool = False,
               quiet: bool = False) -> IngestReport:
    """Apply a file to the store with a progress bar; ``quiet``: the caller reports the
    result (the rejects by reason included), so no summary is logged."""
    app = obj.app()
    tune_gc()  # after start-up: the heap built so far is frozen out of the collector's way
    stream = open_input(source)
    total = None if source == "-" else Path(source).stat().st_size
    now = datetime.now(UTC) if check_future else None
    with stream, open_for_writing(rejects_path, "the rejects file") as rejects, \
            progress_bar(records=True, log_summary=not quiet) as progress:
        task = progress.add_task(f"ingest {'stdin' if source == '-' else Path(source).name}",
                                 total=total, records=0)
        report = ingest_lines(
            app, numbered_lines(stream, obj.settings.max_record_bytes), batch_size=batch_size,
            now=now, max_future_skew=obj.settings.max_future_skew,
            rejects=RejectsWriter(rejects), max_bytes=obj.settings.max_record_bytes,
            on_batch=lambda lines, done: progress.update(task, completed=done, records=lines),
            segment=app.rules.segment if segment else None,
        )
    if report.rejected == 0:
        rejects_path.unlink(missing_ok=True)
    (log.debug if quiet else log.info)("ingest finished", source=source,
                                        **report.as_dict())
    return report


@click.command()
@click.argument("source", metavar="FILE|-")
@click.option("--rejects", "rejects_path", type=click.Path(path_type=Path), default=None,
              help="Where rejected lines go (default: FILE.rejects.jsonl, or rejects.jsonl).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None,
              help="Records per transaction (LEADFLOW_BATCH_SIZE, default 1000).")
@click.option("--allow-future/--reject-future", default=False,
              help="Accept records dated further ahead than LEADFLOW_MAX_FUTURE_SKEW_SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--format", "input_format", type=click.Choice(["leadflow", "segment"]),
              default="leadflow", show_default=True,
              help="leadflow: contract-v1 records; segment: Segment-spec messages (identify, "
                   "track, page) mapped by the rules' [segment] section.")
@click.pass_obj
def ingest(obj: Context, source: str, rejects_path: Path | None, batch_size: int | None,
           allow_future: bool, as_json: bool, input_format: str) -> None:
    """Validate and apply a JSONL file (or - for stdin) in batches.

    Bad lines are reported with their line number and reason, written to the rejects
    file, and the good lines still apply. Exit code 3 when anything was rejected. With
    --format segment, messages no rule maps are counted by event name (not rejected).
    """
    if rejects_path is None:
        rejects_path = Path("rejects.jsonl" if source == "-" else source + ".rejects.jsonl")
    check_rejects_path(source, rejects_path)
    report = run_ingest(obj, source, rejects_path, batch_size or obj.settings.batch_size,
                        check_future=not allow_future, segment=input_format == "segment")
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(f"{report.lines} lines: {report.applied} applied, {report.duplicates} "
                   f"duplicates ignored, {report.rejected} rejected"
                   + (f", {report.unmapped} unmapped" if input_format == "segment" else ""))
        if report.unmapped:
            events = ", ".join(f"{k!r}={v}" for k, v in report.unmapped_events.most_common(10))
            click.echo(f"unmapped events (no [segment] rule): {events}"
                       + (", ..." if len(report.unmapped_events) > 10 else ""))
        if report.rejected:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.reasons.items()))
            click.echo(f"rejected by reason: {reasons}; details in {rejects_path}")
    sys.exit(EXIT_REJECTED if report.rejected else EXIT_OK)


@click.command()
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
    # On a terminal nothing but progress bars is drawn until the result: the warnings met on
    # the way (a new audit key, ...) are shown with it. Piped, the log keeps every event.
    holding: contextlib.AbstractContextManager[list[Any]] = (
        held_warnings() if err_console().is_terminal else contextlib.nullcontext([]))
    with holding as notes:
        with tempfile.TemporaryDirectory(prefix="leadflow-demo-") as tmp:
            stream = Path(tmp) / "stream.jsonl"
            with stream.open("w", encoding="utf-8") as out:
                for line in generate_stream(leads=leads, days=days, seed=seed, start=start):
                    out.write(line + "\n")
            report = run_ingest(obj, str(stream), Path(tmp) / "rejects.jsonl",
                                obj.settings.batch_size, check_future=True, quiet=True)
        app = obj.app()
        end = report.max_occurred_at or start
        clock = app.advance_clock(end)
        reached: dict[str, int] | None = None
        projected = None
        if not url.startswith(("memory", "popo")):
            from leadflow.projections.queries import funnel as funnel_query

            db, projected = run_projector(obj, until_idle=True)
            try:
                reached = {row.stage: row.count for row in funnel_query(db).stages}
            finally:
                db.close()
    console = out_console()
    # A grid wraps long values inside their column, under their label: readable in 80 columns.
    facts = Table.grid(padding=(0, 1))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column()
    facts.add_row("records", f"{report.lines:,} for {leads:,} leads over {days} days into "
                  f"{escape(redact(url))}")
    facts.add_row("applied", f"{report.applied:,} ({report.duplicates:,} duplicates ignored)")
    facts.add_row("rejected", f"{report.rejected:,}" + "".join(
        f"{', ' if i else ': '}{k} {v:,}" for i, (k, v) in enumerate(sorted(
            report.reasons.items()))))
    facts.add_row("clock", f"advanced to {end.date()} (event time): {clock.woken:,} leads "
                  f"woken, {clock.events:,} events recorded")
    if projected is not None:
        facts.add_row("read models", f"up to date ({projected.events:,} events); try "
                      "`leadflow funnel --by source` or `leadflow report --html report.html`")
    for note in notes:
        details = ", ".join(f"{k}={v}" for k, v in note.items()
                            if k not in ("event", "timestamp", "level"))
        facts.add_row("note", escape(str(note.get("event", ""))
                                     + (f" ({details})" if details else "")))
    console.print("[bold]leadflow demo[/]")
    console.print(facts, highlight=False)
    _print_summary(console, app, end, reached)


def _reached_from_views(views: list[LeadView]) -> dict[str, int]:
    """Leads that reached each funnel stage, from the leads' transitions (the read models'
    rule: a lead counts for every stage up to the furthest it reached)."""
    order = {stage: i for i, stage in enumerate(FUNNEL_STAGES)}
    counts: Counter[str] = Counter()
    for v in views:
        furthest = max((order[t["to"]] for t in v.transitions if t.get("to") in order),
                       default=0)
        counts.update(FUNNEL_STAGES[:furthest + 1])
    return dict(counts)


def _print_summary(console: Console, app: LeadflowApp, at: datetime,
                   reached: dict[str, int] | None) -> None:
    """What ops people look at, readable in 80 columns: the funnel with its conversion, the
    top leads with the rules that put them there, and the owners' load."""
    from rich import box

    views: list[LeadView] = []
    for lead_id in app.lead_ids():
        if app.resolve(lead_id) == lead_id:
            views.append(app.lead(lead_id, at=at))
    if reached is None:
        reached = _reached_from_views(views)
    now: Counter[str] = Counter(v.stage_now for v in views)
    table = Table(title=f"Funnel: {len(views):,} live leads, event time to {at.date()}",
                  box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("stage", "reached", "from previous", "in stage now"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    previous: int | None = None
    for stage in FUNNEL_STAGES:
        count = reached.get(stage, 0)
        conversion = f"{100 * count / previous:.1f}%" if previous else ""
        table.add_row(stage, f"{count:,}", conversion, f"{now.get(stage, 0):,}",
                      end_section=stage == FUNNEL_STAGES[-1])
        previous = count
    for stage in STAGES:
        if stage not in FUNNEL_STAGES:
            table.add_row(f"{stage} (side exit)", "", "", f"{now.get(stage, 0):,}")
    table.add_row("dormant (flag)", "", "", f"{sum(v.dormant for v in views):,}")
    console.print(table)

    top = sorted(views, key=lambda v: -v.score)[:10]
    table = Table(title=f"Top leads by score at {at.date()}, and why", box=box.SIMPLE_HEAD,
                  title_justify="left")
    # Widths that add up to 78 columns with the padding: only the lead is cut (with an
    # ellipsis), never the stage, owner or score.
    table.add_column("lead", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("stage", no_wrap=True, min_width=12)
    table.add_column("owner", no_wrap=True, min_width=5)
    table.add_column("score", justify="right", no_wrap=True, min_width=5)
    table.add_column("why (points now)", no_wrap=True, overflow="ellipsis", min_width=20)
    for v in top:
        strongest = sorted((c for c in v.breakdown if c.value), key=lambda c: -c.value)[:3]
        why = "\n".join(f"{c.rule} {c.value:.1f}" for c in strongest)
        table.add_row((v.primary_key or "(forgotten)").removeprefix("email:"), v.stage_now,
                      v.owner or ("pool" if v.in_pool else "-"), f"{v.score:.1f}", why)
    console.print(table)

    load = app.rep_load()
    owned: Counter[str] = Counter(v.owner for v in views if v.owner)
    table = Table(title="Owners", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("rep", "open leads (load)", "leads owned", "customers"):
        table.add_column(col, justify="left" if col == "rep" else "right")
    customers: Counter[str] = Counter(v.owner for v in views
                                      if v.owner and v.stage_now == "customer")
    for rep in sorted(set(load) | set(owned)):
        table.add_row(rep, f"{load.get(rep, 0):,}", f"{owned.get(rep, 0):,}",
                      f"{customers.get(rep, 0):,}")
    table.add_row("pool (unassigned)", f"{sum(v.in_pool for v in views):,}", "-", "-")
    console.print(table)


# ---------------------------------------------------------------- event time


@click.group()
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
    with progress_bar() as progress:
        task = progress.add_task("advance clock", total=None, unit="days")
        result = app.advance_clock(to, progress=lambda day, n: progress.update(
            task, advance=1, description=f"advance clock {day}"))
    if result.position is not None and result.position > to:
        click.echo(f"clock already at {result.position.isoformat()}, later than "
                   f"{to.isoformat()}: nothing to record (event time does not go back)")
        return
    click.echo(f"clock at {to.isoformat()}: {result.woken} leads woken, "
               f"{result.events} events recorded")
    if result.unloadable:
        # Time moved on for every other lead; these need `leadflow verify` and a repair.
        click.echo(f"{len(result.unloadable)} leads skipped: their stored events cannot be "
                   f"loaded ({', '.join(str(i) for i in result.unloadable[:5])}"
                   f"{', ...' if len(result.unloadable) > 5 else ''}); see `leadflow verify`")


# ---------------------------------------------------------------- production path (Kafka)


@click.command()
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

    settings = kafka_settings()
    if rejects_path is None:
        rejects_path = Path("rejects.jsonl" if source == "-" else source + ".rejects.jsonl")
    check_rejects_path(source, rejects_path)
    stream = open_input(source)
    producer = kafka_call("producer", lambda: clients.publish_producer(settings))
    with stream, open_for_writing(rejects_path, "the rejects file") as rejects_file:
        rejects = RejectsWriter(rejects_file)

        def on_reject(line_no: int, exc: RecordRejected, raw: bytes) -> None:
            rejects.write(line_no, exc.reason, exc.detail, raw, exc.field)
            log.warning("line not published", line=line_no, reason=exc.reason,
                        field=exc.field)

        max_bytes = obj.settings.max_record_bytes
        report = kafka_call("publish", lambda: publish_lines(
            producer, settings.topic, numbered_lines(stream, max_bytes), on_reject=on_reject,
            now=datetime.now(UTC), max_future_skew=obj.settings.max_future_skew,
            max_bytes=max_bytes, free_mail=obj.rules().free_mail))
    producer.close()
    if report.rejected == 0:
        rejects_path.unlink(missing_ok=True)
    click.echo(f"{report.lines} lines: {report.sent} published to {settings.topic}, "
               f"{report.rejected} rejected")
    if report.rejected:
        click.echo(f"rejected lines are in {rejects_path}")
    sys.exit(EXIT_REJECTED if report.rejected else EXIT_OK)


@click.command()
@click.option("--until-idle", is_flag=True,
              help="Exit once every assigned partition is caught up.")
@metrics_port_option
@click.pass_obj
def consume(obj: Context, until_idle: bool, metrics_port: int | None) -> None:
    """Consume the touchpoints topic into the event store (exactly-once effect).

    Each poll's records of one partition are applied as one batch and committed with the
    partition offset in one transaction; bad records go to the dead-letter topic with the
    reason in their headers. SIGTERM/SIGINT finish the current batch and exit.
    """
    from leadflow.consumers import clients
    from leadflow.consumers.touchpoints import ConsumerStoppedError, TouchpointConsumer
    from leadflow.metrics import ConsumerMetrics, new_registry

    settings = kafka_settings()
    app = obj.app()
    tune_gc()
    consumer = kafka_call("consumer", lambda: clients.touchpoint_consumer(settings))
    producer = kafka_call("producer", lambda: clients.dead_letter_producer(settings))
    registry, health = new_registry(), new_health()
    runner = TouchpointConsumer(app, settings, consumer, producer,
                                max_future_skew=obj.settings.max_future_skew,
                                max_record_bytes=obj.settings.max_record_bytes,
                                metrics=ConsumerMetrics(registry), health=health)
    health.add_check("partitions_assigned", runner.has_partitions)
    runner.install_signal_handlers()
    try:
        with serving_metrics(obj, metrics_port, registry, health):
            stats = runner.run(until_idle=until_idle)
    except ConsumerStoppedError as exc:
        fail(str(exc))
    click.echo(f"consumed {stats.records} records in {stats.batches} batches: "
               f"{stats.applied} applied, {stats.duplicates} duplicates ignored, "
               f"{stats.dead_lettered} dead-lettered, {stats.retries} retries")
    end_process(app)  # the consumer closed its Kafka clients; skip the heap's teardown


@click.command()
@click.option("--until-idle", is_flag=True, help="Exit once every stored event is relayed.")
@metrics_port_option
@click.pass_obj
def relay(obj: Context, until_idle: bool, metrics_port: int | None) -> None:
    """Publish lifecycle events (MQL, owner assigned, recycled, ...) to the lifecycle topic.

    Each message carries a stable event id; a restarted relay does not re-send what the
    topic already holds.
    """
    from leadflow.consumers import clients
    from leadflow.consumers.relay import LifecycleRelay
    from leadflow.metrics import RelayMetrics, new_registry

    settings = kafka_settings()
    app = obj.app()
    producer = kafka_call("producer", lambda: clients.relay_producer(settings))
    registry, health = new_registry(), new_health()
    runner = LifecycleRelay(app, settings, producer,
                            lambda: clients.relay_tail_consumer(settings),
                            metrics=RelayMetrics(registry), health=health)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    with serving_metrics(obj, metrics_port, registry, health):
        stats = kafka_call("relay", lambda: runner.run(until_idle=until_idle))
    click.echo(f"relayed {stats.published} lifecycle events "
               f"({stats.skipped_already_published} already published), position "
               f"{stats.position}")
