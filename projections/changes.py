"""The rows a page's events change, held in memory, and the steps every handler shares
(a fit with its ledger rows, award rows, funnel counts); the handlers are in ``handlers``
and ``handlers_models``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from leadflow.projections.events import KINDS
from leadflow.projections.rows import _fit_json, _fit_points, _number


class _Changes:
    """The rows a page's events change (``PageChanges`` applies the events to them)."""

    def __init__(self, half_life_days: float,
                 models: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.half_life_days = half_life_days
        #: Each named model of the rules in force: (half-life in days, threshold).
        self.model_rules = dict(models or {})
        self.leads: dict[str, dict[str, Any]] = {}
        # Each lead's named-model rows, by model id.
        self.models: dict[str, dict[str, dict[str, Any]]] = {}
        # (lead, model) -> the notification id of its latest backfill: the model's ledger rows
        # before it are superseded (``writer.Page`` leaves them out and deletes them).
        self.superseded: dict[tuple[str, str], int] = {}
        # (lead, notification id, the (model, record) pairs whose points the lead kept) of
        # each unmerge: the named models' engagement rows before it of other records go
        # (``writer.Page`` deletes the stored ones; this page's are left out here).
        self.released: list[tuple[str, int, frozenset[tuple[str, str]]]] = []
        # Each lead's (owner, stage) before this run (None: counted in no owner's load).
        self.before: dict[str, tuple[str, str] | None] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.transitions: list[tuple[Any, ...]] = []
        self.ledger: list[tuple[Any, ...]] = []
        # Leads forgotten in this page -> the Forgotten event's notification id.
        self.forgotten: dict[str, int] = {}
        self.funnel: Counter[tuple[str, str, str, str]] = Counter()
        # The newest event applied to each lead and account row, to name it if the row
        # cannot be written.
        self.last_event: dict[str, int] = {}
        # Rows one stored event already gave each append-only table: an envelope (one row
        # per record, store/fold.py) holds several events of one notification id.
        self._seqs: dict[tuple[str, int], int] = {}
        self._dispatch = self._dispatch_table()

    def seq(self, table: str, nid: int) -> int:
        """The next row number of ``table`` for notification ``nid`` (0, 1, ...)."""
        key = (table, nid)
        seq = self._seqs.get(key, 0)
        self._seqs[key] = seq + 1
        return seq

    @classmethod
    def _dispatch_table(cls) -> dict[str, tuple[str | None, Any]]:
        """Each followed topic's (lead event name, or None for an account event; handler).

        The handlers are the class's functions (called with the instance), so the table
        holds no bound method: a page's changes make no reference cycle.
        """
        return {topic: (None, None) if is_account
                else (kind, getattr(cls, f"_on_{kind}", None))
                for topic, (is_account, kind) in KINDS.items()}

    def _count(self, stage: str, at: datetime, row: dict[str, Any]) -> None:
        self.funnel[(at.date().isoformat(), stage, row["source"] or "", row["campaign"] or "")] += 1

    def _set_fit(self, nid: int, row: dict[str, Any], e: Any, fit: float,
                 awards: Iterable[Sequence[Any]], model: str | None = None) -> None:
        """A lead's fit (``row``: its lead row, or its row of the named ``model``), with a
        ledger row per rule whose points changed."""
        # Points that are no finite number are null in fit_awards (which stays strict JSON)
        # and NaN here, so their ledger deltas are NULL.
        old = _fit_points(row["fit_awards"])
        new = {str(r): _number(p) for r, p in awards}
        for rule in sorted(set(old) | set(new)):
            delta = new.get(rule, 0.0) - old.get(rule, 0.0)
            if delta:
                self.ledger.append((nid, self.seq("l", nid), row["lead_id"], e.event_id, "fit",
                                    rule, e.rules_version, delta, e.occurred_at, None, model))
        row["fit"] = fit
        row["fit_awards"] = _fit_json(new)

    def _awards(self, nid: int, row: dict[str, Any], awards: Iterable[tuple[Any, ...]],
                kind: str, rules_version: str, model: str | None = None) -> None:
        """A ledger row per award (``events.award_rows``: (event_id, rule, points, at,
        expires_at) each)."""
        key = ("l", nid)  # the ledger's row numbers of this notification, as ``seq`` counts
        seq = first = self._seqs.get(key, 0)
        lead_id, append = row["lead_id"], self.ledger.append
        for event_id, rule, points, at, expires_at in awards:
            append((nid, seq, lead_id, event_id, kind, rule, rules_version, points, at,
                    expires_at, model))
            seq += 1
        if seq != first:
            self._seqs[key] = seq

    def _touch(self, row: dict[str, Any], at: datetime | None) -> None:
        if at is not None and (row["last_touch_at"] is None or at > row["last_touch_at"]):
            row["last_touch_at"] = at
            row["dormant"] = False
