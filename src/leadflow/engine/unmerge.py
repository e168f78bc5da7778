"""Undo a merge: the merged lead comes back with its own history, the survivor is recomputed
from its own events without the merge and the automatic decisions it set off."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from leadflow.domain import Lead, LeadflowError, UnknownLeadError, scoring
from leadflow.engine.decisions import RecordProcessor


def unmerge(proc: RecordProcessor, key: str, at: datetime, actor: str,
            events_of: Callable[[UUID], list[Any]]) -> tuple[UUID, UUID]:
    """Separate identity ``key``'s lead from the lead it was merged into, on ``proc``'s unit.

    Returns (survivor id, restored lead id); the caller commits the unit.
    """
    unit = proc.unit
    index = unit.identity(key)
    if index is None or index.is_interest:
        raise UnknownLeadError(f"no lead known by {key!r}")
    survivor = proc.live_lead(index.target_id)
    loser = None
    for merged_id in survivor.merged_from:
        candidate = unit.get(Lead, merged_id)
        if candidate is not None and candidate.merged_into == survivor.id \
                and key in candidate.identity_keys:
            loser = candidate
    if loser is None:
        raise NotMergedError(f"{key!r} belongs to lead {survivor.id} itself, not to a lead "
                             "merged into it")
    own = _without_merge(events_of(survivor.id), loser.id)
    recomputed: Any = None
    for event in own:
        # Skipped events leave version gaps, so apply directly rather than mutate().
        if recomputed is None:
            recomputed = event.mutate(None)
        else:
            event.apply(recomputed)
    # Stored events carry running totals that included the merged points: re-fold the
    # engagement from the survivor's own awards instead.
    value, as_of = 0.0, None
    for award in recomputed.awards:
        if award.expires_at is None:
            value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                proc.rules.half_life_seconds)
    horizon = recomputed.eng_as_of
    if as_of is not None and horizon is not None and horizon > as_of:
        value, as_of = scoring.decayed(value, as_of, horizon,
                                       proc.rules.half_life_seconds), horizon
    recomputed.eng_value, recomputed.eng_as_of = value, as_of or horizon
    fit = scoring.fit_awards(proc.rules, recomputed.profile)  # likewise for fit
    recomputed.fit_awards, recomputed.fit = fit, sum(p for _, p in fit)
    recomputed.refold_models(proc.rules)  # the named models' points and fit likewise
    above = [m for m, state in survivor.model_states.items() if state["above"]]
    survivor.restore(recomputed, loser.id, at, actor)
    for model_id in above:  # a named model the merged points had taken above its threshold
        restored = survivor.model_states.get(model_id)
        if model_id in proc.rules.models and not (restored and restored["above"]):
            survivor.cross_model_threshold(model_id, "down", at, proc.rules)
    loser.unmerge(survivor.id, at, actor)
    # Re-derive the automatic decisions (MQL threshold, routing) from the restored score.
    proc.qualify(survivor, at, None)
    for loser_key in loser.identity_keys:
        loser_index = unit.identity(loser_key)
        if loser_index is not None:
            unit.repoint(loser_index, loser.id, False)  # back to the restored lead
    proc.sync_load(survivor, at)
    proc.sync_load(loser, at)
    proc.settle(survivor, at)
    proc.settle(loser, at)
    return survivor.id, loser.id


class NotMergedError(LeadflowError):
    reason = "not_merged"


def _without_merge(events: list[Any], loser_id: UUID) -> list[Any]:
    """A survivor's own events, minus the merge with ``loser_id`` and what it set off.

    Dropped: the Absorbed event, and every automatic decision recorded after it (stage and
    owner changes by rules or the system, SLA breaches, load bookkeeping), because those were
    taken on the merged score. People's decisions (sales dispositions) and the survivor's own
    touchpoints stay; the engine re-derives the automatic ones from the restored state.
    """
    out: list[Any] = []
    merged = absorbed = False
    for event in events:
        name = type(event).__name__
        if name == "Absorbed" and event.lead_id == loser_id:
            merged = absorbed = True
            continue
        if absorbed and name == "ModelsScored":
            absorbed = False  # the named models' share of the merge (Lead.absorb)
            continue
        absorbed = False
        if merged and name == "ModelThresholdCrossed":
            continue  # re-derived from the restored points, as the MQL threshold is
        if merged and (
            name in ("AccountSet", "LoadRecounted", "FirstContactSlaBreached", "WakeScheduled")
            or (name in ("StageChanged", "OwnerAssigned")
                and str(event.__dict__.get("actor") or "").startswith(("rule:", "system:")))
        ):
            continue
        out.append(event)
    return out
