"""For auditors: ``rescore`` backtests a rules file on the recorded history (the loop is
``leadflow.engine.backtest``) and can publish it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from leadflow.cli.auditors import _fmt, known_model
from leadflow.cli.common import Context, fail, parse_time
from leadflow.cli.progress import progress_bar
from leadflow.domain.rules import RulesError, load_rules


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
