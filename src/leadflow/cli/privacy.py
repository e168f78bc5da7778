"""Privacy commands: ``forget`` (erase a person) and ``privacy rotate-master-key``."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import click

from leadflow.cli.common import EXIT_ERROR, Context, fail, lookup


@click.command()
@click.argument("identity")
@click.option("--reason", required=True,
              help="Why (e.g. 'GDPR art. 17 request #1234'): recorded, so keep it free of "
                   "personal data.")
@click.option("--actor", default="cli", show_default=True,
              help="Who asked or ran it: recorded with the event.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def forget(obj: Context, identity: str, reason: str, actor: str, as_json: bool) -> None:
    """Erase the person known by IDENTITY (email:…, phone:…, external_id:…, or a lead id).

    Deletes the data keys of their lead, of every lead merged into it and of the anonymous
    interests it absorbed, and their identity rows, then records a Forgotten event (who,
    when, why). Their email, phone, name and title can never be read again; the lead stays
    in every count, funnel and score, `verify` still passes, and a new record with the same
    email starts a new lead. Run `leadflow project` to clear the analyst tables' copy.

    An anonymous visitor never linked to a person (anonymous_id:…) is forgotten the same
    way: their interest's data key and identity row are deleted.

    It cannot reach the Kafka topics, the dead-letter topic or rejects files (they hold
    records as sent) nor backups: see the README's Privacy section.

    Exit codes: 0 forgotten, 1 not found / already forgotten / cannot be shredded.
    """
    if not reason.strip():
        fail("--reason must say why (it is recorded)")
    app = obj.app()
    result = lookup(identity, lambda key: app.forget(key, reason.strip(), actor,
                                                      datetime.now(UTC)))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    merged = len(result.leads) - 1
    click.echo(f"lead {result.lead_id} forgotten"
               + (f" with {merged} lead(s) merged into it" if merged else "")
               + f": {result.data_keys} data key(s) and {result.identities} identity row(s) "
               "deleted; run `leadflow project` to clear the analyst tables")


@click.group()
def privacy() -> None:
    """Master key for personal data (see the README's Privacy section)."""


@click.command("rotate-master-key")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The master key file to put a new key on top of (default: "
                   "LEADFLOW_MASTER_KEY_FILE, or the embedded store's <db>.master-key).")
@click.pass_obj
def rotate_master_key(obj: Context, key_file: Path | None) -> None:
    """Put a new master key on top of the key file and re-wrap every data key with it.

    Older keys stay in the file until you remove them (nothing needs them once this
    succeeded). With LEADFLOW_MASTER_KEY set instead of a file: set it to NEW,OLD and run
    this to re-wrap, then set it to NEW.
    """
    import secrets

    from leadflow.store.master_keys import (
        MASTER_KEY_ENV,
        MASTER_KEY_FILE_ENV,
        MASTER_KEY_FILE_SUFFIX,
        rotate_master_key_file,
    )

    env_keys = os.environ.get(MASTER_KEY_ENV)
    path = key_file or (Path(os.environ[MASTER_KEY_FILE_ENV])
                        if os.environ.get(MASTER_KEY_FILE_ENV) else None)
    if path is None and not env_keys:
        db = obj.settings.database_url
        if db.startswith("sqlite:///"):
            path = Path(db.removeprefix("sqlite:///") + MASTER_KEY_FILE_SUFFIX)
    if path is not None:
        if not path.exists():
            fail(f"master key file {path} does not exist", EXIT_ERROR)
        rotate_master_key_file(path, secrets.token_hex(32))
        os.environ.pop(MASTER_KEY_ENV, None)
        os.environ[MASTER_KEY_FILE_ENV] = str(path)
    elif env_keys is None or "," not in env_keys:
        fail(f"set {MASTER_KEY_ENV}=NEW,OLD (or use a key file) to rotate", EXIT_ERROR)
    app = obj.app()
    count = app.vault.table.rewrap_all(app.vault.master)
    click.echo(f"{count} key(s) re-wrapped with master key {app.vault.master.current}"
               + (f"; the new key is on top of {path}" if path else ""))


privacy.add_command(rotate_master_key)
