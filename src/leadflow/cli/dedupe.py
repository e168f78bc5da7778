"""Duplicates a person decides on: ``dedupe suggest`` lists pairs of leads that are probably
one person (``leadflow.engine.dedupe``), ``dedupe reject`` records that a pair is two people,
``merge`` merges two leads (undone by ``unmerge``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from leadflow.cli.common import Context, fail, lookup, out_console
from leadflow.cli.progress import progress_bar


def _checked(text: str, option: str) -> str:
    text = text.strip()
    if not text:
        fail(f"{option} must not be empty (it is recorded)")
    return text


@click.group()
def dedupe() -> None:
    """Duplicate suggestions: pairs of leads that are probably one person."""


@dedupe.command("suggest")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Least similarity score (0 to 1) of a pair to list.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Most pairs to list, best first (0: all).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: suggestions, counts and timings.")
@click.pass_obj
def suggest(obj: Context, min_score: float, limit: int, as_json: bool) -> None:
    """Pairs of live leads that are probably one person, with a score and the reasons.

    Leads are compared only within blocks (same organisation and name token, same phone
    digits, same external id core), never all pairs. Namesakes at different organisations,
    forgotten leads and pairs rejected with `dedupe reject` are never listed. Confirm a pair
    with `leadflow merge LEAD_A LEAD_B --reason ... --actor ...`.
    """
    from leadflow.engine.dedupe import Stats, suggest_in_store

    app = obj.app()
    stats = Stats()
    with progress_bar() as progress:
        task = progress.add_task("reading leads", total=None)
        found = suggest_in_store(app, min_score, stats,
                                 progress=lambda n: progress.advance(task, n))
    shown = found[:limit] if limit else found
    if as_json:
        click.echo(json.dumps({"min_score": min_score, "total": len(found),
                               "suggestions": [s.to_json() for s in shown],
                               "stats": stats.to_json()}))
        return
    from rich.table import Table

    table = Table()
    for col in ("score", "lead A (kept)", "lead B", "reasons"):
        table.add_column(col, justify="right" if col == "score" else "left")
    for s in shown:
        table.add_row(f"{s.score:.2f}",
                      f"{s.a.lead_id}\n{s.a.primary_key or '-'} {s.a.display_name}",
                      f"{s.b.lead_id}\n{s.b.primary_key or '-'} {s.b.display_name}",
                      "\n".join(r.detail for r in s.reasons))
    console = out_console()
    console.print(table)
    console.print(f"{len(shown)} of {len(found)} pair(s) scoring >= {min_score:g} among "
                  f"{stats.leads} live leads ({stats.compared} pairs compared, "
                  f"{stats.rejected_pairs} rejected pair(s) left out)")


@dedupe.command("reject")
@click.argument("lead_a")
@click.argument("lead_b")
@click.option("--reason", required=True,
              help="Why they are two people: recorded readable, so name no person in it.")
@click.option("--actor", required=True, help="Who decided: recorded with the decision.")
@click.pass_obj
def reject(obj: Context, lead_a: str, lead_b: str, reason: str, actor: str) -> None:
    """Record that LEAD_A and LEAD_B are two people: the pair is not suggested again.

    LEAD_A and LEAD_B are lead ids or identities (as `lead show` takes). The decision is an
    event (DuplicatePair.Rejected: who, when, why) in the event store.
    """
    reason, actor = _checked(reason, "--reason"), _checked(actor, "--actor")
    app = obj.app()
    a = lookup(lead_a, app.resolve)
    b = lookup(lead_b, app.resolve)
    first, second = app.reject_duplicate(a, b, reason, actor, datetime.now(UTC))
    click.echo(f"leads {first} and {second} recorded as two people; not suggested again")


@click.command()
@click.argument("lead_a")
@click.argument("lead_b")
@click.option("--reason", required=True,
              help="Why they are one person: recorded readable, so name no person in it.")
@click.option("--actor", required=True, help="Who decided: recorded with the merge.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def merge(obj: Context, lead_a: str, lead_b: str, reason: str, actor: str,
          as_json: bool) -> None:
    """Merge two leads on a person's decision (undo with `leadflow unmerge`).

    LEAD_A and LEAD_B are lead ids or identities (as `lead show` takes). As an automatic
    merge: the older lead keeps its id and absorbs the newer one's identities, points and
    history; stage, owner and rep load follow, in one transaction. The stored rows name the
    command, actor and reason. `leadflow unmerge IDENTITY` (an identity of the merged lead)
    separates them again. Run `leadflow project` to refresh the read models.
    """
    reason, actor = _checked(reason, "--reason"), _checked(actor, "--actor")
    app = obj.app()
    a = lookup(lead_a, app.resolve)
    b = lookup(lead_b, app.resolve)
    survivor, merged = app.merge(a, b, reason, actor, datetime.now(UTC))
    if as_json:
        click.echo(json.dumps({"survivor": str(survivor), "merged": str(merged)}))
        return
    click.echo(f"lead {merged} merged into lead {survivor}")


@dedupe.command("decisions")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def decisions(obj: Context, as_json: bool) -> None:
    """What people decided about pairs of leads: rejections and confirmed merges.

    One entry per pair: the standing rejection (who, when, why) and the last merge a
    person confirmed. Each decision is an event of the pair (DuplicatePair) in the store.
    """
    app = obj.app()
    found = app.duplicate_decisions()

    def when(decision: dict[str, Any] | None) -> dict[str, Any] | None:
        if decision is None:
            return None
        return {k: (v.isoformat() if isinstance(v, datetime) else str(v) if k in (
            "survivor", "merged") else v) for k, v in decision.items()}

    rows: list[dict[str, Any]] = [
        {"lead_a": str(d["lead_a"]), "lead_b": str(d["lead_b"]),
         "rejected": when(d["rejected"]), "confirmed": when(d["confirmed"])}
        for d in found]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        for kind in ("rejected", "confirmed"):
            decision = row[kind]
            if decision is not None:
                click.echo(f"{row['lead_a']} {row['lead_b']}: {kind} by {decision['actor']} "
                           f"at {decision['at']}: {decision['reason']}")
    if not rows:
        click.echo("no decisions recorded")
