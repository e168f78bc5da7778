"""The named models' handlers (``[models.<id>]``): what their events change in a lead's
``lead_model_state`` rows and in the score ledger (see ``handlers``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from leadflow.projections.changes import _Changes
from leadflow.projections.db import to_text
from leadflow.projections.events import award_rows, awards_rows
from leadflow.projections.rows import _model_id


class _ModelChanges(_Changes):
    """The named models' rows of the page's leads and their events' handlers."""

    def model_row(self, lead_id: str, model: str) -> dict[str, Any]:
        """The lead's row of ``model``, made empty on its first event (half-life and threshold
        from the rules in force, as ``lead_state.half_life_days``)."""
        rows = self.models.get(lead_id)
        if rows is None:
            rows = self.models[lead_id] = {}
        row = rows.get(model)
        if row is None:
            half_life, threshold = self.model_rules.get(model, (None, None))
            row = rows[model] = {
                "lead_id": lead_id, "model": model, "fit": 0.0, "fit_awards": "{}",
                "engagement_value": 0.0, "engagement_as_of": None, "half_life_days": half_life,
                "threshold": threshold, "above": False, "crossed_at": None}
        return row

    def _on_ModelsScored(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        """A record's (or a merge's) points and fit in the named models. A merge brings the
        merged lead's points into the survivor's state, and so into its rows: a lead's rows
        of a named model are always the points its state holds (the merged lead keeps its
        own, which ``score_ledger_resolved`` leaves out, as it does the fit rows)."""
        lead_id = row["lead_id"]
        event_id, version = e.event_id, e.rules_version
        for key, change in e.models.items():
            model = _model_id(key)
            state = self.model_row(lead_id, model)
            awards = change.get("awards")
            if awards:
                self._awards(nid, row, awards_rows(awards), "engagement", version, model)
            if "engagement_value" in change:
                state["engagement_value"] = change["engagement_value"]
                state["engagement_as_of"] = change["engagement_as_of"]
            if "fit" in change:
                cause = e if event_id is not None else SimpleNamespace(
                    event_id=f"rules:{version}", rules_version=version,
                    occurred_at=e.occurred_at)
                self._set_fit(nid, state, cause, change["fit"], change["fit_awards"], model)

    def _on_ModelThresholdCrossed(self, nid: int, row: dict[str, Any],  # noqa: N802
                                  e: Any) -> None:
        state = self.model_row(row["lead_id"], _model_id(e.model))
        state["above"] = e.direction == "up"
        state["crossed_at"] = e.occurred_at
        state["threshold"] = e.threshold  # the one crossed (the rules' may have changed)

    def _on_ModelBackfilled(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        """A rules publication re-scored the model over the lead's history: its state is
        replaced, and its ledger rows become the backfill's (the earlier ones explain a
        score the model no longer gives)."""
        lead_id, model = row["lead_id"], _model_id(e.model)
        state = self.model_row(lead_id, model)
        self.superseded[(lead_id, model)] = nid
        if model in self.model_rules:  # the publication may have changed them
            state["half_life_days"], state["threshold"] = self.model_rules[model]
        self._awards(nid, row, award_rows(e, "awards"), "engagement", e.rules_version, model)
        state["fit"], state["fit_awards"] = 0.0, "{}"
        cause = SimpleNamespace(event_id=f"backfill:{e.rules_version}",
                                rules_version=e.rules_version, occurred_at=e.occurred_at)
        self._set_fit(nid, state, cause, e.fit, e.fit_awards, model)
        last = e.crossings[-1] if e.crossings else None
        state.update(engagement_value=e.engagement_value,
                     engagement_as_of=e.engagement_as_of,
                     above=last is not None and last["direction"] == "up",
                     crossed_at=last["at"] if last is not None else None)

    def _restore_models(self, nid: int, lead_id: str, cause: Any,
                        states: Mapping[str, Mapping[str, Any]]) -> None:
        """An unmerge's recomputed named models: a model the lead no longer has is emptied."""
        by_id = {_model_id(key): state for key, state in states.items()}
        for model in sorted({*self.models.get(lead_id, ()), *by_id}):
            state = by_id.get(model) or {}
            target = self.model_row(lead_id, model)
            self._set_fit(nid, target, cause, state.get("fit", 0.0),
                          state.get("fit_awards", ()), model)
            target.update(engagement_value=state.get("value", 0.0),
                          engagement_as_of=state.get("as_of"),
                          above=bool(state.get("above", False)),
                          crossed_at=state.get("crossed_at"))

    def _release(self, nid: int, lead_id: str,
                 states: Mapping[str, Mapping[str, Any]]) -> None:
        """An unmerge's recomputed named models hold the points of the lead's own records
        only (the merge's points are dropped, and ``Lead.refold_models`` keeps of a backfill
        after the merge, which scored the merged lead's records too, the lead's own): its
        engagement rows of a model go unless their record's points are in the model's
        recomputed state."""
        # As the columns hold them (a record without an id keeps no row: none is its own).
        kept = frozenset((_model_id(key), event_id) for key, state in states.items()
                         for award in state.get("awards", ())
                         if (event_id := to_text(award.get("event_id"))) is not None)
        self.released.append((lead_id, nid, kept))
        self.ledger = [r for r in self.ledger if r[2] != lead_id or r[10] is None
                       or r[4] == "fit" or (r[10], to_text(r[3])) in kept]
