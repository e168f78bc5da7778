"""For auditors: the store's integrity. ``verify`` recomputes the hash chains (exit 4 when
stored events do not verify); ``audit`` manages the audit keys and checkpoints that anchor
them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import click
from eventsourcing.persistence import PersistenceError

from leadflow.cli.common import EXIT_OK, Context, fail, lookup
from leadflow.cli.progress import progress_bar
from leadflow.contract.identity import is_lead_id
from leadflow.domain import UnknownLeadError
from leadflow.engine.app import LeadflowApp

if TYPE_CHECKING:
    # The chain module is imported by the commands that verify (start-up of lead show).
    from leadflow.store.chain import LeadVerification


EXIT_TAMPERED = 4


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
