"""For auditors: one lead now and in its history, the store's integrity, rules backtests.

``lead show``, ``history``, ``as-of`` and ``explain`` answer from the stored events;
``verify`` recomputes the hash chains; ``rescore`` backtests a rules file (the loop is
``leadflow.engine.backtest``) and can publish it; ``unmerge`` undoes a merge.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import click
from eventsourcing.persistence import PersistenceError

from leadflow.cli.common import (
    EXIT_OK,
    Context,
    fail,
    log,
    lookup,
    markup_escape,
    out_console,
    parse_time,
    plain_output,
    progress_bar,
    resolve,
    write_output,
)
from leadflow.contract.identity import is_lead_id
from leadflow.domain import LeadflowError, UnknownLeadError
from leadflow.domain.rules import Rules, RulesError, load_rules
from leadflow.engine.app import LeadflowApp

if TYPE_CHECKING:
    # The chain module is imported by the commands that verify (start-up of lead show).
    from leadflow.store.chain import LeadVerification

EXIT_TAMPERED = 4


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
@click.argument("identity", required=False)
@click.option("--expect-head", default=None,
              help="Chain head recorded earlier for IDENTITY: also detects removed newest events.")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(path_type=Path), default=None,
              help="A checkpoint file (`leadflow audit checkpoint`): also proves nothing at or "
                   "before it was deleted, truncated or inserted.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_obj
def verify(obj: Context, identity: str | None, expect_head: str | None,
           checkpoint_path: Path | None, as_json: bool) -> None:
    """Check that no stored row was altered, deleted, reordered or inserted.

    Recomputes every aggregate's keyed chain from the stored rows (the audit key comes from
    LEADFLOW_AUDIT_KEY or LEADFLOW_AUDIT_KEY_FILE) and checks the identity table against
    the events. Exit code 4 and a report naming the aggregate, the lead and the version when
    anything does not verify; exit 1 when the configured key is not the store's.
    """
    if expect_head and not identity:
        raise click.UsageError("--expect-head needs IDENTITY, the lead whose chain head it is")
    if checkpoint_path and identity:
        raise click.UsageError("--checkpoint covers the whole store: leave IDENTITY out")
    app = obj.app(published_rules=False)
    if identity:
        report = _verify_identity(app, identity, expect_head)
    else:
        report = _verify_store(app, checkpoint_path)
    problems = report["problems"]
    if as_json:
        click.echo(json.dumps(report))
    else:
        what = (f"verified {report['aggregates']} aggregates ({report['leads']} leads), "
                f"{report['events']} events")
        if not identity:
            what += f", {report['identities']} identities"
        click.echo(what + ": " + ("ok" if not problems else f"{len(problems)} problems"))
        for p in problems:
            click.echo(f"  {_subject(p)} version {p['version']}: {p['problem']}")
        if report.get("unkeyed_links"):
            click.echo(f"note: {report['unkeyed_links']} links were written before keyed chains "
                       "(plain SHA-256): anyone with write access could recompute them; a "
                       "checkpoint anchors them from now on")
        if report.get("unchained_rows"):
            click.echo(f"note: {report['unchained_rows']} rows of aggregates other than "
                       "leads were written before every aggregate was chained (before `db "
                       "migrate` to format 4): nothing links them; a checkpoint anchors them")
        if identity and report["heads"]:
            for head in report["heads"].values():
                click.echo(f"chain head {head}")
        elif not identity:
            click.echo(f"store position {report['position']}, digest {report['digest']}")
        if checkpoint_path and not problems:
            click.echo(f"the store holds what checkpoint {checkpoint_path} holds (position "
                       f"{report['checkpoint']['position']}), plus what came after")
    sys.exit(EXIT_TAMPERED if problems else EXIT_OK)


@click.group()
def audit() -> None:
    """Audit keys and checkpoints that anchor the store's chains."""


@audit.command("checkpoint")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The checkpoint file to write (JSON). Keep it outside the database host.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def audit_checkpoint(obj: Context, output: Path, as_json: bool) -> None:
    """Verify the store, then record its position and every chain head, keyed.

    `leadflow verify --checkpoint FILE` later proves the store still holds exactly this,
    plus what came after: a deleted lead, deleted newest rows or a truncated table are
    found. A store that does not verify gets no checkpoint (exit 4).
    """
    from leadflow.store import audit as store_audit

    app = obj.app(published_rules=False)
    report = _verify_store(app, None)
    if report["problems"]:
        for p in report["problems"]:
            click.echo(f"  {_subject(p)} version {p['version']}: {p['problem']}", err=True)
        click.echo(f"the store does not verify ({len(report['problems'])} problems): no "
                   "checkpoint written", err=True)
        sys.exit(EXIT_TAMPERED)
    heads = {oid: (h["aggregate"], h["version"], h["head"]) for oid, h in report["heads"].items()}
    summary = store_audit.StoreReport(report["position"], report["position"], heads=heads)
    data = store_audit.checkpoint(summary, app.keyring)
    try:
        store_audit.write_checkpoint(output, data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
    shown = {k: data[k] for k in ("position", "aggregates", "events", "digest", "taken_at")}
    if as_json:
        click.echo(json.dumps({"file": str(output), **shown}))
    else:
        click.echo(f"checkpoint {output}: position {shown['position']}, {shown['aggregates']} "
                   f"aggregates, {shown['events']} events, digest {shown['digest']}")


@audit.command("new-key")
def audit_new_key() -> None:
    """Print a new random audit key (64 hex digits) and its key id."""
    from leadflow.store.keys import key_id, new_key

    key = new_key()
    click.echo(key)
    click.echo(f"key id {key_id(key.encode())}", err=True)


@audit.command("rotate-key")
@click.option("--key-file", type=click.Path(path_type=Path), default=None,
              help="The key file (default: LEADFLOW_AUDIT_KEY_FILE, or the one beside the "
                   "SQLite store).")
@click.pass_obj
def audit_rotate_key(obj: Context, key_file: Path | None) -> None:
    """Put a new signing key on top of the key file; older keys stay to verify old links.

    New chain links are signed with the new key from the next command on. With
    LEADFLOW_AUDIT_KEY instead of a file, rotate by setting it to "NEW,OLD[,OLDER]".
    """
    import os

    from leadflow.config import sqlite_path
    from leadflow.store.keys import (
        KEY_FILE_ENV,
        default_key_file,
        key_id,
        new_key,
        read_key_file,
        write_key_file,
    )

    if key_file is None:
        configured = os.environ.get(KEY_FILE_ENV)
        if configured:
            key_file = Path(configured)
        elif obj.settings.database_url.startswith("sqlite:"):
            key_file = default_key_file(sqlite_path(obj.settings.database_url))
        else:
            raise click.UsageError(f"name the key file: --key-file or {KEY_FILE_ENV}")
    old = read_key_file(key_file) if key_file.exists() else []
    key = new_key()
    try:
        write_key_file(key_file, [key, *old])
    except OSError as exc:
        fail(f"cannot write {key_file}: {exc.strerror}")
    click.echo(f"{key_file}: new signing key {key_id(key.encode())}; "
               f"{len(old)} older key(s) kept for verifying")


def _subject(problem: dict[str, Any]) -> str:
    kind, oid, lead = problem.get("aggregate"), problem.get("aggregate_id"), problem["lead_id"]
    if kind == "Lead" or (kind is None and lead):
        return f"lead {lead or oid or '?'}"
    if kind == "Store":
        return "store"
    if kind == "Identity":
        return f"identity row (lead {lead})" if lead else "identity row"
    return f"{kind} {oid or '?'}"


def _wrong_key(app: LeadflowApp, found: set[str]) -> None:
    keyring = app.keyring
    fail(f"the audit key is not this store's: its links were made with key id(s) "
         f"{', '.join(sorted(found))}, and {keyring.source} holds "
         f"{', '.join(sorted(keyring.keys))}; configure the right key (LEADFLOW_AUDIT_KEY or "
         "LEADFLOW_AUDIT_KEY_FILE) — nothing was found altered")


def _verify_store(app: LeadflowApp, checkpoint_path: Path | None) -> dict[str, Any]:
    from leadflow.store import audit as store_audit

    data: dict[str, Any] | None = None
    if checkpoint_path is not None:
        try:
            data = store_audit.read_checkpoint(checkpoint_path, app.keyring)
        except store_audit.CheckpointError as exc:
            fail(str(exc))
    with progress_bar() as progress:
        task = progress.add_task("verify", total=app.recorder.max_notification_id() or 0,
                                 unit="rows")
        report = store_audit.verify_store(
            app.indexes, app.keyring, app.codec.plain if app.codec.protected else None,
            anchor=data["position"] if data else None,
            progress=lambda n: progress.advance(task, n), vault=app.vault)
    if report.wrong_key:
        _wrong_key(app, report.unknown_keys)
    problems = list(report.problems)
    if data is not None:
        problems += store_audit.compare_checkpoint(report, data)
    leads = sum(1 for kind, _, _ in report.heads.values() if kind == "Lead")
    return {
        "ok": not problems, "aggregates": report.aggregates, "leads": leads,
        "rows": report.rows, "events": report.events, "identities": report.identities,
        "position": report.position, "unkeyed_links": report.unkeyed,
        "unchained_rows": report.unchained,
        "key_ids": sorted(report.key_ids),
        "digest": store_audit.store_digest(app.keyring, report.anchor, report.heads),
        "checkpoint": {"position": data["position"], "digest": data["digest"]} if data else None,
        "heads": {oid: {"aggregate": kind, "version": version, "head": head}
                  for oid, (kind, version, head) in report.heads.items()},
        "problems": problems,
    }


def _verify_identity(app: LeadflowApp, identity: str, expect_head: str | None
                     ) -> dict[str, Any]:
    """One lead's chain, and that the identity row naming it is one its events name."""
    from leadflow.store.audit import identity_names
    from leadflow.store.chain import Problem

    key, lead_id = lookup(identity, lambda key: (key, _verify_target(app, key)))
    names: set[str] = set()

    def seen(event: Any, data: dict[str, Any]) -> None:
        names.update(identity_names("Lead", event.topic, data, app.vault, lead_id))

    result = _verify_one(app, lead_id, seen)
    if result.unknown_keys and result.key_ids == result.unknown_keys:
        _wrong_key(app, set(result.unknown_keys))
    problems = [p.as_dict() for p in result.problems]
    if not is_lead_id(key) and result.events and key not in names:
        problems.append(Problem(lead_id, 0, f"identity {key} points at lead {lead_id}, whose "
                                "events never name it: the identity row was edited",
                                "Identity", lead_id).as_dict())
    if expect_head and result.head != expect_head:
        problems.append(Problem(lead_id, result.version,
                                f"chain head {result.head} is not the expected "
                                f"{expect_head}: newest events were removed or replaced"
                                ).as_dict())
    return {"ok": not problems, "aggregates": 1, "leads": 1, "rows": result.events,
            "events": result.version, "unkeyed_links": result.unkeyed,
            "heads": {str(lead_id): result.head}, "problems": problems}


def _verify_target(app: LeadflowApp, key: str) -> UUID:
    """The lead to verify, read from the identity table without replaying anything (a
    damaged lead must be verified, not crash the lookup): a lead id names itself (a merged
    lead keeps its own chain), an identity the lead its row points at."""
    if is_lead_id(key):
        return UUID(key)
    hashed = app.vault.lookup(key)  # the table is keyed by keyed hashes
    found = app.indexes.select_identities([hashed]).get(hashed)
    if found is None:
        raise UnknownLeadError(f"no lead known by {key!r}")
    target, is_interest = found
    if is_interest:
        raise UnknownLeadError(f"{key!r} is anonymous interest, not yet linked to a person")
    return target


def _verify_one(app: LeadflowApp, lead_id: UUID,
                seen: Any = None) -> LeadVerification:
    """One lead's chain; stored rows that cannot even be read are a finding, never a crash
    (one unreadable lead must not hide what the others show)."""
    from leadflow.store import chain

    try:
        rows = app.recorder.select_events(lead_id)
        result = chain.verify_events(lead_id, rows, app.codec.plain if app.codec.protected
                                     else None, app.keyring, seen)
    except PersistenceError:
        raise  # the database, not the lead: named by the command group
    except Exception as exc:
        result = chain.LeadVerification(lead_id, 0, None, (chain.Problem(
            lead_id, 0, f"stored events cannot be read: {type(exc).__name__}: {exc}"),))
    return result


@click.command()
@click.option("--rules", "candidate", type=click.Path(), required=True,
              help="The rules file to backtest against the current rules.")
@click.option("--from", "start", default=None, help="Only leads created on/after this date.")
@click.option("--model", "model", default=None, metavar="ID",
              help="Backtest this named model of the rules file ([models.<id>]) instead of "
                   "the primary one; with --apply, backfill it even if unchanged.")
@click.option("--apply", "apply_rules", is_flag=True,
              help="Publish the new rules version for scoring from now on, and backfill the "
                   "named models it adds or changes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_obj
def rescore(obj: Context, candidate: str, start: str | None, model: str | None,
            apply_rules: bool, as_json: bool) -> None:
    """Backtest a rules file on the recorded history without writing anything.

    Per lead and in total: who would become MQL earlier, later or never; MQL counts under
    both rule sets; and, against the recorded outcomes, each rule set's precision and recall
    for predicting SQL and customers. --model ID does the same for a named model: when each
    lead first crosses its threshold, and its score, under the current and the new
    definition. --apply then publishes the new version (an event) and backfills each named
    model it adds or changes (a ModelBackfilled event on each lead it changes); history is
    never rewritten.
    """
    from leadflow.engine.backfill import backfill, changed_models
    from leadflow.engine.backtest import run_backtest

    try:
        new_rules = load_rules(candidate)
    except RulesError as exc:
        fail(str(exc))
    if model is not None:
        known_model(new_rules, model, "--model")
    app = obj.app()
    since = parse_time(start, "--from") if start else None
    with progress_bar() as progress:
        task = progress.add_task("rescore", total=None, unit="leads")
        result = run_backtest(app, new_rules, since=since, model=model,
                              progress=lambda done, total:
                              progress.update(task, completed=done, total=total))
    unloadable = result["unloadable_leads"]
    if apply_rules:
        text = Path(candidate).read_text(encoding="utf-8")
        models = changed_models(app.rules, new_rules)
        if model is not None and model not in models:
            models = (*models, model)
        app.publish_rules(new_rules, text, datetime.now(UTC), "cli")
        result["applied"] = new_rules.version
        with progress_bar() as progress:
            task = progress.add_task("backfill", total=None, unit="leads")
            filled = backfill(app, models, "cli", lambda done, total:
                              progress.update(task, completed=done, total=total))
        result["backfill"] = filled.to_json()
    if as_json:
        click.echo(json.dumps(result))
        return
    changes = result["changes"]
    moment, what = ("crossed", f"model {model} threshold") if model else ("mql", "MQL")
    click.echo(f"backtest {result['current_version']} -> {result['new_version']}"
               f"{f' (model {model})' if model else ''} over {result['leads']} leads: "
               f"{changes['earlier']} {what} earlier, {changes['later']} later, "
               f"{changes['never']} never, {changes['newly']} newly, {changes['same']} "
               "unchanged")
    counts = result[f"{moment}_count"]
    click.echo(f"{'crossing ' + what if model else 'MQLs'}: {counts['current']} -> "
               f"{counts['new']}")
    if model:
        click.echo(f"scores: {result['scores']['changed']} changed ({result['scores']['higher']}"
                   f" higher, {result['scores']['lower']} lower)")
    if unloadable:
        click.echo(f"{len(unloadable)} leads left out: their stored events cannot be loaded "
                   "(run `leadflow verify`)")
    for outcome, q in result["quality"].items():
        click.echo(f"predicting {outcome}: precision {_fmt(q['current']['precision'])} -> "
                   f"{_fmt(q['new']['precision'])}, recall {_fmt(q['current']['recall'])} -> "
                   f"{_fmt(q['new']['recall'])}")
    for row in result["changed_leads"][:50]:
        scores = (f", score {_fmt(row['score_current'])} -> {_fmt(row['score_new'])}"
                  if model else "")
        click.echo(f"  {row['lead']}: {row['change']} ({_fmt(row[f'{moment}_at_current'])} -> "
                   f"{_fmt(row[f'{moment}_at_new'])}{scores})")
    if apply_rules:
        click.echo(f"published rules version {new_rules.version} for scoring from now on")
        filled_json = result["backfill"]
        if filled_json["models"]:
            click.echo(f"backfilled {', '.join(filled_json['models'])} on "
                       f"{filled_json['leads']} of {filled_json['scanned']} leads")


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
