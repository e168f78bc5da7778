"""For auditors: one lead now and in its history, and undoing a merge.

``lead show``, ``history``, ``as-of`` and ``explain`` answer from the stored events;
``unmerge`` undoes a merge. The store's integrity (``verify``, ``audit``) is in
``integrity``, the rules backtest (``rescore``) in ``rescore``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import click
from eventsourcing.persistence import PersistenceError

from leadflow.cli.common import (
    Context,
    fail,
    log,
    lookup,
    markup_escape,
    out_console,
    parse_time,
    plain_output,
    resolve,
    write_output,
)
from leadflow.contract.identity import is_lead_id
from leadflow.domain import LeadflowError, UnknownLeadError
from leadflow.domain.rules import Rules
from leadflow.engine.app import LeadflowApp


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


@click.group()
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
    view = lookup(identity, lambda key: app.lead(key, at=at))
    if as_json:
        click.echo(json.dumps(view.to_json()))
        return
    e = markup_escape
    lines = [f"[bold]{e(str(view.primary_key))}[/] lead {view.lead_id}",
             f"at {view.at.isoformat()}: stage [bold]{e(str(view.stage))}[/] (now "
             f"{e(view.stage_now)}), owner {e(view.owner or ('pool' if view.in_pool else '-'))}, "
             f"score [bold]{view.score:.2f}[/] = fit {view.fit:.2f} + engagement "
             f"{view.engagement:.2f}"]
    columns: list[tuple[str, Literal["left", "right"]]] = [
        (col, "left" if col in ("rule", "kind") else "right")
        for col in ("rule", "kind", "count", "points", "value now")]
    rows = [(c.rule, c.kind, str(c.count), f"{c.points:g}", f"{c.value:.2f}")
            for c in view.breakdown]
    # Piped, the text rich would print is written without rich (start-up, issue 15).
    plain = plain_output(lines, columns, rows)
    if plain is not None:
        write_output(plain)
        return
    from rich.table import Table

    console = out_console()
    for line in lines:
        console.print(line)
    table = Table()
    for col, justify in columns:
        table.add_column(col, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@click.command()
@click.argument("identity")
@click.option("--all", "all_events", is_flag=True,
              help="Also show plumbing events (scheduling hints) hidden by default.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def history(obj: Context, identity: str, all_events: bool, as_json: bool) -> None:
    """Every stored row of a lead (and of leads merged into it), in recorded order.

    Per row: record time and event time, the cause (the record as received: type,
    event_id, context, source/campaign, actor; or the clock, a merge, a person), score
    before -> after with the points of each rule and the rules version, stage and owner
    changes (the pool shown as pool), and the row's chain status.
    """
    from leadflow.engine.auditor import Auditor

    app = obj.app()
    lead_id = resolve(app, identity)
    with _replaying(f"lead {lead_id} or of a lead merged into it"):
        entries = Auditor(app).history(lead_id, all_events)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries]))
        return
    from rich.table import Table

    table = Table(title=f"History of {identity}")
    for col in ("recorded", "event time", "lead:v", "cause", "score", "points", "stage",
                "owner", "chain"):
        table.add_column(col)
    for e in entries:
        points = ", ".join(f"{p['rule']} {p['points']:+g}" for p in e.points)
        table.add_row(
            e.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            e.occurred_at.isoformat() if e.occurred_at else "-",
            f"{str(e.lead_id)[:8]}:{e.version}" + (f"-{e.last_version}"
                                                   if e.last_version != e.version else ""),
            _cause_text(e.cause, e.events),
            f"{_fmt(e.score_before)} -> {_fmt(e.score_after)}",
            points + (f" ({e.rules_version})" if e.rules_version and points else ""),
            f"{_fmt(e.stage[0])} -> {e.stage[1]}" if e.stage else "",
            f"{_fmt(e.owner[0])} -> {_fmt(e.owner[1])}" if e.owner else "",
            e.chain)
    out_console().print(table)


def _cause_text(cause: dict[str, Any], events: tuple[str, ...]) -> str:
    """One cell: what made the row, then the events it holds."""
    kind = cause.get("kind")
    if kind == "record":
        parts = [str(cause.get("type") or "record"), str(cause.get("event_id") or "")]
        context = cause.get("context") or {}
        parts += [f"{k}={v}" for k, v in context.items() if v is not None]
        if cause.get("actor"):
            parts.append(f"by {cause['actor']}")
        text = " ".join(p for p in parts if p)
    elif kind == "clock":
        text = "clock " + " ".join(str(cause[k]) for k in ("at", "actor", "event")
                                   if cause.get(k))
    elif kind == "merge":
        text = f"merge ({cause.get('event')} {cause.get('lead')})"
    elif kind == "surge":
        text = f"surge of {cause.get('by')}"
    elif kind == "person":
        text = " ".join(str(cause[k]) for k in ("command", "actor", "reason")
                        if cause.get(k))
        text = f"person: {text}"
    else:
        text = str(kind)
    return f"{text} [{', '.join(events)}]"


@click.command("as-of")
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
        lead_id = lookup(identity, lambda key: _lead_known_by(auditor, key, known_at))
        result = auditor.as_of(lead_id, at, known_at)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{identity} at {result['at']} (as known at {result['known_at']}): stage "
               f"{_fmt(result['stage'])}, owner {_fmt(result['owner'])}, score "
               f"{_fmt(result['score'])} (fit {_fmt(result['fit'])} + engagement "
               f"{_fmt(result['engagement'])})")
    if result.get("records"):
        click.echo(f"records used: {', '.join(result['records'])}")


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


@click.command()
@click.argument("identity")
@click.option("--at", "at_text", default="now", show_default=True, help="Event time.")
@click.option("--model", "model", default=None, metavar="ID",
              help="A named model ([models.<id>] of the rules) instead of the primary one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def explain(obj: Context, identity: str, at_text: str, model: str | None,
            as_json: bool) -> None:
    """Why the score is what it is: each record, rule, original points and decayed value.

    With --model ID, the same for a named model: the points it recorded (a backfill by
    `rescore --apply` included), its half-life and threshold.
    """
    from leadflow.engine.auditor import Auditor

    at = parse_time(at_text, "--at")
    app = obj.app()
    if model is not None:
        known_model(app.rules, model, "--model")
    lead_id = resolve(app, identity)
    with _replaying(f"lead {lead_id} or of a lead merged into it"):
        result = Auditor(app).explain(lead_id, at, model)
    if as_json:
        click.echo(json.dumps(result))
        return
    from rich.table import Table

    console = out_console()
    which = (f"model {markup_escape(model)} (threshold {result['threshold']:g}): "
             if model is not None else "")
    console.print(f"{markup_escape(identity)} at {result['at']}: {which}score "
                  f"{result['score']:.2f} = fit {result['fit_total']:.2f} + engagement "
                  f"{result['engagement_total']:.2f} (half-life {result['half_life_days']:g} "
                  "days)")
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


def known_model(rules: Rules, model: str, option: str) -> None:
    """Refuse a model id the rules do not define (exit 2, as other usage errors), naming
    the ones they do."""
    if model not in rules.models:
        known = ", ".join(rules.models) if rules.models else "none"
        raise click.BadParameter(f"unknown model {model!r}; the rules ({rules.version}) "
                                 f"define these named models: {known}", param_hint=option)

@click.command()
@click.argument("identity")
@click.pass_obj
def unmerge(obj: Context, identity: str) -> None:
    """Undo the merge that brought IDENTITY's lead into another lead.

    Both leads' state is recomputed from their own events; run `leadflow project` (or
    `rebuild`) to refresh the read models.
    """
    app = obj.app()
    now = datetime.now(UTC)
    survivor, restored = lookup(identity, lambda key: app.unmerge(
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
